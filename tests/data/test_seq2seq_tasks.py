"""Tests for seqjax.data.seq2seq: the generated transductions and pairs read from files."""

import datetime
import json
import re

import numpy as np
import pytest

from seqjax.data import create_task
from seqjax.data.seq2seq import END, START, TRANSDUCTIONS, date_tokens, number_words

SMALL = {"num_train_examples": 64, "num_test_examples": 10}


def assert_seq2seq_batch(task, batch, batch_size):
    """The "seq2seq" batch of the base.py docstring, row by row."""
    assert set(batch) == {"inputs", "mask", "decoder_inputs", "targets", "weights"}
    source_shape, target_shape = (batch_size, task.source_len), (batch_size, task.seq_len)
    for key, dtype, shape in [
        ("inputs", np.int32, source_shape),
        ("mask", np.bool_, source_shape),
        ("decoder_inputs", np.int32, target_shape),
        ("targets", np.int32, target_shape),
        ("weights", np.float32, target_shape),
    ]:
        assert batch[key].shape == shape, key
        assert batch[key].dtype == dtype, key
    assert batch["inputs"].max() < task.source_vocab_size
    assert max(batch["targets"].max(), batch["decoder_inputs"].max()) < task.vocab_size
    for inputs, mask, decoder_inputs, targets, weights in zip(
        *(batch[key] for key in ["inputs", "mask", "decoder_inputs", "targets", "weights"]),
        strict=True,
    ):
        source_length, counted = int(mask.sum()), int(weights.sum())
        np.testing.assert_array_equal(mask, np.arange(task.source_len) < source_length)
        np.testing.assert_array_equal(weights, np.arange(task.seq_len) < counted)
        assert (inputs[:source_length] >= 1).all() and (inputs[source_length:] == 0).all()
        if counted == 0:  # a padding row of the last test batch
            assert source_length == 0 and not decoder_inputs.any() and not targets.any()
            continue
        target = targets[: counted - 1]
        assert targets[counted - 1] == END and (targets[counted:] == 0).all()
        assert decoder_inputs[0] == START and (decoder_inputs[counted:] == 0).all()
        np.testing.assert_array_equal(decoder_inputs[1:counted], target)
        assert (target > END).all()


def assert_batches_equal(batch, other):
    assert batch.keys() == other.keys()
    for key in batch:
        np.testing.assert_array_equal(batch[key], other[key], err_msg=key)


def decoded_pairs(task, batch):
    return [
        (task.decode_source(inputs), task.decode_target(targets))
        for inputs, targets, weights in zip(
            batch["inputs"], batch["targets"], batch["weights"], strict=True
        )
        if weights.any()
    ]


def test_number_words_of_hand_checked_numbers():
    assert number_words(342) == "three hundred forty two".split()
    assert number_words(0) == ["zero"]
    assert number_words(15) == ["fifteen"]
    assert number_words(90) == ["ninety"]
    assert number_words(105) == "one hundred five".split()
    assert number_words(342_005) == "three hundred forty two thousand five".split()
    assert number_words(20_000) == "twenty thousand".split()
    longest = number_words(777_777)
    assert len(longest) == create_task("transduction", transduction="number_words").source_len


def test_date_tokens_of_the_example():
    source, target = date_tokens(datetime.date(2021, 3, 5))
    assert source == ["march", "5", "2", "0", "2", "1"]
    assert "".join(target) == "2021-03-05" and len(target) == 10
    source, _ = date_tokens(datetime.date(1000, 12, 31))
    assert source == ["december", "3", "1", "1", "0", "0", "0"]


@pytest.mark.parametrize("transduction", TRANSDUCTIONS)
def test_transduction_batches_are_deterministic_and_follow_the_format(transduction):
    options = {"transduction": transduction, "max_length": 6, **SMALL}
    task = create_task("transduction", **options)
    assert (task.heads, task.start_token, task.end_token) == (("seq2seq",), START, END)
    assert (task.vocab_size, task.source_vocab_size) == (
        len(task.target_tokens),
        len(task.source_tokens),
    )
    assert task.target_tokens[:3] == ["<pad>", "<s>", "</s>"] and task.source_tokens[0] == "<pad>"
    batch = task.train_batch(2, 16)
    assert_seq2seq_batch(task, batch, 16)
    assert_batches_equal(batch, create_task("transduction", **options).train_batch(2, 16))
    reseeded = create_task("transduction", **options, seed=1)
    assert not np.array_equal(batch["inputs"], reseeded.train_batch(2, 16)["inputs"])
    for test_batch in task.test_batches(4):
        assert_seq2seq_batch(task, test_batch, 4)
    bigger = create_task("transduction", **{**options, "num_train_examples": 300})
    assert_batches_equal(next(task.test_batches(10)), next(bigger.test_batches(10)))
    rebuilt = create_task("transduction", **json.loads(json.dumps(task.options())))
    assert_batches_equal(rebuilt.train_batch(2, 16), batch)


