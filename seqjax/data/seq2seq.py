"""Sequence-to-sequence tasks for an encoder-decoder (Sutskever et al. 2014, "Sequence to
Sequence Learning with Neural Networks"; Bahdanau et al. 2015, "Neural Machine Translation by
Jointly Learning to Align and Translate").

Batches (``heads`` "seq2seq"), for a source x_1..x_n and a target y_1..y_m:

    inputs          x_1 ... x_n 0 ... 0           source ids [B, S]; ``mask`` true at x
    decoder_inputs  <s> y_1 ... y_m 0 ... 0       [B, T], teacher forcing
    targets         y_1 ... y_m </s> 0 ... 0      [B, T]
    weights         1   ... 1   1    0 ... 0      [B, T], the m + 1 predicted tokens

Target ids: 0 padding, 1 the start token <s>, 2 the end token </s>, then the target symbols
(``vocab_size`` of them in all, ``target_tokens[i]`` the symbol of id i). Source ids: 0
padding, then the source symbols (``source_vocab_size``, ``source_tokens``). S is
``source_len``, T is ``seq_len``: the longest target plus the end token.
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from seqjax.data.base import (
    ArrayTask,
    Batch,
    SyntheticTask,
    check_int,
    compact_id_dtype,
    register_task,
)
from seqjax.data.tagging import text_lines

PAD, START, END = 0, 1, 2
FIRST_TARGET_SYMBOL = 3
TARGET_RESERVED = ["<pad>", "<s>", "</s>"]


def seq2seq_split(
    source: np.ndarray,
    source_lengths: np.ndarray,
    target: np.ndarray,
    target_lengths: np.ndarray,
    id_dtype: np.dtype,
) -> Batch:
    """The batch arrays of the module docstring from source ids [N, S] and target ids
    [N, T - 1], each row padded with 0 after its length."""
    num_examples, seq_len = len(target), target.shape[1] + 1
    start = np.full((num_examples, 1), START)
    targets = np.pad(target, [(0, 0), (0, 1)])
    targets[np.arange(num_examples), target_lengths] = END
    return {
        "inputs": source.astype(id_dtype),
        "mask": np.arange(source.shape[1]) < source_lengths[:, None],
        "decoder_inputs": np.concatenate([start, target], axis=1).astype(id_dtype),
        "targets": targets.astype(id_dtype),
        "weights": np.arange(seq_len) <= target_lengths[:, None],
    }


def pad_rows(rows: list[list[int]], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Id lists as an array [N, width] padded with 0, and their lengths [N]."""
    array = np.zeros((len(rows), width), np.int64)
    for index, row in enumerate(rows):
        array[index, : len(row)] = row
    return array, np.array([len(row) for row in rows], np.int64)


class Seq2SeqVocabulary:
    """The ids and printable symbols shared by the sequence-to-sequence tasks."""

    heads = ("seq2seq",)
    start_token = START
    end_token = END
    source_tokens: list[str]
    target_tokens: list[str]
    first_source_symbol = 1  # the source ids below it are reserved
    unknown_source: int | None = None  # the id of a source symbol unseen in training

    def split_source(self, text: str) -> list[str]:
        """The source symbols of a text: words separated by spaces."""
        return text.split()

    def encode_source(self, text: str) -> np.ndarray:
        """The source ids [S'] of ``text`` (a source to translate, e.g. from eval.py)."""
        ids = {
            symbol: index
            for index, symbol in enumerate(self.source_tokens)
            if index >= self.first_source_symbol
        }
        symbols = self.split_source(text)
        if not symbols:
            raise ValueError(f"{self.name}: the source {text!r} has no symbols")
        unknown = [symbol for symbol in symbols if symbol not in ids]
        if unknown and self.unknown_source is None:
            raise ValueError(
                f"{self.name}: the source {text!r} has symbol(s) {', '.join(map(repr, unknown))}"
                f" this task does not have; its symbols: {' '.join(ids)}"
            )
        return np.array([ids.get(symbol, self.unknown_source) for symbol in symbols], np.int32)

    def decode_source(self, ids: np.ndarray) -> list[str]:
        """The source symbols of one row of ``inputs``, up to its padding."""
        return [self.source_tokens[i] for i in _until(ids, PAD)]

    def decode_target(self, ids: np.ndarray) -> list[str]:
        """The target symbols of one row of ``targets``, ``decoder_inputs`` or a prediction:
        after a leading start token, up to the end token or padding."""
        ids = list(ids)
        if ids[:1] == [START]:
            ids = ids[1:]
        return [self.target_tokens[i] for i in _until(_until(ids, END), PAD)]


