"""Tasks for length generalization: train on short inputs, test on longer ones.

A length-generalization task draws each training example's input length L uniformly from
[min_train_length, max_train_length] and pads it at the end to ``seq_len`` (the longest
training sequence) with token 0 and weight 0; a causal model never sees the padding before
the positions that count. Besides the in-distribution test split (``test_batches``, drawn like
the training split) it has one fixed test split per length in ``test_lengths``:
``at_length(L)`` is a task whose ``test_batches`` hold ``num_test_examples`` inputs of exactly
length L from ``default_rng((seed, 3, L))``, so ``evaluate`` scores each length unchanged.
Splits longer than ``max_train_length`` cannot overlap the training data.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from functools import cached_property

import numpy as np

from seqjax.data.base import (
    Batch,
    SyntheticTask,
    Task,
    as_batch,
    check_int,
    compact_id_dtype,
    padded_batches,
)


class LengthGeneralizationTask(SyntheticTask):
    """A synthetic task with inputs of variable length and test splits at given lengths."""

    shortest_input = 1  # the shortest input length the task is defined for

    def __init__(
        self,
        *,
        min_train_length: int,
        max_train_length: int,
        test_lengths: Sequence[int],
        num_train_examples: int,
        num_test_examples: int,
        seed: int,
    ):
        super().__init__(
            num_train_examples=num_train_examples, num_test_examples=num_test_examples, seed=seed
        )
        label = f"{self.name}: option"
        self.min_train_length = check_int(
            f"{label} 'min_train_length'", min_train_length, minimum=self.shortest_input
        )
        self.max_train_length = check_int(
            f"{label} 'max_train_length' (at least min_train_length)",
            max_train_length,
            minimum=self.min_train_length,
        )
        if isinstance(test_lengths, str) or not isinstance(test_lengths, Sequence):
            raise ValueError(
                f"{label} 'test_lengths' must be a sequence of input lengths, got {test_lengths!r}"
            )
        self.test_lengths = tuple(
            check_int(f"{label} 'test_lengths' entry", length, minimum=self.shortest_input)
            for length in test_lengths
        )
        self.seq_len = self.sequence_length(self.max_train_length)

    @abc.abstractmethod
    def sequence_length(self, length: int) -> int:
        """T of an example whose input has ``length`` symbols (output steps included)."""

    @abc.abstractmethod
    def generate_at_length(self, rng: np.random.Generator, num_examples: int, length: int) -> Batch:
        """``num_examples`` examples with inputs of exactly ``length`` symbols, each array
        [num_examples, sequence_length(length)]."""

    def generate(self, rng: np.random.Generator, num_examples: int) -> Batch:
        lengths = rng.integers(self.min_train_length, self.max_train_length + 1, size=num_examples)
        id_dtype = compact_id_dtype(self.vocab_size)
        batch = {
            "inputs": np.zeros((num_examples, self.seq_len), id_dtype),
            "targets": np.zeros((num_examples, self.seq_len), id_dtype),
            "weights": np.zeros((num_examples, self.seq_len), bool),
        }
        for length in np.unique(lengths):
            rows = np.flatnonzero(lengths == length)
            examples = self.generate_at_length(rng, len(rows), int(length))
            for key, array in examples.items():
                batch[key][rows, : array.shape[1]] = array
        return batch

    def at_length(self, length: int) -> LengthTestSplit:
        """The fixed test split of inputs of exactly ``length`` symbols."""
        return LengthTestSplit(self, length)


class LengthTestSplit(Task):
    """The held-out examples of one input length of a ``LengthGeneralizationTask``."""

    def __init__(self, task: LengthGeneralizationTask, length: int):
        self.task = task
        self.length = check_int(f"{task.name}: test length", length, minimum=task.shortest_input)
        self.name, self.kind, self.vocab_size = task.name, task.kind, task.vocab_size
        self.seq_len = task.sequence_length(self.length)

    @property
    def num_test_examples(self) -> int:
        return self.task.num_test_examples

    @cached_property
    def _examples(self) -> Batch:
        rng = np.random.default_rng((self.task.seed, 3, self.length))
        return self.task.generate_at_length(rng, self.num_test_examples, self.length)

    def train_batch(
        self, step: int, batch_size: int, *, shard_index: int = 0, num_shards: int = 1
    ) -> Batch:
        raise ValueError(
            f"the length-{self.length} test split of {self.name} has no training batches; "
            "train on the task itself"
        )

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        def take_examples(start: int, stop: int) -> Batch:
            return as_batch(**{key: array[start:stop] for key, array in self._examples.items()})

        return padded_batches(self.num_test_examples, batch_size, take_examples)
