"""Tests for seqjax.data: each task's definition, determinism, splits, sharding and errors."""

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqjax.data import Task, available_tasks, create_task

SMALL_SPLITS = {"num_train_examples": 64, "num_test_examples": 10}
TEXT_LEN = 2000


def write_text_file(path, length=TEXT_LEN, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, size=length, dtype=np.uint8)
    data[:256] = np.arange(256)  # every byte value, high bytes included
    path.write_bytes(data.tobytes())
    return data


def small_task(name: str, tmp_path, **options) -> Task:
    if name == "text":
        path = tmp_path / "corpus.bin"
        if not path.exists():
            write_text_file(path)
        return create_task("text", path=str(path), seq_len=16, test_fraction=0.1, **options)
    return create_task(name, **SMALL_SPLITS, **options)


def concatenate(batches):
    batches = list(batches)
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def rows(batch):
    return zip(batch["inputs"], batch["targets"], batch["weights"], strict=True)


def assert_batches_equal(batch, other):
    assert batch.keys() == other.keys()
    for key in batch:
        np.testing.assert_array_equal(batch[key], other[key], err_msg=key)


def assert_valid_batch(task, batch, batch_size):
    assert set(batch) == {"inputs", "targets", "weights"}
    for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("weights", np.float32)]:
        assert batch[key].shape == (batch_size, task.seq_len)
        assert batch[key].dtype == dtype
    for key in ["inputs", "targets"]:
        assert batch[key].min() >= 0 and batch[key].max() < task.vocab_size
    assert np.isin(batch["weights"], [0.0, 1.0]).all()


ALL_TASKS = ["mqar", "selective_copying", "text"]
SYNTHETIC_TASKS = ["mqar", "selective_copying"]


def test_registry_lists_every_task():
    assert available_tasks() == sorted(ALL_TASKS)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_train_batch_is_a_function_of_the_step(name, tmp_path):
    task = small_task(name, tmp_path)
    batch = task.train_batch(3, 8)
    assert_valid_batch(task, batch, 8)
    assert_batches_equal(batch, task.train_batch(3, 8))
    assert_batches_equal(batch, small_task(name, tmp_path).train_batch(3, 8))
    assert not np.array_equal(batch["inputs"], task.train_batch(4, 8)["inputs"])


@pytest.mark.parametrize("name", ALL_TASKS)
def test_seed_changes_the_data(name, tmp_path):
    task, reseeded = small_task(name, tmp_path), small_task(name, tmp_path, seed=1)
    assert not np.array_equal(
        task.train_batch(0, 8)["inputs"], reseeded.train_batch(0, 8)["inputs"]
    )
    if name != "text":  # the text test split is the file's tail whatever the seed
        test_inputs = next(task.test_batches(8))["inputs"]
        assert not np.array_equal(test_inputs, next(reseeded.test_batches(8))["inputs"])


@pytest.mark.parametrize("name", ALL_TASKS)
@pytest.mark.parametrize("num_shards", [2, 4])
def test_shards_concatenate_to_the_global_batch(name, num_shards, tmp_path):
    task = small_task(name, tmp_path)
    for step in [0, 9]:
        shards = [
            task.train_batch(step, 8, shard_index=index, num_shards=num_shards)
            for index in range(num_shards)
        ]
        assert_batches_equal(concatenate(shards), task.train_batch(step, 8))


@pytest.mark.parametrize("name", ALL_TASKS)
def test_bad_batching_arguments_are_rejected(name, tmp_path):
    task = small_task(name, tmp_path)
    with pytest.raises(ValueError, match="divisible by num_shards=4"):
        task.train_batch(0, 6, num_shards=4)
    with pytest.raises(ValueError, match="shard_index"):
        task.train_batch(0, 8, shard_index=4, num_shards=4)
    with pytest.raises(ValueError, match="step"):
        task.train_batch(-1, 8)
    with pytest.raises(ValueError, match="batch_size"):
        task.test_batches(0)


@pytest.mark.parametrize("name", ALL_TASKS)
def test_test_batches_hold_every_example_once_then_padding(name, tmp_path):
    task = small_task(name, tmp_path)
    batch_size = 4
    batches = list(task.test_batches(batch_size))
    assert len(batches) == math.ceil(task.num_test_examples / batch_size)
    for batch in batches:
        assert_valid_batch(task, batch, batch_size)
    padded = concatenate(batches)
    real_rows = slice(0, task.num_test_examples)
    assert_batches_equal(
        {key: array[real_rows] for key, array in padded.items()},
        concatenate(task.test_batches(task.num_test_examples)),
    )
    assert (padded["weights"][real_rows].sum(axis=1) > 0).all()
    assert (padded["weights"][task.num_test_examples :] == 0).all()


