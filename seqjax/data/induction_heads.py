"""Induction heads: recall the token that followed a trigger, from Olsson et al. 2022, "In-context
Learning and Induction Heads", in the synthetic form of Fu et al. 2023 (H3) and Gu & Dao 2023
(Mamba, Section 4.1.2, where models train at one length and are tested at longer ones).

An input of length L: L tokens uniform over [2, vocab_size), except that the trigger token 1
sits at one position p uniform in [0, L - 2] and the answer token at p + 1; then the trigger
again at position L. The target there is the answer (weight 1); every other position has
weight 0 and target 0. Token 0 pads the end of shorter training examples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seqjax.data.base import Batch, check_int, register_task
from seqjax.data.lengths import LengthGeneralizationTask

TRIGGER, FIRST_TOKEN = 1, 2


@register_task
class InductionHeads(LengthGeneralizationTask):
    """Predict, at the final trigger, the token that followed its first occurrence."""

    name = "induction_heads"
    shortest_input = 2

    def __init__(
        self,
        *,
        vocab_size: int = 16,
        min_train_length: int = 64,
        max_train_length: int = 64,
        test_lengths: Sequence[int] = (64, 128, 256, 512, 1024),
        num_train_examples: int = 100_000,
        num_test_examples: int = 500,
        seed: int = 0,
    ):
        self.vocab_size = check_int(
            "induction_heads: option 'vocab_size'", vocab_size, minimum=FIRST_TOKEN + 1
        )
        super().__init__(
            min_train_length=min_train_length,
            max_train_length=max_train_length,
            test_lengths=test_lengths,
            num_train_examples=num_train_examples,
            num_test_examples=num_test_examples,
            seed=seed,
        )

    def sequence_length(self, length: int) -> int:
        return length + 1

    def generate_at_length(self, rng: np.random.Generator, num_examples: int, length: int) -> Batch:
        rows = np.arange(num_examples)
        inputs = rng.integers(FIRST_TOKEN, self.vocab_size, size=(num_examples, length + 1))
        trigger_positions = rng.integers(0, length - 1, size=num_examples)
        inputs[rows, trigger_positions] = TRIGGER
        inputs[:, length] = TRIGGER
        targets = np.zeros_like(inputs)
        targets[:, length] = inputs[rows, trigger_positions + 1]
        weights = np.zeros(inputs.shape, bool)
        weights[:, length] = True
        return {"inputs": inputs, "targets": targets, "weights": weights}
