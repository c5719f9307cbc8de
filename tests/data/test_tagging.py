"""Tests for seqjax.data.tagging: the two-sided tagging task and tagging read from files."""

import json
import re
from collections import Counter, defaultdict

import numpy as np
import pytest

from seqjax.data import create_task
from seqjax.data.tagging import TwoSidedTagging

SMALL = {"num_train_examples": 64, "num_test_examples": 10}


def assert_tagging_batch(task, batch, batch_size):
    """The "token"/"crf" batch of the base.py docstring: ids, mask, labels, weights = mask."""
    assert set(batch) == {"inputs", "mask", "targets", "weights"}
    for key, dtype in [
        ("inputs", np.int32),
        ("mask", np.bool_),
        ("targets", np.int32),
        ("weights", np.float32),
    ]:
        assert batch[key].shape == (batch_size, task.seq_len), key
        assert batch[key].dtype == dtype, key
    np.testing.assert_array_equal(batch["weights"], batch["mask"])
    assert (batch["inputs"][~batch["mask"]] == 0).all()
    assert (batch["inputs"][batch["mask"]] >= 1).all()
    assert (batch["targets"][~batch["mask"]] == 0).all()
    assert batch["inputs"].max() < task.vocab_size
    assert batch["targets"].max() < task.num_labels <= task.vocab_size
    # right-padded: every row is a run of real positions, then padding
    lengths = batch["mask"].sum(axis=1)
    np.testing.assert_array_equal(batch["mask"], np.arange(task.seq_len) < lengths[:, None])


def assert_batches_equal(batch, other):
    assert batch.keys() == other.keys()
    for key in batch:
        np.testing.assert_array_equal(batch[key], other[key], err_msg=key)


def test_two_sided_tagging_batches_are_deterministic_and_follow_the_format():
    task = create_task("two_sided_tagging", **SMALL)
    assert task.heads == ("token", "crf")
    assert (task.seq_len, task.vocab_size, task.num_labels) == (32, 17, 4)
    assert task.label_names == ["0", "1", "2", "3"]
    batch = task.train_batch(3, 8)
    assert_tagging_batch(task, batch, 8)
    assert_batches_equal(batch, create_task("two_sided_tagging", **SMALL).train_batch(3, 8))
    np.testing.assert_array_equal(batch["targets"], task.labels_of(batch["inputs"], batch["mask"]))
    lengths = batch["mask"].sum(axis=1)
    assert lengths.min() >= 8 and lengths.max() <= 32
    test = list(task.test_batches(4))
    for test_batch in test:
        assert_tagging_batch(task, test_batch, 4)
    assert not test[-1]["mask"][2:].any()  # 10 examples: the last batch pads 2 rows
    bigger = create_task("two_sided_tagging", num_train_examples=200, num_test_examples=10)
    assert_batches_equal(next(task.test_batches(10)), next(bigger.test_batches(10)))
    reseeded = create_task("two_sided_tagging", **SMALL, seed=1)
    assert not np.array_equal(batch["inputs"], reseeded.train_batch(3, 8)["inputs"])
    rebuilt = create_task("two_sided_tagging", **json.loads(json.dumps(task.options())))
    assert_batches_equal(rebuilt.train_batch(3, 8), batch)


def test_two_sided_tagging_labels_a_hand_built_row():
    task = create_task("two_sided_tagging", num_symbols=4, num_labels=4, **SMALL)
    # ids 2 4 1 3 are symbols 1 3 0 2; beyond the row the neighbour counts as 0
    inputs = np.array([[2, 4, 1, 3, 0, 0]])
    mask = inputs > 0
    labels = task.labels_of(inputs, mask)
    np.testing.assert_array_equal(labels, [[(0 + 3) % 4, (1 + 0) % 4, (3 + 2) % 4, 0, 0, 0]])


def test_two_sided_tagging_label_changes_with_the_right_neighbour():
    task = create_task("two_sided_tagging", **SMALL)
    batch = task.train_batch(0, 1)
    inputs, mask = batch["inputs"], batch["mask"]
    length = int(mask.sum())
    labels = task.labels_of(inputs, mask)
    for position in range(length - 1):
        changed = inputs.copy()
        changed[0, position + 1] = (changed[0, position + 1] - 1 + 1) % task.num_symbols + 1
        changed_labels = task.labels_of(changed, mask)
        assert changed_labels[0, position] != labels[0, position]
        # the label is a function of the two neighbours only: nothing before changes
        np.testing.assert_array_equal(changed_labels[0, :position], labels[0, :position])