@pytest.mark.parametrize("name", ALL_TASKS)
def test_options_rebuild_an_identical_task(name, tmp_path):
    task = small_task(name, tmp_path, seed=5)
    rebuilt = create_task(task.name, **json.loads(json.dumps(task.options())))
    assert rebuilt.options() == task.options()
    assert_batches_equal(rebuilt.train_batch(2, 4), task.train_batch(2, 4))
    assert_batches_equal(next(rebuilt.test_batches(4)), next(task.test_batches(4)))


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_test_split_does_not_depend_on_the_train_size(name):
    task = create_task(name, num_train_examples=20, num_test_examples=10)
    bigger = create_task(name, num_train_examples=500, num_test_examples=10)
    assert_batches_equal(next(task.test_batches(10)), next(bigger.test_batches(10)))


@pytest.mark.parametrize("name", SYNTHETIC_TASKS)
def test_each_epoch_visits_every_training_example_once(name):
    task = create_task(name, num_train_examples=12, num_test_examples=1)

    def epoch_rows(first_step):
        inputs = np.concatenate([task.train_batch(first_step + i, 4)["inputs"] for i in range(3)])
        return [tuple(row) for row in inputs]

    first, second = epoch_rows(0), epoch_rows(3)
    assert len(set(first)) == 12
    assert set(first) == set(second)
    assert first != second  # a new permutation each epoch
    with pytest.raises(ValueError, match="num_train_examples"):
        task.train_batch(0, 16)


