"""Sequence tagging: a label at every token, for a per-token softmax head or a linear-chain CRF
over a bidirectional encoder (Lample et al. 2016, "Neural Architectures for Named Entity
Recognition"; Huang et al. 2015, "Bidirectional LSTM-CRF Models for Sequence Tagging").

Batches (``heads`` "token" and "crf"): ``inputs`` int32 token ids [B, T] (0 is padding),
``mask`` bool [B, T] true at the real tokens of each right-padded sentence, ``targets`` int32
label ids [B, T] (0 at padding) and ``weights`` float32 [B, T] equal to the mask, so a CRF
scores every real position of a row.

``two_sided_tagging`` is generated from a seed; ``tagging_file`` reads a CoNLL-U treebank (as
Universal Dependencies ships it) or a two-column TSV file.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from seqjax.data.base import (
    ArrayTask,
    Batch,
    SyntheticTask,
    check_bool,
    check_int,
    compact_id_dtype,
    register_task,
)
from seqjax.data.tokenizer import read_file

PAD = 0


@register_task
class TwoSidedTagging(SyntheticTask):
    """Tag each token with the sum of its two neighbours modulo ``num_labels``.

    Tokens are symbols s_t uniform in [0, num_symbols) (ids s_t + 1; 0 is padding), in rows of
    length L uniform in [min_length, max_length]; the label of position t is

        y_t = (s_{t-1} + s_{t+1}) mod num_labels,    s_{-1} = s_L = 0 (beyond the row),

    so a bidirectional model can label every token exactly. A causal model at position t has
    not seen s_{t+1}, which is uniform and independent of the prefix; since num_symbols is a
    multiple of num_labels, y_t is then uniform whatever the prefix, except at the last token,
    where it is s_{t-1} mod num_labels. The best a causal model can do is predict that value
    everywhere, which is right with probability

        1 / num_labels + (1 - 1 / num_labels) · P(t is the last token),

    i.e. chance plus (1 - 1/num_labels) / E[L] over all tokens: 0.29 with the defaults
    (chance 0.25).
    """

    name = "two_sided_tagging"
    heads = ("token", "crf")

    def __init__(
        self,
        *,
        num_symbols: int = 16,
        num_labels: int = 4,
        min_length: int = 8,
        max_length: int = 32,
        num_train_examples: int = 10_000,
        num_test_examples: int = 1_000,
        seed: int = 0,
    ):
        super().__init__(
            num_train_examples=num_train_examples, num_test_examples=num_test_examples, seed=seed
        )
        label = "two_sided_tagging: option"
        self.num_labels = check_int(f"{label} 'num_labels'", num_labels, minimum=2)
        self.num_symbols = check_int(f"{label} 'num_symbols'", num_symbols, minimum=self.num_labels)
        if self.num_symbols % self.num_labels:
            raise ValueError(
                f"{label} 'num_symbols' must be a multiple of num_labels={self.num_labels} "
                f"(so that every label is equally likely whatever the left context), "
                f"got {self.num_symbols}"
            )
        self.min_length = check_int(f"{label} 'min_length'", min_length, minimum=1)
        self.max_length = check_int(
            f"{label} 'max_length' (at least min_length)", max_length, minimum=self.min_length
        )
        self.seq_len = self.max_length
        self.vocab_size = max(self.num_symbols + 1, self.num_labels)
        self.label_names = [str(label_id) for label_id in range(self.num_labels)]

    def labels_of(self, inputs: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The labels [N, T] of token ids ``inputs`` [N, T] at the true positions of ``mask``
        (0 elsewhere)."""
        symbols = np.where(mask, inputs.astype(np.int64) - 1, 0)
        left = np.pad(symbols[:, :-1], [(0, 0), (1, 0)])
        right = np.pad(symbols[:, 1:], [(0, 0), (0, 1)])
        return np.where(mask, (left + right) % self.num_labels, 0)

    def generate(self, rng: np.random.Generator, num_examples: int) -> Batch:
        lengths = rng.integers(self.min_length, self.max_length + 1, size=num_examples)
        symbols = rng.integers(0, self.num_symbols, size=(num_examples, self.seq_len))
        mask = np.arange(self.seq_len) < lengths[:, None]
        id_dtype = compact_id_dtype(self.vocab_size)
        inputs = np.where(mask, symbols + 1, PAD).astype(id_dtype)
        return {
            "inputs": inputs,
            "mask": mask,
            "targets": self.labels_of(inputs, mask).astype(id_dtype),
            "weights": mask,
        }