def test_string_transductions_map_each_source_to_its_target():
    options = {"min_length": 2, "max_length": 7, "num_symbols": 5, **SMALL}
    expected_seq_len = {"reverse": 8, "duplicate": 15, "sort": 8}
    for transduction, solve in [
        ("reverse", lambda source: source[::-1]),
        ("duplicate", lambda source: source + source),
        ("sort", lambda source: sorted(source, key=int)),
    ]:
        task = create_task("transduction", transduction=transduction, **options)
        assert (task.source_len, task.seq_len) == (7, expected_seq_len[transduction])
        assert task.source_tokens == ["<pad>", "0", "1", "2", "3", "4"]
        assert task.target_tokens == ["<pad>", "<s>", "</s>", "0", "1", "2", "3", "4"]
        pairs = decoded_pairs(task, task.train_batch(0, 64))
        assert {len(source) for source, _ in pairs} == set(range(2, 8))
        for source, target in pairs:
            assert target == solve(source)
    # symbol s is source id s + 1 and target id s + 3
    task = create_task("transduction", transduction="reverse", **options)
    batch = task.train_batch(0, 64)
    for inputs, targets, length in zip(
        batch["inputs"], batch["targets"], batch["mask"].sum(axis=1), strict=True
    ):
        np.testing.assert_array_equal(targets[:length], inputs[:length][::-1] + 2)


def test_number_words_and_dates_map_each_source_to_its_target():
    task = create_task("transduction", transduction="number_words", **SMALL)
    assert (task.source_len, task.seq_len) == (9, 7)
    pairs = decoded_pairs(task, task.train_batch(0, 64))
    assert {len(target) for _, target in pairs} == set(range(1, 7))
    for source, target in pairs:
        assert target[0] != "0" or target == ["0"]
        assert source == number_words(int("".join(target)))
    task = create_task("transduction", transduction="date_format", **SMALL)
    assert (task.source_len, task.seq_len) == (7, 11)
    for source, target in decoded_pairs(task, task.train_batch(0, 64)):
        date = datetime.date.fromisoformat("".join(target))
        assert (source, target) == date_tokens(date)
        assert 1000 <= date.year <= 2999


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"transduction": "copy"}, "option 'transduction' must be one of reverse, duplicate"),
        ({"min_length": 0}, "option 'min_length' must be an integer >= 1"),
        ({"max_length": 0}, "option 'max_length' (at least min_length) must be an integer >= 1"),
        ({"num_symbols": 1}, "option 'num_symbols' must be an integer >= 2"),
        ({"num_train_examples": 0}, "option 'num_train_examples' must be an integer >= 1"),
    ],
)
def test_transduction_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=re.escape(f"transduction: {message}")):
        create_task("transduction", **options)


def write_pairs(tmp_path, train, test):
    train_path, test_path = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train_path.write_text(train)
    test_path.write_text(test)
    return {"train_path": str(train_path), "test_path": str(test_path)}


