"""Language modelling over a local text file: the tokens are the file's bytes, or the ids a
``tokenizer.json`` (``tokenizer_file``, a pretrained checkpoint's) gives its UTF-8 text.

The last ``test_fraction`` of the tokens (at least seq_len + 1) is held out. A training example
is a random window of seq_len + 1 tokens from the rest, inputs = window[:-1], targets =
window[1:]. The held-out tokens are cut into consecutive windows that overlap by one token, so
every held-out token after the first is a target exactly once; over bytes the mean loss gives
bits per byte (``kind`` "lm"), over a tokenizer's ids nats per token (``kind`` "token_lm").
``vocab_size`` is the model's vocabulary: the tokenizer's by default, larger for a checkpoint
whose embedding table is padded beyond its tokenizer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

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
from seqjax.data.tokenizer import ByteTokenizer, Tokenizer, encode_file, load_tokenizer


@register_task
class Text(Task):
    """Next-token prediction over the file at ``path``: its bytes, or the ids that the
    ``tokenizer.json`` at ``tokenizer_file`` gives its UTF-8 text."""

    name = "text"

    def __init__(
        self,
        *,
        path: str | os.PathLike,
        seq_len: int = 256,
        test_fraction: float = 0.05,
        seed: int = 0,
        tokenizer_file: str | os.PathLike | None = None,
        vocab_size: int | None = None,
    ):
        if not isinstance(path, str | os.PathLike):
            raise ValueError(f"text: option 'path' must be a file path, got {path!r}")
        if not isinstance(tokenizer_file, str | os.PathLike | None):
            raise ValueError(
                f"text: option 'tokenizer_file' must be a file path or None, got {tokenizer_file!r}"
            )
        self.path = os.fspath(path)
        self.tokenizer_file = None if tokenizer_file is None else os.fspath(tokenizer_file)
        self.tokenizer: Tokenizer = load_tokenizer(self.tokenizer_file)
        self.kind = "lm" if self.tokenizer_file is None else "token_lm"
        smallest = self.tokenizer.vocab_size
        self.vocab_size = check_int(
            "text: option 'vocab_size'",
            smallest if vocab_size is None else vocab_size,
            minimum=smallest,
        )
        self.seq_len = check_int("text: option 'seq_len'", seq_len, minimum=1)
        self.test_fraction = check_float(
            "text: option 'test_fraction'", test_fraction, minimum=0.0, below=1.0
        )
        self.seed = check_int("text: option 'seed'", seed, minimum=0)

        data = encode_file(self.tokenizer, self.path, "text")
        window_len = self.seq_len + 1
        test_len = self._test_len(len(data))
        if len(data) - test_len < window_len:
            raise ValueError(
                f"text: {self.path!r} has {len(data)} {self._unit}, but seq_len={self.seq_len} "
                f"with test_fraction={self.test_fraction} needs at least "
                f"{self._min_file_len()} (one training and one test window of seq_len + 1)"
            )
        self._train_tokens = data[: len(data) - test_len]
        self._test_tokens = data[len(data) - test_len :]

    def options(self) -> dict:
        """The constructor options; a byte-level task leaves out tokenizer_file and vocab_size
        at their defaults, so its options are the ones it had before it took a tokenizer."""
        options = super().options()
        if self.tokenizer_file is None and self.vocab_size == ByteTokenizer.vocab_size:
            del options["tokenizer_file"], options["vocab_size"]
        return options

    @property
    def _unit(self) -> str:
        return "bytes" if isinstance(self.tokenizer, ByteTokenizer) else "tokens"

    def _test_len(self, file_len: int) -> int:
        return max(round(self.test_fraction * file_len), self.seq_len + 1)

    def _min_file_len(self) -> int:
        window_len = self.seq_len + 1
        # The train length, file_len - test_len, grows by at most one token per token, so
        # counting up from a lower bound finds the shortest file that fits in a few steps.
        file_len = max(2 * window_len, math.floor((window_len - 0.5) / (1 - self.test_fraction)))
        while file_len - self._test_len(file_len) < window_len:
            file_len += 1
        return file_len

    @property
    def num_test_examples(self) -> int:
        return math.ceil((len(self._test_tokens) - 1) / self.seq_len)

    def train_batch(
        self, step: int, batch_size: int, *, shard_index: int = 0, num_shards: int = 1
    ) -> Batch:
        step = check_int("step", step, minimum=0)
        rows = shard_rows(batch_size, shard_index, num_shards)
        rng = np.random.default_rng((self.seed, 3, step))
        num_starts = len(self._train_tokens) - self.seq_len
        starts = rng.integers(0, num_starts, size=batch_size)[rows]
        windows = self._train_tokens[starts[:, None] + np.arange(self.seq_len + 1)]
        return as_batch(
            inputs=windows[:, :-1], targets=windows[:, 1:], weights=np.ones(windows[:, 1:].shape)
        )

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        def take_examples(start: int, stop: int) -> Batch:
            offsets = np.arange(start, stop)[:, None] * self.seq_len + np.arange(self.seq_len + 1)
            in_file = offsets < len(self._test_tokens)
            windows = np.where(in_file, self._test_tokens[np.where(in_file, offsets, 0)], 0)
            return as_batch(inputs=windows[:, :-1], targets=windows[:, 1:], weights=in_file[:, 1:])

        return padded_batches(self.num_test_examples, batch_size, take_examples)