UNKNOWN_WORD = 1
FIRST_WORD = 2
RESERVED_WORDS = ["<pad>", "<unk>"]
FORMATS = ("conllu", "tsv")


@dataclass
class Sentence:
    words: list[str]
    labels: list[str]
    first_line: int  # 1-based line of its first token
    label_lines: list[int]  # the line of each token


def text_lines(path: str, label: str) -> list[str]:
    """The lines of the UTF-8 text file ``path`` without their line ends; a ValueError
    starting with ``label`` that names the file if it is missing, a directory, empty or not
    UTF-8 (then with the line)."""
    contents = read_file(path, label)
    try:
        text = contents.decode("utf-8")
    except UnicodeDecodeError as error:
        line = contents[: error.start].count(b"\n") + 1
        raise ValueError(f"{label}: {path!r} line {line}: not UTF-8 text") from None
    return text.splitlines()


def read_sentences(
    path: str, label: str, token_of: Callable[[int, str], tuple[str, str] | None]
) -> list[Sentence]:
    """Sentences of a file with one token per line and a blank line between sentences:
    ``token_of(line_number, line)`` reads a line's (word, tag), or None for a line that holds
    no token."""
    sentences, words, labels, lines = [], [], [], []
    for line_number, line in enumerate([*text_lines(path, label), ""], start=1):
        if not line.strip():
            if words:
                sentences.append(Sentence(words, labels, lines[0], lines))
                words, labels, lines = [], [], []
            continue
        token = token_of(line_number, line)
        if token is not None:
            words.append(token[0])
            labels.append(token[1])
            lines.append(line_number)
    return sentences


def read_tsv(path: str, label: str) -> list[Sentence]:
    """Sentences of a file with one token per line (the word in the first tab-separated
    column, the tag in the last) and a blank line between sentences."""
    first = {}  # the number of columns and the line of the first token

    def token_of(line_number: int, line: str) -> tuple[str, str]:
        fields = line.split("\t")
        if not first:
            first.update(columns=len(fields), line=line_number)
            if len(fields) < 2:
                raise ValueError(
                    f"{label}: {path!r} line {line_number}: expected tab-separated columns "
                    f"'word<TAB>tag', got {line!r}"
                )
        elif len(fields) != first["columns"]:
            raise ValueError(
                f"{label}: {path!r} line {line_number}: expected {first['columns']} "
                f"tab-separated columns as on line {first['line']}, got {len(fields)}: {line!r}"
            )
        if not fields[0] or not fields[-1]:
            raise ValueError(f"{label}: {path!r} line {line_number}: empty word or tag: {line!r}")
        return fields[0], fields[-1]

    return read_sentences(path, label, token_of)


def read_conllu(path: str, label: str, column: str) -> list[Sentence]:
    """Sentences of a CoNLL-U file, each line parsed by the ``conllu`` package: the words
    (FORM) and the ``column`` field of each word line, skipping comments, multiword-token
    ranges (ids like 3-4) and empty nodes (ids like 5.1)."""
    from conllu.exceptions import ParseException
    from conllu.parser import DEFAULT_FIELDS, parse_line

    column_index = DEFAULT_FIELDS.index(column)

    def token_of(line_number: int, line: str) -> tuple[str, str] | None:
        if line.startswith("#"):
            return None
        fields = line.split("\t")
        if len(fields) != len(DEFAULT_FIELDS):
            raise ValueError(
                f"{label}: {path!r} line {line_number}: a CoNLL-U word line has "
                f"{len(DEFAULT_FIELDS)} tab-separated fields, got {len(fields)}: {line!r}"
            )
        try:
            token = parse_line(line, DEFAULT_FIELDS)
        except ParseException as error:
            raise ValueError(f"{label}: {path!r} line {line_number}: {error}") from None
        if not isinstance(token["id"], int):
            return None
        # The field as written: a parsed FEATS or MISC is a dict, "_" in XPOS is None.
        return fields[1], fields[column_index]

    return read_sentences(path, label, token_of)