def majority_accuracy(train_keys, train_labels, test_keys, test_labels):
    """Accuracy on the test positions of predicting, for each key, the label seen most often
    with it in training (the Bayes-optimal predictor from those features, estimated)."""
    counts = defaultdict(Counter)
    for key, label in zip(train_keys, train_labels, strict=True):
        counts[key][label] += 1
    overall = Counter(train_labels).most_common(1)[0][0]
    predictions = [
        counts[key].most_common(1)[0][0] if key in counts else overall for key in test_keys
    ]
    return np.mean(np.array(predictions) == np.array(test_labels))


def keyed_positions(split, key_of):
    inputs, mask, targets = split["inputs"], split["mask"], split["targets"]
    keys, labels = [], []
    for row, length in enumerate(mask.sum(axis=1)):
        padded = [0, *inputs[row, :length], 0]  # padded[t + 1] is x_t
        for position in range(length):
            keys.append(key_of(padded, position, length))
            labels.append(int(targets[row, position]))
    return keys, labels


def causal_and_two_sided_accuracy(task):
    train = task.train_batch(0, task.num_train_examples)
    test = next(task.test_batches(task.num_test_examples))

    def prefix(padded, position, length):  # everything a causal model has read
        return tuple(padded[1 : position + 2])

    def neighbours(padded, position, length):
        return padded[position], padded[position + 2]

    causal = majority_accuracy(*keyed_positions(train, prefix), *keyed_positions(test, prefix))
    two_sided = majority_accuracy(
        *keyed_positions(train, neighbours), *keyed_positions(test, neighbours)
    )
    return causal, two_sided, test["mask"].sum(axis=1)


def test_two_sided_tagging_causal_accuracy_is_the_stated_bound():
    # Short rows so that every prefix is seen often enough to estimate its best label.
    task = create_task(
        "two_sided_tagging",
        num_symbols=4,
        num_labels=4,
        min_length=3,
        max_length=4,
        num_train_examples=20_000,
        num_test_examples=3_000,
    )
    causal, two_sided, lengths = causal_and_two_sided_accuracy(task)
    bound = 1 / 4 + (1 - 1 / 4) * len(lengths) / lengths.sum()
    assert abs(causal - bound) < 0.02
    assert two_sided == 1.0


def test_two_sided_tagging_defaults_leave_a_causal_model_near_chance():
    task = create_task("two_sided_tagging", num_train_examples=4_000, num_test_examples=1_000)
    test = next(task.test_batches(task.num_test_examples))
    train = task.train_batch(0, task.num_train_examples)

    # Given the prefix, the label depends on s_{t-1} and on whether t is the last token, which
    # a causal model can only estimate from t: (t, x_{t-1}) is all it can use.
    def causal_features(padded, position, length):
        return position, padded[position]

    def with_right_neighbour(padded, position, length):
        return padded[position], padded[position + 2]

    causal = majority_accuracy(
        *keyed_positions(train, causal_features), *keyed_positions(test, causal_features)
    )
    two_sided = majority_accuracy(
        *keyed_positions(train, with_right_neighbour), *keyed_positions(test, with_right_neighbour)
    )
    lengths = test["mask"].sum(axis=1)
    bound = 1 / 4 + (1 - 1 / 4) * len(lengths) / lengths.sum()
    assert bound < 0.3
    assert causal < bound + 0.02
    assert two_sided == 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_symbols": 6}, "'num_symbols' must be a multiple of num_labels=4"),
        ({"num_symbols": 2}, "'num_symbols' must be an integer >= 4"),
        ({"num_labels": 1}, "'num_labels' must be an integer >= 2"),
        ({"min_length": 0}, "'min_length' must be an integer >= 1"),
        ({"max_length": 4}, "'max_length' (at least min_length) must be an integer >= 8"),
        ({"seed": -1}, "'seed' must be an integer >= 0"),
    ],
)
def test_two_sided_tagging_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=re.escape(f"two_sided_tagging: option {message}")):
        TwoSidedTagging(**{**SMALL, **options})