def test_seq2seq_file_reads_character_pairs(tmp_path):
    files = write_pairs(tmp_path, "abc\tcba\n\nhello\tolleh\n", "zab\tba\n")
    task = create_task("seq2seq_file", **files, max_source_length=5, max_target_length=6)
    assert (task.kind, task.heads, task.source_len, task.seq_len) == (
        "seq2seq",
        ("seq2seq",),
        5,
        7,
    )
    assert task.source_tokens == ["<pad>", "<unk>", "a", "b", "c", "h", "e", "l", "o"]
    assert task.target_tokens == ["<pad>", "<s>", "</s>", "c", "b", "a", "o", "l", "e", "h"]
    assert (task.num_train_examples, task.num_test_examples) == (2, 1)
    train = task._train_split
    np.testing.assert_array_equal(train["inputs"], [[2, 3, 4, 0, 0], [5, 6, 7, 7, 8]])
    np.testing.assert_array_equal(train["targets"], [[3, 4, 5, 2, 0, 0, 0], [6, 7, 7, 8, 9, 2, 0]])
    np.testing.assert_array_equal(
        train["decoder_inputs"], [[1, 3, 4, 5, 0, 0, 0], [1, 6, 7, 7, 8, 9, 0]]
    )
    test = next(task.test_batches(2))
    assert_seq2seq_batch(task, test, 2)
    np.testing.assert_array_equal(test["inputs"][0], [1, 2, 3, 0, 0])  # z: unknown
    assert task.decode_target(test["targets"][0]) == ["b", "a"]
    batch = task.train_batch(3, 2)
    assert_seq2seq_batch(task, batch, 2)
    rebuilt = create_task("seq2seq_file", **json.loads(json.dumps(task.options())))
    assert_batches_equal(rebuilt.train_batch(3, 2), batch)


def test_seq2seq_file_reads_word_pairs_and_reserved_names_are_symbols(tmp_path):
    files = write_pairs(tmp_path, "the  cat\tle chat\n<s> cat\t<s>\n", "the dog\t<s> chat\n")
    task = create_task("seq2seq_file", **files, tokens="words")
    assert task.source_tokens == ["<pad>", "<unk>", "the", "cat", "<s>"]
    assert task.target_tokens == ["<pad>", "<s>", "</s>", "le", "chat", "<s>"]
    test = next(task.test_batches(1))
    np.testing.assert_array_equal(test["inputs"][0, :3], [2, 1, 0])
    np.testing.assert_array_equal(test["targets"][0, :3], [5, 4, END])


def test_seq2seq_file_takes_an_empty_target(tmp_path):
    files = write_pairs(tmp_path, "ab\t\nab\tx\n", "ab\t\n")
    test = next(create_task("seq2seq_file", **files).test_batches(1))
    np.testing.assert_array_equal(test["targets"][0, :2], [END, 0])
    np.testing.assert_array_equal(test["decoder_inputs"][0, :2], [START, 0])


@pytest.mark.parametrize(
    ("train", "message"),
    [
        (
            "ab\tba\nab\n",
            "train.tsv' line 2: expected 2 tab-separated fields 'source<TAB>target', got 1",
        ),
        ("ab\tba\n\na\tb\tc\n", "train.tsv' line 3: expected 2 tab-separated fields"),
        ("ab\tba\n\tb\n", "train.tsv' line 2: the source is empty"),
        ("abcd\tx\n", "train.tsv' line 1: a source of 4 chars exceeds max_source_length=3"),
        ("ab\tx\nab\twxyz\n", "train.tsv' line 2: a target of 4 chars exceeds max_target_length=3"),
        ("\n\n", "train.tsv' has no source<TAB>target lines"),
        ("", "train.tsv' is empty"),
    ],
)
def test_seq2seq_file_bad_lines_are_named(tmp_path, train, message):
    files = write_pairs(tmp_path, train, "ab\tb\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        create_task("seq2seq_file", **files, max_source_length=3, max_target_length=3)


def test_seq2seq_file_unseen_target_symbol_is_named(tmp_path):
    files = write_pairs(tmp_path, "ab\tba\n", "ab\tba\nab\tbz\n")
    with pytest.raises(
        ValueError,
        match=re.escape("target symbol 'z' on line 2 of ")
        + ".*test.tsv.*does not occur in the training file",
    ):
        create_task("seq2seq_file", **files)


def test_seq2seq_file_missing_file_and_bad_options_are_named(tmp_path):
    files = write_pairs(tmp_path, "ab\tba\n", "ab\tba\n")
    missing = tmp_path / "missing.tsv"
    cases = [
        ({"test_path": str(missing)}, f"file {str(missing)!r} does not exist"),
        ({"tokens": "bytes"}, "option 'tokens' must be one of chars, words, got 'bytes'"),
        ({"max_source_length": 0}, "option 'max_source_length' must be an integer >= 1"),
        ({"max_target_length": 0}, "option 'max_target_length' must be an integer >= 1"),
        ({"train_path": None}, "option 'train_path' must be a file path"),
        ({"seed": -1}, "option 'seed' must be an integer >= 0"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=re.escape(f"seq2seq_file: {message}")):
            create_task("seq2seq_file", **{**files, **options})