@register_task
class TaggingFile(ArrayTask):
    """Tagging read from a training file and a test file: CoNLL-U (any field as the tag, UPOS
    by default) or TSV (``word<TAB>tag`` lines, blank lines between sentences; with more
    columns the word is the first and the tag the last).

    Vocabularies come from the training file. Word ids: 0 padding, 1 unknown (a word seen in
    training fewer than ``min_word_count`` times, and every word not seen in training), then
    the training words from 2 in order of first appearance (``words[i]`` is the word of id i).
    Label ids: the training labels sorted, from 0 (``labels[i]``). ``lowercase`` lowercases the
    words before counting and looking them up. A sentence longer than ``max_length`` (the T of
    every batch) is an error, as is a test label that the training file does not have.
    """

    name = "tagging_file"
    kind = "tagging"
    heads = ("token", "crf")

    def __init__(
        self,
        *,
        train_path: str | os.PathLike,
        test_path: str | os.PathLike,
        format: str = "conllu",
        column: str | None = None,
        max_length: int = 128,
        lowercase: bool = False,
        min_word_count: int = 1,
        seed: int = 0,
    ):
        prefix = "tagging_file: option"
        for option, path in [("train_path", train_path), ("test_path", test_path)]:
            if not isinstance(path, str | os.PathLike):
                raise ValueError(f"{prefix} {option!r} must be a file path, got {path!r}")
        self.train_path, self.test_path = os.fspath(train_path), os.fspath(test_path)
        if format not in FORMATS:
            raise ValueError(
                f"{prefix} 'format' must be one of {', '.join(FORMATS)}, got {format!r}"
            )
        self.format = format
        self.column = self._check_column(column)
        self.max_length = check_int(f"{prefix} 'max_length'", max_length, minimum=1)
        self.lowercase = check_bool(f"{prefix} 'lowercase'", lowercase)
        self.min_word_count = check_int(f"{prefix} 'min_word_count'", min_word_count, minimum=1)
        self.seed = check_int(f"{prefix} 'seed'", seed, minimum=0)
        self.seq_len = self.max_length

        train, test = self._read(self.train_path), self._read(self.test_path)
        counts = Counter(word for sentence in train for word in sentence.words)
        frequent = (word for word, count in counts.items() if count >= self.min_word_count)
        self.words = [*RESERVED_WORDS, *frequent]
        self.labels = sorted({tag for sentence in train for tag in sentence.labels})
        self.num_labels = len(self.labels)
        self.vocab_size = max(len(self.words), self.num_labels)
        self._train_split = self._arrays(train, self.train_path)
        self._test_split = self._arrays(test, self.test_path)

    def _check_column(self, column: str | None) -> str | None:
        if self.format == "tsv":
            if column is not None:
                raise ValueError(
                    "tagging_file: option 'column' is for format 'conllu' (a tsv file's tag is "
                    f"its last column), got {column!r}"
                )
            return None
        from conllu.parser import DEFAULT_FIELDS

        column = "upos" if column is None else column
        if column not in DEFAULT_FIELDS:
            raise ValueError(
                f"tagging_file: option 'column' must be a CoNLL-U field "
                f"({', '.join(DEFAULT_FIELDS)}), got {column!r}"
            )
        return column

    def _read(self, path: str) -> list[Sentence]:
        if self.format == "conllu":
            sentences = read_conllu(path, self.name, self.column)
        else:
            sentences = read_tsv(path, self.name)
        if not sentences:
            raise ValueError(f"{self.name}: {path!r} has no sentences")
        for sentence in sentences:
            if len(sentence.words) > self.max_length:
                raise ValueError(
                    f"{self.name}: {path!r} line {sentence.first_line}: a sentence of "
                    f"{len(sentence.words)} words exceeds max_length={self.max_length}"
                )
            if self.lowercase:
                sentence.words = [word.lower() for word in sentence.words]
        return sentences

    def _arrays(self, sentences: list[Sentence], path: str) -> Batch:
        word_ids = {word: index for index, word in enumerate(self.words) if index >= FIRST_WORD}
        label_ids = {label: index for index, label in enumerate(self.labels)}
        shape = (len(sentences), self.seq_len)
        id_dtype = compact_id_dtype(self.vocab_size)
        inputs, targets = np.zeros(shape, id_dtype), np.zeros(shape, id_dtype)
        mask = np.zeros(shape, bool)
        for row, sentence in enumerate(sentences):
            for position, (word, label, line) in enumerate(
                zip(sentence.words, sentence.labels, sentence.label_lines, strict=True)
            ):
                if label not in label_ids:
                    raise ValueError(
                        f"{self.name}: label {label!r} on line {line} of {path!r} does not "
                        f"occur in the training file {self.train_path!r}"
                    )
                inputs[row, position] = word_ids.get(word, UNKNOWN_WORD)
                targets[row, position] = label_ids[label]
            mask[row, : len(sentence.words)] = True
        return {"inputs": inputs, "mask": mask, "targets": targets, "weights": mask}
