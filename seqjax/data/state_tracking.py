"""State tracking: the word problem of a finite group, from Merrill et al. 2024, "The Illusion
of State in State-Space Models", and Grazzi et al. 2025, "Unlocking State-Tracking in Linear
RNNs Through Negative Eigenvalues".

Input: group elements g_1 .. g_L, each token the element's index. Target at every position t:
the index of the running product g_1 g_2 ... g_t, where a product applies its left factor
first: permutations are arrays p (p[i] is the image of i) and "a then b" maps i to b[a[i]].

Groups by name: ``Z<m>`` cyclic, element k, product (a + b) mod m (Z2 is parity, Z_m modular
addition); ``S<n>`` symmetric, the n! permutations in lexicographic order (identity first);
``A<n>`` alternating, the even ones in the same order. S5 (120 elements) and A5 (60) are not
solvable, so their word problems are NC1-complete (Barrington 1989): no fixed-depth stack of
diagonal linear recurrences with nonnegative eigenvalues can track them at every length.

A sequence of length L holds the answers for every prefix, so training uses fixed-length
sequences by default (min_train_length = max_train_length = 40).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np

from seqjax.data.base import Batch, register_task
from seqjax.data.lengths import LengthGeneralizationTask

MAX_PERMUTED_POINTS = 6  # S6 has 720 elements; larger tables stop being a small task


def multiplication_table(group: str) -> np.ndarray:
    """[G, G] ints: entry [a, b] is the index of the product "a then b" in ``group``."""
    match = re.fullmatch(r"([ZSA])(\d+)", group) if isinstance(group, str) else None
    if match is None:
        raise ValueError(
            f"word_problem: option 'group' must be Z<m>, S<n> or A<n> (e.g. 'Z2', 'S5', 'A5'), "
            f"got {group!r}"
        )
    kind, size = match.group(1), int(match.group(2))
    if kind == "Z":
        if size < 2:
            raise ValueError(f"word_problem: cyclic group Z<m> needs m >= 2, got {group!r}")
        elements = np.arange(size)
        return (elements[:, None] + elements[None, :]) % size
    if not 2 <= size <= MAX_PERMUTED_POINTS or (kind == "A" and size < 3):
        raise ValueError(
            f"word_problem: {kind}<n> needs {3 if kind == 'A' else 2} <= n <= "
            f"{MAX_PERMUTED_POINTS}, got {group!r}"
        )
    permutations = np.array(list(itertools.permutations(range(size))))
    if kind == "A":
        permutations = permutations[permutation_parity(permutations) == 0]
    index = {tuple(p): i for i, p in enumerate(permutations)}
    return np.array([[index[tuple(b[a])] for b in permutations] for a in permutations])


def permutation_parity(permutations: np.ndarray) -> np.ndarray:
    """[N] parity (0 even, 1 odd) of permutations [N, n], by counting inversions."""
    first, second = np.triu_indices(permutations.shape[1], k=1)
    return (permutations[:, first] > permutations[:, second]).sum(axis=1) % 2


@register_task
class WordProblem(LengthGeneralizationTask):
    """The running product of a sequence of group elements, at every position."""

    name = "word_problem"

    def __init__(
        self,
        *,
        group: str = "S5",
        min_train_length: int = 40,
        max_train_length: int = 40,
        test_lengths: Sequence[int] = (40, 64, 128, 256),
        num_train_examples: int = 100_000,
        num_test_examples: int = 500,
        seed: int = 0,
    ):
        self._table = multiplication_table(group)
        self.group = group
        self.vocab_size = len(self._table)
        super().__init__(
            min_train_length=min_train_length,
            max_train_length=max_train_length,
            test_lengths=test_lengths,
            num_train_examples=num_train_examples,
            num_test_examples=num_test_examples,
            seed=seed,
        )

    def sequence_length(self, length: int) -> int:
        return length

    def generate_at_length(self, rng: np.random.Generator, num_examples: int, length: int) -> Batch:
        elements = rng.integers(0, self.vocab_size, size=(num_examples, length))
        products = np.empty_like(elements)
        products[:, 0] = elements[:, 0]
        for position in range(1, length):
            products[:, position] = self._table[products[:, position - 1], elements[:, position]]
        return {"inputs": elements, "targets": products, "weights": np.ones(elements.shape, bool)}
