"""Text to token ids and back: the UTF-8 bytes (ids 0..255), or a Hugging Face
``tokenizer.json`` read with the ``tokenizers`` library (a pretrained checkpoint's own).

Both encode a text whole, with the special tokens the tokenizer's post-processor adds (a
beginning-of-text token, for those that have one), and decode ids to text, so training,
evaluation and generation see the same tokens for the same text.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


class Tokenizer(Protocol):
    vocab_size: int  # ids are in [0, vocab_size)

    def encode(self, text: str) -> np.ndarray:
        """The token ids [N] of ``text``."""

    def decode(self, ids) -> str:
        """The text of token ids (special tokens left out)."""


class ByteTokenizer:
    """The UTF-8 bytes of a text are its tokens; bytes that are not UTF-8 decode to U+FFFD."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class JsonTokenizer:
    """A ``tokenizer.json`` file (any model the ``tokenizers`` library reads: BPE, Unigram,
    WordPiece, WordLevel); its vocabulary includes the added tokens."""

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"tokenizer file {path} does not exist"
                if not path.exists()
                else f"{path} is not a file"
            )
        try:
            import tokenizers
        except ImportError:
            raise ValueError(
                f"reading {path} needs the tokenizers package (pip install tokenizers)"
            ) from None
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the library raises its own exception types
            raise ValueError(f"cannot read the tokenizer {path}: {error}") from None
        self.path = path
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text).ids, dtype=np.int32)

    def decode(self, ids) -> str:
        return self._tokenizer.decode([int(i) for i in ids])


def load_tokenizer(path: str | os.PathLike | None) -> Tokenizer:
    """The tokenizer of the file ``path`` (a tokenizer.json, or a directory holding one);
    None: the bytes."""
    if path is None:
        return ByteTokenizer()
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    return JsonTokenizer(path)


def read_file(path: str | os.PathLike, label: str) -> bytes:
    """The contents of the file ``path``; a ValueError starting with ``label`` if it is
    missing, a directory, unreadable or empty."""
    file, name = Path(path), os.fspath(path)
    if not file.exists():
        raise ValueError(f"{label}: file {name!r} does not exist")
    if file.is_dir():
        raise ValueError(f"{label}: {name!r} is a directory, not a text file")
    try:
        contents = file.read_bytes()
    except OSError as error:
        raise ValueError(f"{label}: cannot read {name!r}: {error.strerror}") from None
    if not contents:
        raise ValueError(f"{label}: file {name!r} is empty")
    return contents


def encode_bytes(tokenizer: Tokenizer, contents: bytes, name: str) -> np.ndarray:
    """The token ids [N] of ``contents`` (the file ``name``), in the smallest unsigned dtype
    that holds them. Byte tokens are the bytes whatever they are; another tokenizer reads
    them as UTF-8 text."""
    if isinstance(tokenizer, ByteTokenizer):
        return np.frombuffer(contents, dtype=np.uint8)
    try:
        text = contents.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{name} is not UTF-8 text (byte {error.start})") from None
    return tokenizer.encode(text).astype(np.min_scalar_type(tokenizer.vocab_size - 1))


def encode_file(tokenizer: Tokenizer, path: str | os.PathLike, label: str) -> np.ndarray:
    """The token ids of the file ``path`` (see encode_bytes); errors start with ``label``."""
    return encode_bytes(tokenizer, read_file(path, label), f"{label}: {os.fspath(path)!r}")
