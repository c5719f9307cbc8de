"""Byte-level language modelling over a text feature of a TensorFlow Datasets dataset, read by
random access with ``tfds.data_source`` from its array_record files (TensorFlow is not needed).

The dataset must already be prepared under ``data_dir`` (``download=False``: nothing is
fetched). The tokens are the UTF-8 bytes of each record's ``feature``. Training row i of step s
is record r, uniform over the train split from ``default_rng((seed, 3, s))``: a window of
seq_len + 1 bytes at a uniform offset if the record is longer, else the whole record with the
rest padded at weight 0; inputs = window[:-1], targets = window[1:]. The test split is the first
``num_test_examples`` records of ``test_split``, each windowed from its start, so bits per byte
are over the first seq_len predicted bytes of each.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import numpy as np

from seqjax.data.base import (
    Batch,
    Task,
    as_batch,
    check_int,
    padded_batches,
    register_task,
    shard_rows,
)


@register_task
class TfdsText(Task):
    """Next-byte prediction over the records of a prepared TFDS dataset."""

    name = "tfds_text"
    kind = "lm"
    vocab_size = 256

    def __init__(
        self,
        *,
        dataset: str,
        data_dir: str | None = None,
        feature: str = "text",
        train_split: str = "train",
        test_split: str = "test",
        seq_len: int = 256,
        num_test_examples: int = 1000,
        seed: int = 0,
    ):
        for option, value in [("dataset", dataset), ("feature", feature)]:
            if not isinstance(value, str) or not value:
                raise ValueError(f"tfds_text: option {option!r} must be a non-empty string")
        if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
            raise ValueError(f"tfds_text: option 'data_dir' must be a directory, got {data_dir!r}")
        self.dataset, self.feature = dataset, feature
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.train_split, self.test_split = train_split, test_split
        self.seq_len = check_int("tfds_text: option 'seq_len'", seq_len, minimum=1)
        self._requested_test_examples = check_int(
            "tfds_text: option 'num_test_examples'", num_test_examples, minimum=1
        )
        self.seed = check_int("tfds_text: option 'seed'", seed, minimum=0)
        for split in (train_split, test_split):
            if not len(self._sources[split]):
                raise ValueError(f"tfds_text: split {split!r} of {dataset!r} has no records")

    @cached_property
    def _sources(self) -> dict[str, Any]:
        import tensorflow_datasets as tfds

        try:
            sources = tfds.data_source(self.dataset, data_dir=self.data_dir, download=False)
        except Exception as error:  # tfds raises several types for a missing dataset
            raise ValueError(
                f"tfds_text: cannot open the prepared dataset {self.dataset!r} in data_dir="
                f"{self.data_dir!r}: {error}"
            ) from None
        missing = [s for s in (self.train_split, self.test_split) if s not in sources]
        if missing:
            raise ValueError(
                f"tfds_text: {self.dataset!r} has no split(s) {', '.join(map(repr, missing))}; "
                f"splits: {', '.join(sources)}"
            )
        return sources

    def options(self) -> dict[str, Any]:
        return {**super().options(), "num_test_examples": self._requested_test_examples}

    @property
    def num_test_examples(self) -> int:
        return min(self._requested_test_examples, len(self._sources[self.test_split]))

    def _record_bytes(self, split: str, index: int) -> np.ndarray:
        record = self._sources[split][int(index)]
        if self.feature not in record:
            raise ValueError(
                f"tfds_text: records of {self.dataset!r} have no feature {self.feature!r}; "
                f"features: {', '.join(record)}"
            )
        text = record[self.feature]
        text = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return np.frombuffer(text, dtype=np.uint8)

    def _windows(self, records: list[np.ndarray], offsets: list[int]) -> Batch:
        windows = np.zeros((len(records), self.seq_len + 1), np.uint8)
        counted = np.zeros((len(records), self.seq_len), bool)
        for row, (data, offset) in enumerate(zip(records, offsets, strict=True)):
            window = data[offset : offset + self.seq_len + 1]
            windows[row, : len(window)] = window
            counted[row, : max(len(window) - 1, 0)] = True
        return as_batch(inputs=windows[:, :-1], targets=windows[:, 1:], weights=counted)

    def train_batch(
        self, step: int, batch_size: int, *, shard_index: int = 0, num_shards: int = 1
    ) -> Batch:
        step = check_int("step", step, minimum=0)
        rows = shard_rows(batch_size, shard_index, num_shards)
        rng = np.random.default_rng((self.seed, 3, step))
        indices = rng.integers(0, len(self._sources[self.train_split]), size=batch_size)
        uniforms = rng.random(size=batch_size)
        records = [self._record_bytes(self.train_split, i) for i in indices[rows]]
        offsets = [
            int(u * max(len(data) - self.seq_len, 1))
            for data, u in zip(records, uniforms[rows], strict=True)
        ]
        return self._windows(records, offsets)

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        def take_examples(start: int, stop: int) -> Batch:
            records = [self._record_bytes(self.test_split, i) for i in range(start, stop)]
            return self._windows(records, [0] * len(records))

        return padded_batches(self.num_test_examples, batch_size, take_examples)