CONLLU_TRAIN = """\
# sent_id = 1
# text = Le chat dort.
1\tLe\tle\tDET\tDA\tDefinite=Def\t2\tdet\t_\t_
2\tchat\tchat\tNOUN\tNC\tGender=Masc\t3\tnsubj\t_\t_
3\tdort\tdormir\tVERB\tV\t_\t0\troot\t_\tSpaceAfter=No
4\t.\t.\tPUNCT\tF\t_\t3\tpunct\t_\t_

# sent_id = 2
1-2\tdu\t_\t_\t_\t_\t_\t_\t_\t_
1\tde\tde\tADP\tP\t_\t3\tcase\t_\t_
2\tle\tle\tDET\tDA\t_\t3\tdet\t_\t_
3\tpain\tpain\tNOUN\tNC\t_\t0\troot\t_\t_
3.1\tmange\tmanger\tVERB\tV\t_\t_\t_\t0:root\t_
"""

CONLLU_TEST = """\
# sent_id = t1
1\tle\tle\tDET\tDA\t_\t2\tdet\t_\t_
2\tchien\tchien\tNOUN\tNC\t_\t0\troot\t_\t_
"""


@pytest.fixture
def conllu_files(tmp_path):
    train, test = tmp_path / "train.conllu", tmp_path / "test.conllu"
    train.write_text(CONLLU_TRAIN)
    test.write_text(CONLLU_TEST)
    return {"train_path": str(train), "test_path": str(test)}


def test_tagging_file_reads_conllu_words_and_skips_ranges_and_empty_nodes(conllu_files):
    task = create_task("tagging_file", **conllu_files, max_length=6)
    assert (task.kind, task.heads, task.column, task.seq_len) == (
        "tagging",
        ("token", "crf"),
        "upos",
        6,
    )
    assert task.words == ["<pad>", "<unk>", "Le", "chat", "dort", ".", "de", "le", "pain"]
    assert task.labels == ["ADP", "DET", "NOUN", "PUNCT", "VERB"]
    assert (task.num_labels, task.vocab_size) == (5, 9)
    assert (task.num_train_examples, task.num_test_examples) == (2, 1)
    train = task._train_split
    np.testing.assert_array_equal(train["inputs"], [[2, 3, 4, 5, 0, 0], [6, 7, 8, 0, 0, 0]])
    np.testing.assert_array_equal(train["targets"], [[1, 2, 4, 3, 0, 0], [0, 1, 2, 0, 0, 0]])
    test = next(task.test_batches(2))
    assert_tagging_batch(task, test, 2)
    np.testing.assert_array_equal(test["inputs"], [[7, 1, 0, 0, 0, 0], [0] * 6])  # chien: unknown
    np.testing.assert_array_equal(test["targets"], [[1, 2, 0, 0, 0, 0], [0] * 6])
    np.testing.assert_array_equal(test["weights"].sum(axis=1), [2, 0])
    batch = task.train_batch(5, 2)
    assert_tagging_batch(task, batch, 2)
    assert_batches_equal(
        batch, create_task("tagging_file", **conllu_files, max_length=6).train_batch(5, 2)
    )
    rebuilt = create_task("tagging_file", **json.loads(json.dumps(task.options())))
    assert_batches_equal(rebuilt.train_batch(5, 2), batch)


def test_tagging_file_reads_another_conllu_field_lowercases_and_drops_rare_words(conllu_files):
    task = create_task(
        "tagging_file", **conllu_files, column="xpos", lowercase=True, min_word_count=2
    )
    assert task.labels == ["DA", "F", "NC", "P", "V"]
    assert task.words == ["<pad>", "<unk>", "le"]  # "Le" and "le", lowercased, twice
    np.testing.assert_array_equal(task._train_split["inputs"][:, :4], [[2, 1, 1, 1], [1, 2, 1, 0]])
    np.testing.assert_array_equal(next(task.test_batches(1))["inputs"][0, :3], [2, 1, 0])


def write_tsv(tmp_path, train, test):
    train_path, test_path = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train_path.write_text(train)
    test_path.write_text(test)
    return {"train_path": str(train_path), "test_path": str(test_path), "format": "tsv"}


def test_tagging_file_reads_tsv_sentences(tmp_path):
    files = write_tsv(
        tmp_path,
        "John\tB-PER\nlives\tO\n\n\nin\tO\nParis\tB-LOC\n.\tO\n",
        "Paris\tB-LOC\nsleeps\tO\n",
    )
    task = create_task("tagging_file", **files, max_length=4)
    assert task.column is None
    assert task.words == ["<pad>", "<unk>", "John", "lives", "in", "Paris", "."]
    assert task.labels == ["B-LOC", "B-PER", "O"]
    np.testing.assert_array_equal(task._train_split["inputs"], [[2, 3, 0, 0], [4, 5, 6, 0]])
    np.testing.assert_array_equal(task._train_split["targets"], [[1, 2, 0, 0], [2, 0, 2, 0]])
    test = next(task.test_batches(1))
    assert_tagging_batch(task, test, 1)
    np.testing.assert_array_equal(test["inputs"], [[5, 1, 0, 0]])
    np.testing.assert_array_equal(test["targets"], [[0, 2, 0, 0]])


