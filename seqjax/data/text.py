"""Byte-level language modelling over a local text file: the tokens are the file's bytes.

The last ``test_fraction`` of the bytes (at least seq_len + 1) is held out. A training example is
a random window of seq_len + 1 bytes from the rest, inputs = window[:-1], targets = window[1:].
The held-out bytes are cut into consecutive windows that overlap by one byte, so every held-out
byte after the first is a target exactly once and the mean loss over them gives bits per byte.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from seqjax.data.base import (
    Batch,
    Task,
    as_batch,
    check_float,
    check_int,
    padded_batches,
    register_task,
    shard_rows,
)


@register_task
class ByteText(Task):
    """Next-byte prediction over the bytes of the file at ``path``."""

    name = "text"
    kind = "lm"
    vocab_size = 256

    def __init__(
        self,
        *,
        path: str | os.PathLike,
        seq_len: int = 256,
        test_fraction: float = 0.05,
        seed: int = 0,
    ):
        if not isinstance(path, str | os.PathLike):
            raise ValueError(f"text: option 'path' must be a file path, got {path!r}")
        self.path = os.fspath(path)
        self.seq_len = check_int("text: option 'seq_len'", seq_len, minimum=1)
        self.test_fraction = check_float(
            "text: option 'test_fraction'", test_fraction, minimum=0.0, below=1.0
        )
        self.seed = check_int("text: option 'seed'", seed, minimum=0)

        data = _read_bytes(self.path)
        window_len = self.seq_len + 1
        test_len = self._test_len(len(data))
        if len(data) - test_len < window_len:
            raise ValueError(
                f"text: {self.path!r} has {len(data)} bytes, but seq_len={self.seq_len} with "
                f"test_fraction={self.test_fraction} needs at least {self._min_file_len()} "
                f"(one training and one test window of seq_len + 1 bytes)"
            )
        self._train_bytes = data[: len(data) - test_len]
        self._test_bytes = data[len(data) - test_len :]

    def _test_len(self, file_len: int) -> int:
        return max(round(self.test_fraction * file_len), self.seq_len + 1)

    def _min_file_len(self) -> int:
        window_len = self.seq_len + 1
        # The train length, file_len - test_len, grows by at most one byte per file byte, so
        # counting up from a lower bound finds the shortest file that fits in a few steps.
        file_len = max(2 * window_len, math.floor((window_len - 0.5) / (1 - self.test_fraction)))
        while file_len - self._test_len(file_len) < window_len:
            file_len += 1
        return file_len

    @property
    def num_test_examples(self) -> int:
        return math.ceil((len(self._test_bytes) - 1) / self.seq_len)

    def train_batch(
        self, step: int, batch_size: int, *, shard_index: int = 0, num_shards: int = 1
    ) -> Batch:
        step = check_int("step", step, minimum=0)
        rows = shard_rows(batch_size, shard_index, num_shards)
        rng = np.random.default_rng((self.seed, 3, step))
        num_starts = len(self._train_bytes) - self.seq_len
        starts = rng.integers(0, num_starts, size=batch_size)[rows]
        windows = self._train_bytes[starts[:, None] + np.arange(self.seq_len + 1)]
        return as_batch(windows[:, :-1], windows[:, 1:], np.ones(windows[:, 1:].shape))

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        def take_examples(start: int, stop: int) -> Batch:
            offsets = np.arange(start, stop)[:, None] * self.seq_len + np.arange(self.seq_len + 1)
            in_file = offsets < len(self._test_bytes)
            windows = np.where(in_file, self._test_bytes[np.where(in_file, offsets, 0)], 0)
            return as_batch(windows[:, :-1], windows[:, 1:], in_file[:, 1:])

        return padded_batches(self.num_test_examples, batch_size, take_examples)


def _read_bytes(path: str) -> np.ndarray:
    file = Path(path)
    if not file.exists():
        raise ValueError(f"text: file {path!r} does not exist")
    if file.is_dir():
        raise ValueError(f"text: {path!r} is a directory, not a text file")
    try:
        contents = file.read_bytes()
    except OSError as error:
        raise ValueError(f"text: cannot read {path!r}: {error.strerror}") from None
    if not contents:
        raise ValueError(f"text: file {path!r} is empty")
    return np.frombuffer(contents, dtype=np.uint8)
