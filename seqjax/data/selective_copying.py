"""Selective copying, from Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces" (Section 3.1), a variant of the copying task of Arjovsky et al. 2016.

Layout of one sequence of T tokens that copies N data tokens, with context length C = T - N:

    positions [0, C):  blank (0) except the N data tokens d_1..d_N at random sorted positions
    positions [C, T):  N copy markers (1); target at position C + i is d_{i+1}, weight 1

So the model emits the i-th memorized token while it reads the i-th marker; every other position
has weight 0 and target 0. Data tokens are uniform over [2, vocab_size), with repeats.
"""

from __future__ import annotations

import numpy as np

from seqjax.data.base import (
    Batch,
    SyntheticTask,
    check_int,
    compact_id_dtype,
    register_task,
    sample_without_replacement,
)

BLANK_TOKEN = 0
COPY_MARKER = 1
FIRST_DATA_TOKEN = 2


@register_task
class SelectiveCopying(SyntheticTask):
    """Selective copying: reproduce, in order, the data tokens scattered among blanks."""

    name = "selective_copying"

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        seq_len: int = 64,
        num_tokens: int = 8,
        num_train_examples: int = 100_000,
        num_test_examples: int = 1_000,
        seed: int = 0,
    ):
        super().__init__(
            num_train_examples=num_train_examples, num_test_examples=num_test_examples, seed=seed
        )
        self.vocab_size = check_int(
            "selective_copying: option 'vocab_size'", vocab_size, minimum=FIRST_DATA_TOKEN + 1
        )
        self.seq_len = check_int("selective_copying: option 'seq_len'", seq_len, minimum=2)
        self.num_tokens = check_int("selective_copying: option 'num_tokens'", num_tokens, minimum=1)
        if 2 * self.num_tokens > self.seq_len:
            raise ValueError(
                f"selective_copying: num_tokens={self.num_tokens} needs seq_len >= "
                f"{2 * self.num_tokens} (a context that holds the tokens, then one marker per "
                f"token), got seq_len={self.seq_len}"
            )

    def generate(self, rng: np.random.Generator, num_examples: int) -> Batch:
        context_len = self.seq_len - self.num_tokens
        positions = np.sort(
            sample_without_replacement(rng, context_len, self.num_tokens, num_examples), axis=1
        )
        id_dtype = compact_id_dtype(self.vocab_size)
        data_tokens = rng.integers(
            FIRST_DATA_TOKEN, self.vocab_size, size=(num_examples, self.num_tokens), dtype=id_dtype
        )

        shape = (num_examples, self.seq_len)
        inputs = np.full(shape, BLANK_TOKEN, dtype=id_dtype)
        np.put_along_axis(inputs, positions, data_tokens, axis=1)
        inputs[:, context_len:] = COPY_MARKER
        targets = np.zeros(shape, dtype=id_dtype)
        targets[:, context_len:] = data_tokens
        weights = np.zeros(shape, dtype=bool)
        weights[:, context_len:] = True
        return {"inputs": inputs, "targets": targets, "weights": weights}