def test_tagging_file_tsv_with_more_columns_takes_the_first_and_the_last(tmp_path):
    files = write_tsv(tmp_path, "EU\tNNP\tB-ORG\nrejects\tVBZ\tO\n", "EU\tNNP\tB-ORG\n")
    task = create_task("tagging_file", **files)
    assert (task.words[2:], task.labels) == (["EU", "rejects"], ["B-ORG", "O"])


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("a\tX\nb\n", "train.tsv' line 2: expected 2 tab-separated columns as on line 1, got 1"),
        ("a\tX\n\nb\tY\tZ\n", "train.tsv' line 3: expected 2 tab-separated columns"),
        ("a\n", "train.tsv' line 1: expected tab-separated columns 'word<TAB>tag'"),
        ("a\tX\n\tY\n", "train.tsv' line 2: empty word or tag"),
        (
            "a\tX\nb\tX\nc\tX\n\nd\tX\n",
            "train.tsv' line 1: a sentence of 3 words exceeds max_length=2",
        ),
        ("\n\n", "train.tsv' has no sentences"),
        ("", "train.tsv' is empty"),
    ],
)
def test_tagging_file_bad_tsv_lines_are_named(tmp_path, train, message):
    files = write_tsv(tmp_path, train, "a\tX\n")
    with pytest.raises(ValueError, match=re.escape(message)):
        create_task("tagging_file", **files, max_length=2)


def test_tagging_file_unseen_test_label_is_named(tmp_path):
    files = write_tsv(tmp_path, "a\tX\nb\tY\n", "a\tX\n\nb\tX\nc\tZ\n")
    with pytest.raises(
        ValueError,
        match=re.escape("label 'Z' on line 4 of ")
        + ".*test.tsv.*"
        + "does not occur in the training file",
    ):
        create_task("tagging_file", **files)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "x\tLe\tle\tDET\t_\t_\t2\tdet\t_\t_",
            "line 3: Failed parsing field 'id': 'x' is not a valid ID",
        ),
        ("2\tLe\tle\tDET\t_\t_\thead\tdet\t_\t_", "line 3: Failed parsing field 'head'"),
        ("2\tLe\tle\tDET", "line 3: a CoNLL-U word line has 10 tab-separated fields, got 4"),
    ],
)
def test_tagging_file_conllu_parse_errors_name_the_line(tmp_path, conllu_files, line, message):
    bad = tmp_path / "bad.conllu"
    bad.write_text(f"# a comment\n1\tLe\tle\tDET\t_\t_\t0\troot\t_\t_\n{line}\n")
    with pytest.raises(ValueError, match=re.escape(f"bad.conllu' {message}")):
        create_task("tagging_file", train_path=str(bad), test_path=conllu_files["test_path"])


def test_tagging_file_missing_and_empty_files_are_named(tmp_path, conllu_files):
    missing, comments = tmp_path / "missing.conllu", tmp_path / "comments.conllu"
    comments.write_text("# only a comment\n\n")
    cases = [
        ({"test_path": str(missing)}, f"file {str(missing)!r} does not exist"),
        ({"train_path": str(comments)}, f"{str(comments)!r} has no sentences"),
        ({"train_path": str(tmp_path)}, "is a directory"),
    ]
    for options, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            create_task("tagging_file", **{**conllu_files, **options})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "csv"}, "option 'format' must be one of conllu, tsv, got 'csv'"),
        ({"column": "tag"}, "option 'column' must be a CoNLL-U field"),
        ({"format": "tsv", "column": "upos"}, "option 'column' is for format 'conllu'"),
        ({"max_length": 0}, "option 'max_length' must be an integer >= 1"),
        ({"lowercase": "yes"}, "option 'lowercase' must be True or False"),
        ({"min_word_count": 0}, "option 'min_word_count' must be an integer >= 1"),
        ({"train_path": 3}, "option 'train_path' must be a file path"),
    ],
)
def test_tagging_file_bad_options_are_named(conllu_files, options, message):
    with pytest.raises(ValueError, match=re.escape(f"tagging_file: {message}")):
        create_task("tagging_file", **{**conllu_files, **options})