@settings(max_examples=20, deadline=None)
@given(
    num_kv_pairs=st.integers(1, 6),
    extra_query_slots=st.integers(0, 6),
    extra_vocab=st.integers(0, 20),
    random_non_queries=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_mqar_every_query_recalls_its_value(
    num_kv_pairs, extra_query_slots, extra_vocab, random_non_queries, seed
):
    vocab_size = 2 * num_kv_pairs + 2 + extra_vocab
    task = create_task(
        "mqar",
        vocab_size=vocab_size,
        seq_len=4 * num_kv_pairs + 2 * extra_query_slots,
        num_kv_pairs=num_kv_pairs,
        num_train_examples=8,
        num_test_examples=8,
        seed=seed,
        random_non_queries=random_non_queries,
    )
    batch = task.train_batch(0, 8)
    assert_valid_batch(task, batch, 8)
    context_len, first_value = 2 * num_kv_pairs, vocab_size // 2
    for inputs, targets, weights in rows(batch):
        keys, values = inputs[0:context_len:2], inputs[1:context_len:2]
        assert len(set(keys)) == len(set(values)) == num_kv_pairs
        assert ((1 <= keys) & (keys < first_value)).all()
        assert ((first_value <= values) & (values < vocab_size)).all()

        query_positions = np.flatnonzero(weights)
        assert len(query_positions) == num_kv_pairs
        assert (query_positions >= context_len).all()
        assert ((query_positions - context_len) % 2 == 0).all()
        assert sorted(inputs[query_positions]) == sorted(keys)
        value_of_key = dict(zip(keys, values, strict=True))
        assert [value_of_key[key] for key in inputs[query_positions]] == list(
            targets[query_positions]
        )
        if not random_non_queries:
            filler = np.ones(task.seq_len, dtype=bool)
            filler[:context_len] = False
            filler[query_positions] = False
            assert (inputs[filler] == 0).all()


def query_gaps(task):
    weights = next(task.test_batches(task.num_test_examples))["weights"]
    return (np.nonzero(weights)[1] - 2 * task.num_kv_pairs) // 2


def test_mqar_single_query_gap_has_the_power_law_distribution():
    task = create_task(
        "mqar",
        seq_len=12,
        num_kv_pairs=1,
        power_a=0.5,
        num_train_examples=1,
        num_test_examples=2000,
    )
    expected = np.arange(1, 6) ** (0.5 - 1)
    expected /= expected.sum()
    observed = np.bincount(query_gaps(task), minlength=5) / 2000
    np.testing.assert_allclose(observed, expected, atol=0.04)


def test_mqar_queries_mostly_come_soon_after_the_pairs():
    options = {"num_train_examples": 1, "num_test_examples": 500}
    num_query_slots = (64 - 2 * 8) // 2
    uniform_mean_gap = (num_query_slots - 1) / 2
    assert np.median(query_gaps(create_task("mqar", **options))) < 0.6 * uniform_mean_gap
    uniform_gaps = query_gaps(create_task("mqar", power_a=1.0, **options))
    assert abs(np.median(uniform_gaps) - uniform_mean_gap) < 1.5


@settings(max_examples=20, deadline=None)
@given(
    vocab_size=st.integers(3, 20),
    num_tokens=st.integers(1, 6),
    extra_context=st.integers(0, 10),
    seed=st.integers(0, 2**16),
)
def test_selective_copying_targets_are_the_data_tokens_in_order(
    vocab_size, num_tokens, extra_context, seed
):
    context_len = num_tokens + extra_context
    task = create_task(
        "selective_copying",
        vocab_size=vocab_size,
        seq_len=context_len + num_tokens,
        num_tokens=num_tokens,
        num_train_examples=8,
        num_test_examples=8,
        seed=seed,
    )
    batch = task.train_batch(0, 8)
    assert_valid_batch(task, batch, 8)
    for inputs, targets, weights in rows(batch):
        context = inputs[:context_len]
        data_tokens = context[context != 0]
        assert len(data_tokens) == num_tokens
        assert (data_tokens >= 2).all()
        assert (inputs[context_len:] == 1).all()
        np.testing.assert_array_equal(np.flatnonzero(weights), np.arange(context_len, task.seq_len))
        np.testing.assert_array_equal(targets[context_len:], data_tokens)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mqar", {"seq_len": 63}, "'seq_len' must be even"),
        ("mqar", {"num_kv_pairs": 17}, "seq_len >= 68"),
        ("mqar", {"vocab_size": 17}, "vocab_size >= 18"),
        ("mqar", {"num_kv_pairs": True}, "'num_kv_pairs' must be an integer"),
        ("mqar", {"seed": -1}, "'seed' must be an integer >= 0"),
        ("mqar", {"power_a": "0.01"}, "'power_a' must be a finite number"),
        ("mqar", {"random_non_queries": 1}, "'random_non_queries' must be True or False"),
        ("mqar", {"num_test_examples": 0}, "'num_test_examples' must be an integer >= 1"),
        ("selective_copying", {"num_tokens": 33}, "seq_len >= 66"),
        ("selective_copying", {"vocab_size": 2}, "'vocab_size' must be an integer >= 3"),
    ],
)
def test_bad_option_values_are_named(name, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_task(name, **options)


def test_unknown_task_and_options_list_the_valid_ones():
    with pytest.raises(ValueError, match="available tasks: mqar, selective_copying, text"):
        create_task("copying")
    with pytest.raises(ValueError, match=r"'num_pairs'.*valid options: vocab_size, seq_len"):
        create_task("mqar", num_pairs=4)
    with pytest.raises(ValueError, match="missing required option.*'path'"):
        create_task("text")


def test_text_training_windows_are_shifted_slices_of_the_train_bytes(tmp_path):
    data = write_text_file(tmp_path / "corpus.bin")
    task = small_task("text", tmp_path)
    assert (task.kind, task.vocab_size) == ("lm", 256)
    train_bytes = data[: TEXT_LEN - 200].tobytes()  # test_fraction 0.1 of 2000 bytes
    for step in range(4):
        batch = task.train_batch(step, 32)
        assert (batch["weights"] == 1).all()
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
        windows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
        for window in windows.astype(np.uint8):
            assert window.tobytes() in train_bytes


def test_text_test_split_predicts_every_tail_byte_once(tmp_path):
    data = write_text_file(tmp_path / "corpus.bin")
    task = small_task("text", tmp_path)
    test_bytes = data[TEXT_LEN - 200 :]
    assert task.num_test_examples == math.ceil((200 - 1) / 16)
    batch = concatenate(task.test_batches(5))
    counted = batch["weights"] == 1
    assert counted.sum() == len(test_bytes) - 1  # the denominator of bits per byte
    np.testing.assert_array_equal(batch["targets"][counted], test_bytes[1:])
    np.testing.assert_array_equal(batch["inputs"][counted], test_bytes[:-1])
    last_row = batch["weights"][task.num_test_examples - 1]
    np.testing.assert_array_equal(last_row, np.arange(16) < (200 - 1) % 16)


@settings(max_examples=20, deadline=None)
@given(seq_len=st.integers(1, 40), test_fraction=st.floats(0.0, 0.9))
def test_text_needs_exactly_the_length_it_reports(seq_len, test_fraction, tmp_path_factory):
    path = tmp_path_factory.mktemp("short") / "corpus.bin"
    options = {"path": str(path), "seq_len": seq_len, "test_fraction": test_fraction}
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="needs at least") as error:
        create_task("text", **options)
    assert str(path) in str(error.value)
    needed = int(re.search(r"needs at least (\d+)", str(error.value)).group(1))

    path.write_bytes(b"x" * needed)
    task = create_task("text", **options)
    assert task.num_test_examples >= 1
    assert_valid_batch(task, task.train_batch(0, 2), 2)
    path.write_bytes(b"x" * (needed - 1))
    with pytest.raises(ValueError, match=f"needs at least {needed} "):
        create_task("text", **options)


def test_text_unreadable_paths_are_named(tmp_path):
    missing, empty = tmp_path / "missing.txt", tmp_path / "empty.txt"
    empty.write_bytes(b"")
    for path, message in [
        (missing, "does not exist"),
        (tmp_path, "is a directory"),
        (empty, "is empty"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            create_task("text", path=path)
        assert str(path) in str(error.value)


def test_text_options_keep_the_path_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_text_file(tmp_path / "corpus.bin")
    assert create_task("text", path="corpus.bin").options() == {
        "path": "corpus.bin",
        "seq_len": 256,
        "test_fraction": 0.05,
        "seed": 0,
    }
