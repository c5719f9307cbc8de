"""Tests for seqjax.data.ctc: strings of MNIST-1D digit signals with their digit sequences."""

import json
import re

import numpy as np
import pytest

from seqjax.data import create_task
from seqjax.data.mnist_1d import make_mnist1d

# 400 training and 100 test signals: fast to generate, and shared by every test here
OPTIONS = {"num_signals": 500, "num_train_examples": 64, "num_test_examples": 10}


def assert_ctc_batch(task, batch, batch_size):
    """The "ctc" batch of the base.py docstring: features with a frame mask, label ids with a
    label mask, each right-padded."""
    assert set(batch) == {"inputs", "mask", "targets", "target_mask"}
    num_frames, num_labels = task.seq_len, task.max_digits
    for key, dtype, shape in [
        ("inputs", np.float32, (batch_size, num_frames, task.input_dim)),
        ("mask", np.bool_, (batch_size, num_frames)),
        ("targets", np.int32, (batch_size, num_labels)),
        ("target_mask", np.bool_, (batch_size, num_labels)),
    ]:
        assert batch[key].shape == shape, key
        assert batch[key].dtype == dtype, key
    num_digits = batch["target_mask"].sum(axis=1)
    np.testing.assert_array_equal(batch["target_mask"], np.arange(num_labels) < num_digits[:, None])
    np.testing.assert_array_equal(batch["mask"], np.arange(num_frames) < 40 * num_digits[:, None])
    assert (batch["inputs"][~batch["mask"]] == 0).all()
    labels = batch["targets"][batch["target_mask"]]
    assert ((1 <= labels) & (labels < task.vocab_size)).all()
    assert (batch["targets"][~batch["target_mask"]] == 0).all()


def assert_batches_equal(batch, other):
    assert batch.keys() == other.keys()
    for key in batch:
        np.testing.assert_array_equal(batch[key], other[key], err_msg=key)


def test_digit_strings_are_deterministic_and_follow_the_format():
    task = create_task("mnist1d_digit_strings", **OPTIONS)
    assert (task.heads, task.kind, task.vocab_size, task.input_dim) == (("ctc",), "ctc", 11, 1)
    assert task.seq_len == 5 * 40
    batch = task.train_batch(1, 32)
    assert_ctc_batch(task, batch, 32)
    assert set(batch["target_mask"].sum(axis=1)) == {2, 3, 4, 5}
    assert_batches_equal(batch, create_task("mnist1d_digit_strings", **OPTIONS).train_batch(1, 32))
    reseeded = create_task("mnist1d_digit_strings", **OPTIONS, seed=1)
    assert not np.array_equal(batch["inputs"], reseeded.train_batch(1, 32)["inputs"])
    test = list(task.test_batches(4))
    for test_batch in test:
        assert_ctc_batch(task, test_batch, 4)
    assert not test[-1]["target_mask"][2:].any()  # 10 examples: the last batch pads 2 rows
    bigger = create_task("mnist1d_digit_strings", **{**OPTIONS, "num_train_examples": 200})
    assert_batches_equal(next(task.test_batches(10)), next(bigger.test_batches(10)))
    rebuilt = create_task("mnist1d_digit_strings", **json.loads(json.dumps(task.options())))
    assert_batches_equal(rebuilt.train_batch(1, 32), batch)


def signal_labels(signals, digits):
    return {
        signal.astype(np.float32).tobytes(): int(digit)
        for signal, digit in zip(signals, digits, strict=True)
    }


def pieces(batch):
    """(signal bytes, target id) of every digit of every string in the batch."""
    for inputs, targets, target_mask in zip(
        batch["inputs"], batch["targets"], batch["target_mask"], strict=True
    ):
        signals = inputs[:, 0].reshape(-1, 40)
        for signal, target in zip(signals[target_mask], targets[target_mask], strict=True):
            yield signal.tobytes(), int(target)


def test_train_strings_use_train_signals_and_test_strings_only_test_signals():
    task = create_task("mnist1d_digit_strings", **{**OPTIONS, "num_test_examples": 100})
    dataset = make_mnist1d(500, 42)
    train_signals = signal_labels(dataset["x"], dataset["y"])
    test_signals = signal_labels(dataset["x_test"], dataset["y_test"])
    assert len(train_signals) == 400 and len(test_signals) == 100
    assert not train_signals.keys() & test_signals.keys()
    for signal, target in pieces(task.train_batch(0, 64)):
        assert target == train_signals[signal] + 1
    used = set()
    for signal, target in pieces(next(task.test_batches(100))):
        assert target == test_signals[signal] + 1
        used.add(signal)
    assert len(used) > 50  # the strings draw on many of the test signals


def test_digit_counts_follow_the_options():
    task = create_task("mnist1d_digit_strings", **OPTIONS, min_digits=1, max_digits=2)
    batch = task.train_batch(0, 64)
    assert_ctc_batch(task, batch, 64)
    assert task.seq_len == 80 and set(batch["target_mask"].sum(axis=1)) == {1, 2}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"min_digits": 0}, "option 'min_digits' must be an integer >= 1"),
        ({"max_digits": 1}, "option 'max_digits' (at least min_digits) must be an integer >= 2"),
        ({"num_signals": 5}, "option 'num_signals' must be an integer >= 10"),
        ({"seed": "0"}, "option 'seed' must be an integer >= 0"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=re.escape(f"mnist1d_digit_strings: {message}")):
        create_task("mnist1d_digit_strings", **{**OPTIONS, **options})