def _until(ids, stop: int) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[: ids.index(stop)] if stop in ids else ids


ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = [*ONES, *TENS, "hundred", "thousand"]
MAX_NUMBER_DIGITS = 6
MONTHS = (
    "january february march april may june july august september october november december"
).split()
DIGITS = [str(digit) for digit in range(10)]
FIRST_DATE, LAST_DATE = datetime.date(1000, 1, 1), datetime.date(2999, 12, 31)


def number_words(number: int) -> list[str]:
    """The English words of 0 <= number < 10**6, without "and": 342 -> three hundred forty
    two; 342_005 -> three hundred forty two thousand five."""

    def below_thousand(n: int) -> list[str]:
        hundreds, rest = divmod(n, 100)
        words = [ONES[hundreds], "hundred"] if hundreds else []
        if rest >= 20:
            words += [TENS[rest // 10 - 2]] + ([ONES[rest % 10]] if rest % 10 else [])
        elif rest:
            words.append(ONES[rest])
        return words

    if number == 0:
        return ["zero"]
    thousands, rest = divmod(number, 1000)
    return (below_thousand(thousands) + ["thousand"] if thousands else []) + below_thousand(rest)


def date_tokens(date: datetime.date) -> tuple[list[str], list[str]]:
    """The source and target symbols of a date: month name, day digits, year digits -> the ISO
    form's characters (March 5, 2021: march 5 2 0 2 1 -> 2 0 2 1 - 0 3 - 0 5)."""
    return [MONTHS[date.month - 1], *str(date.day), *f"{date.year:04d}"], list(date.isoformat())


TRANSDUCTIONS = ("reverse", "duplicate", "sort", "number_words", "date_format")


@register_task
class Transduction(Seq2SeqVocabulary, SyntheticTask):
    """A generated transduction from a source sequence to a target sequence:

    - "reverse": a string w of ``num_symbols`` symbols -> w reversed;
    - "duplicate": w -> ww;
    - "sort": w -> its symbols in increasing order (the reverse-string, duplicate-string and
      bucket-sort tasks of Delétang et al. 2023, "Neural Networks and the Chomsky Hierarchy",
      as source -> target); lengths uniform in [min_length, max_length], symbols uniform;
    - "number_words": an integer's English words -> its decimal digits, e.g. three hundred
      forty two -> 3 4 2; the number of digits is uniform in [1, 6], then the number uniform
      among those with that many digits;
    - "date_format": a date as month name, day and year digits -> its ISO 8601 characters,
      e.g. march 5 2 0 2 1 -> 2 0 2 1 - 0 3 - 0 5; the day uniform from 1000-01-01 to
      2999-12-31.

    ``min_length``, ``max_length`` and ``num_symbols`` shape the string transductions only.
    Train and test examples are drawn independently, so short strings and small numbers occur
    in both.
    """

    name = "transduction"

    def __init__(
        self,
        *,
        transduction: str = "reverse",
        min_length: int = 1,
        max_length: int = 20,
        num_symbols: int = 8,
        num_train_examples: int = 100_000,
        num_test_examples: int = 1_000,
        seed: int = 0,
    ):
        super().__init__(
            num_train_examples=num_train_examples, num_test_examples=num_test_examples, seed=seed
        )
        prefix = "transduction: option"
        if transduction not in TRANSDUCTIONS:
            raise ValueError(
                f"{prefix} 'transduction' must be one of {', '.join(TRANSDUCTIONS)}, "
                f"got {transduction!r}"
            )
        self.transduction = transduction
        self.min_length = check_int(f"{prefix} 'min_length'", min_length, minimum=1)
        self.max_length = check_int(
            f"{prefix} 'max_length' (at least min_length)", max_length, minimum=self.min_length
        )
        self.num_symbols = check_int(f"{prefix} 'num_symbols'", num_symbols, minimum=2)

        if transduction == "number_words":
            source_symbols, target_symbols = NUMBER_WORDS, DIGITS
            # the longest is 777_777: seven hundred seventy seven thousand seven hundred ...
            self.source_len, target_len = 9, MAX_NUMBER_DIGITS
        elif transduction == "date_format":
            source_symbols, target_symbols = [*MONTHS, *DIGITS], [*DIGITS, "-"]
            self.source_len, target_len = 1 + 2 + 4, len("2021-03-05")
        else:
            source_symbols = target_symbols = [str(symbol) for symbol in range(self.num_symbols)]
            self.source_len = self.max_length
            target_len = self.max_length * (2 if transduction == "duplicate" else 1)
        self.source_tokens = ["<pad>", *source_symbols]
        self.target_tokens = [*TARGET_RESERVED, *target_symbols]
        self.source_vocab_size = len(self.source_tokens)
        self.vocab_size = len(self.target_tokens)
        self.seq_len = target_len + 1

    def generate(self, rng: np.random.Generator, num_examples: int) -> Batch:
        id_dtype = compact_id_dtype(max(self.vocab_size, self.source_vocab_size))
        if self.transduction in ("number_words", "date_format"):
            return self._generate_from_words(rng, num_examples, id_dtype)
        lengths = rng.integers(self.min_length, self.max_length + 1, size=num_examples)
        symbols = rng.integers(0, self.num_symbols, size=(num_examples, self.max_length))
        mask = np.arange(self.max_length) < lengths[:, None]
        source = np.where(mask, symbols + 1, PAD)
        positions = np.arange(self.seq_len - 1)
        if self.transduction == "reverse":
            target_symbols = np.take_along_axis(
                symbols, np.clip(lengths[:, None] - 1 - positions, 0, None), axis=1
            )
            target_lengths = lengths
        elif self.transduction == "duplicate":
            target_symbols = np.take_along_axis(symbols, positions % lengths[:, None], axis=1)
            target_lengths = 2 * lengths
        else:  # sort; the padding sorts last
            target_symbols = np.sort(np.where(mask, symbols, self.num_symbols), axis=1)
            target_lengths = lengths
        in_target = positions < target_lengths[:, None]
        target = np.where(in_target, target_symbols + FIRST_TARGET_SYMBOL, PAD)
        return seq2seq_split(source, lengths, target, target_lengths, id_dtype)

    def _generate_from_words(
        self, rng: np.random.Generator, num_examples: int, id_dtype: np.dtype
    ) -> Batch:
        if self.transduction == "number_words":
            num_digits = rng.integers(1, MAX_NUMBER_DIGITS + 1, size=num_examples)
            lowest = np.where(num_digits == 1, 0, 10 ** (num_digits - 1))
            numbers = rng.integers(lowest, 10**num_digits)
            pairs = [(number_words(int(number)), list(str(number))) for number in numbers]
        else:
            days = rng.integers(FIRST_DATE.toordinal(), LAST_DATE.toordinal() + 1, num_examples)
            pairs = [date_tokens(datetime.date.fromordinal(int(day))) for day in days]
        source_ids = {symbol: index for index, symbol in enumerate(self.source_tokens)}
        target_ids = {symbol: index for index, symbol in enumerate(self.target_tokens)}
        source, source_lengths = pad_rows(
            [[source_ids[symbol] for symbol in source] for source, _ in pairs], self.source_len
        )
        target, target_lengths = pad_rows(
            [[target_ids[symbol] for symbol in target] for _, target in pairs], self.seq_len - 1
        )
        return seq2seq_split(source, source_lengths, target, target_lengths, id_dtype)


UNKNOWN_SOURCE, FIRST_SOURCE_SYMBOL = 1, 2
SOURCE_RESERVED = ["<pad>", "<unk>"]
TOKENIZATIONS = ("chars", "words")


@register_task
class Seq2SeqFile(Seq2SeqVocabulary, ArrayTask):
    """Sequence-to-sequence pairs read from a training file and a test file of
    ``source<TAB>target`` lines (blank lines are skipped), split into characters or into
    whitespace-separated words (``tokens``).

    Vocabularies come from the training file, symbols numbered in order of first appearance:
    source ids 0 padding, 1 unknown (every source symbol not seen in training), then the
    symbols from 2; target ids 0 padding, 1 start, 2 end, then the symbols from 3. A target
    symbol not seen in training is an error, as is a source longer than
    ``max_source_length`` (S) or a target longer than ``max_target_length`` (T - 1), or an
    empty source.
    """

    name = "seq2seq_file"
    kind = "seq2seq"

    def __init__(
        self,
        *,
        train_path: str | os.PathLike,
        test_path: str | os.PathLike,
        tokens: str = "chars",
        max_source_length: int = 128,
        max_target_length: int = 128,
        seed: int = 0,
    ):
        prefix = "seq2seq_file: option"
        for option, path in [("train_path", train_path), ("test_path", test_path)]:
            if not isinstance(path, str | os.PathLike):
                raise ValueError(f"{prefix} {option!r} must be a file path, got {path!r}")
        self.train_path, self.test_path = os.fspath(train_path), os.fspath(test_path)
        if tokens not in TOKENIZATIONS:
            raise ValueError(
                f"{prefix} 'tokens' must be one of {', '.join(TOKENIZATIONS)}, got {tokens!r}"
            )
        self.tokens = tokens
        self.max_source_length = check_int(
            f"{prefix} 'max_source_length'", max_source_length, minimum=1
        )
        self.max_target_length = check_int(
            f"{prefix} 'max_target_length'", max_target_length, minimum=1
        )
        self.seed = check_int(f"{prefix} 'seed'", seed, minimum=0)
        self.source_len, self.seq_len = self.max_source_length, self.max_target_length + 1

        train, test = self._read(self.train_path), self._read(self.test_path)
        first_seen = {"source": {}, "target": {}}
        for _, source, target in train:
            first_seen["source"].update(dict.fromkeys(source))
            first_seen["target"].update(dict.fromkeys(target))
        self.source_tokens = [*SOURCE_RESERVED, *first_seen["source"]]
        self.target_tokens = [*TARGET_RESERVED, *first_seen["target"]]
        self.source_vocab_size = len(self.source_tokens)
        self.vocab_size = len(self.target_tokens)
        self._train_split = self._arrays(train, self.train_path)
        self._test_split = self._arrays(test, self.test_path)

    first_source_symbol = FIRST_SOURCE_SYMBOL
    unknown_source = UNKNOWN_SOURCE

    def split_source(self, text: str) -> list[str]:
        """The symbols of a text: its characters, or its words (option ``tokens``)."""
        return list(text) if self.tokens == "chars" else text.split()

    def _read(self, path: str) -> list[tuple[int, list[str], list[str]]]:
        """(line number, source symbols, target symbols) of each pair in the file."""
        pairs = []
        for line_number, line in enumerate(text_lines(path, self.name), start=1):
            if not line.strip():
                continue
            where = f"{self.name}: {path!r} line {line_number}"
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(
                    f"{where}: expected 2 tab-separated fields 'source<TAB>target', "
                    f"got {len(fields)}: {line!r}"
                )
            source, target = map(self.split_source, fields)
            if not source:
                raise ValueError(f"{where}: the source is empty")
            for side, symbols, limit in [
                ("source", source, self.max_source_length),
                ("target", target, self.max_target_length),
            ]:
                if len(symbols) > limit:
                    raise ValueError(
                        f"{where}: a {side} of {len(symbols)} {self.tokens} exceeds "
                        f"max_{side}_length={limit}"
                    )
            pairs.append((line_number, source, target))
        if not pairs:
            raise ValueError(f"{self.name}: {path!r} has no source<TAB>target lines")
        return pairs

    def _arrays(self, pairs: list[tuple[int, list[str], list[str]]], path: str) -> Batch:
        # Symbols only, so that a symbol spelled like a reserved name ("<s>") is a symbol.
        source_ids = {
            symbol: index
            for index, symbol in enumerate(self.source_tokens)
            if index >= FIRST_SOURCE_SYMBOL
        }
        target_ids = {
            symbol: index
            for index, symbol in enumerate(self.target_tokens)
            if index >= FIRST_TARGET_SYMBOL
        }
        sources, targets = [], []
        for line_number, source, target in pairs:
            for symbol in target:
                if symbol not in target_ids:
                    raise ValueError(
                        f"{self.name}: target symbol {symbol!r} on line {line_number} of "
                        f"{path!r} does not occur in the training file {self.train_path!r}"
                    )
            sources.append([source_ids.get(symbol, UNKNOWN_SOURCE) for symbol in source])
            targets.append([target_ids[symbol] for symbol in target])
        source, source_lengths = pad_rows(sources, self.source_len)
        target, target_lengths = pad_rows(targets, self.seq_len - 1)
        id_dtype = compact_id_dtype(max(self.vocab_size, self.source_vocab_size))
        return seq2seq_split(source, source_lengths, target, target_lengths, id_dtype)
