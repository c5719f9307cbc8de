"""Definitions of the benchmark tasks, checked against independent computations: the Chomsky
tasks, word problems, induction heads, their test splits per length, MNIST-1D, the sktime
time series and the TFDS text task."""

import itertools
import random
import re
import sys

import numpy as np
import pytest

from seqjax.data import create_task
from seqjax.data.chomsky import BLANK, FIRST_SYMBOL
from seqjax.data.state_tracking import multiplication_table

SMALL = {"num_train_examples": 200, "num_test_examples": 50}


def examples(task, length=None):
    """(input symbols, outputs, counted) of each example: of the training split, or of the
    test split of ``length``."""
    batch = (
        task.train_batch(0, 200)
        if length is None
        else next(task.at_length(length).test_batches(50))
    )
    for inputs, targets, weights in zip(
        batch["inputs"], batch["targets"], batch["weights"], strict=True
    ):
        output_steps = np.flatnonzero(inputs == BLANK)
        yield inputs[: output_steps[0]] - FIRST_SYMBOL, targets[output_steps], weights[output_steps]


@pytest.mark.parametrize(
    ("name", "options", "symbols", "outputs"),
    [
        ("parity_check", {}, [0, 1, 1, 0, 1], [1]),
        ("parity_check", {}, [1, 1], [0]),
        ("even_pairs", {}, [0, 0, 1, 1, 1, 0], [0]),
        ("even_pairs", {}, [0, 1, 0, 1, 0, 0, 1], [1]),
        ("cycle_navigation", {}, [2, 0, 1, 0, 0], [3]),
        ("cycle_navigation", {"cycle_length": 3}, [2, 2, 2, 2], [1]),
        ("modular_arithmetic", {}, [1, 6, 1, 6, 1], [4]),  # 1 - 1 - 1 = -1
        ("modular_arithmetic", {}, [1, 5, 2, 7, 3], [2]),  # 1 + 2 * 3 = 7
        ("modular_arithmetic", {}, [0, 7, 1, 5, 4, 7, 3, 6, 2], [0]),  # 0*1 + 4*3 - 2 = 10
        ("reverse_string", {}, [0, 1, 1], [1, 1, 0]),
        ("duplicate_string", {}, [0, 1, 1], [0, 1, 1, 0, 1, 1]),
        ("bucket_sort", {}, [1, 0, 2, 0, 4, 1, 1, 2], [0, 0, 1, 1, 1, 2, 2, 4]),
        ("stack_manipulation", {}, [0, 1, 1, 0, 4, 2, 2], [1, 1, 0, 2, 0, 0, 0, 0]),
        ("stack_manipulation", {}, [1, 1, 0, 2, 2, 2], [2, 0, 0, 0, 0, 0, 0]),
        ("stack_manipulation", {}, [1, 2, 2, 3], [0, 2, 0, 0, 0]),  # POP on empty is ignored
    ],
)
def test_chomsky_tasks_solve_the_papers_examples(name, options, symbols, outputs):
    task = create_task(name, **SMALL, **options)
    solved, counted = task.solve(np.array([symbols]))
    np.testing.assert_array_equal(solved[0], outputs)
    assert counted is None or counted[0].sum() == outputs.index(2) + 1


def evaluate_expression(symbols, modulus):
    text = "".join(str(s) if s < modulus else "+-*"[s - modulus] for s in symbols)
    return eval(text) % modulus  # Python's precedence: * before + and -


def run_stack(symbols):
    stack = []
    for symbol in symbols:
        if symbol == 2:
            stack = stack[:-1]
        else:
            stack.append(symbol - 3 if symbol >= 3 else symbol)
    return stack[::-1]


INDEPENDENT_ANSWERS = {
    "parity_check": lambda s: [sum(s) % 2],
    "even_pairs": lambda s: [int(s[0] != s[-1])],
    "cycle_navigation": lambda s: [sum(int(a) - 1 for a in s) % 5],
    "modular_arithmetic": lambda s: [evaluate_expression(s, 5)],
    "reverse_string": lambda s: list(s[::-1]),
    "duplicate_string": lambda s: list(s) * 2,
    "bucket_sort": lambda s: sorted(s),
    "stack_manipulation": lambda s: run_stack(s) + [2],
}


@pytest.mark.parametrize("name", INDEPENDENT_ANSWERS)
def test_chomsky_outputs_match_an_independent_solver_at_every_length(name):
    task = create_task(name, **SMALL, max_train_length=12, test_lengths=(12, 31))
    for length in [None, 31]:
        seen_lengths = set()
        for symbols, outputs, counted in examples(task, length):
            answer = INDEPENDENT_ANSWERS[name](symbols)
            np.testing.assert_array_equal(outputs[counted == 1], answer)
            assert counted.sum() == len(answer)
            assert len(outputs) == task.output_length(len(symbols))
            seen_lengths.add(len(symbols))
        if length is None:
            assert min(seen_lengths) >= 1 and max(seen_lengths) <= 12
            assert len(seen_lengths) > 5  # lengths vary over the training split
        else:
            assert seen_lengths == {task.input_length(31)}


def test_length_splits_are_fixed_exact_and_beyond_the_training_lengths():
    task = create_task("reverse_string", **SMALL, max_train_length=10, test_lengths=(10, 20))
    assert task.seq_len == 20
    split = task.at_length(20)
    assert split.seq_len == 40
    batch = next(split.test_batches(50))
    assert (batch["inputs"][:, :20] >= FIRST_SYMBOL).all() and (
        batch["inputs"][:, 20:] == BLANK
    ).all()
    again = next(
        create_task("reverse_string", **{**SMALL, "num_train_examples": 7}, max_train_length=10)
        .at_length(20)
        .test_batches(50)
    )
    np.testing.assert_array_equal(batch["inputs"], again["inputs"])
    other_seed = next(create_task("reverse_string", **SMALL, seed=1).at_length(20).test_batches(50))
    assert not np.array_equal(batch["inputs"], other_seed["inputs"])
    with pytest.raises(ValueError, match="no training batches"):
        split.train_batch(0, 4)


def compose(first, then):
    return tuple(then[i] for i in first)


@pytest.mark.parametrize(
    ("group", "order"), [("S5", 120), ("A5", 60), ("S3", 6), ("Z2", 2), ("Z7", 7)]
)
def test_word_problem_targets_are_running_products(group, order):
    task = create_task(
        "word_problem",
        group=group,
        **SMALL,
        min_train_length=16,
        max_train_length=16,
        test_lengths=(33,),
    )
    assert task.vocab_size == order
    if group[0] == "Z":
        elements = [(k,) for k in range(order)]
    else:
        elements = sorted(itertools.permutations(range(int(group[1:]))))
        if group[0] == "A":  # even permutations: an even number of inversions
            elements = [
                p for p in elements if sum(a > b for a, b in itertools.combinations(p, 2)) % 2 == 0
            ]
    assert len(elements) == order and elements[0] == tuple(range(len(elements[0])))
    for batch in [task.train_batch(0, 8), next(task.at_length(33).test_batches(8))]:
        assert (batch["weights"] == 1).all()
        for inputs, targets in zip(batch["inputs"], batch["targets"], strict=True):
            product = elements[0]
            for element, target in zip(inputs, targets, strict=True):
                if group[0] == "Z":
                    product = ((product[0] + int(element)) % order,)
                else:
                    product = compose(product, elements[element])  # apply the earlier first
                assert elements[target] == product


def test_permutation_tables_are_groups():
    for group in ["S4", "A5"]:
        table = multiplication_table(group)
        np.testing.assert_array_equal(table[0], np.arange(len(table)))  # 0 is the identity
        for row in table:  # every element has an inverse: rows are permutations
            assert sorted(row) == list(range(len(table)))
        a, b, c = np.random.default_rng(0).integers(0, len(table), size=(3, 50))
        np.testing.assert_array_equal(table[table[a, b], c], table[a, table[b, c]])


def test_induction_heads_answer_is_the_token_after_the_trigger():
    task = create_task(
        "induction_heads", **SMALL, min_train_length=6, max_train_length=20, test_lengths=(40,)
    )
    for batch in [task.train_batch(1, 32), next(task.at_length(40).test_batches(32))]:
        for inputs, targets, weights in zip(
            batch["inputs"], batch["targets"], batch["weights"], strict=True
        ):
            (answer_position,) = np.flatnonzero(weights)
            triggers = np.flatnonzero(inputs == 1)
            assert len(triggers) == 2 and triggers[1] == answer_position
            assert targets[answer_position] == inputs[triggers[0] + 1] >= 2
            assert (inputs[answer_position + 1 :] == 0).all()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("parity_check", {"test_lengths": "64"}, "'test_lengths' must be a sequence"),
        ("parity_check", {"test_lengths": (64, 0)}, "'test_lengths' entry must be an integer >= 1"),
        (
            "parity_check",
            {"min_train_length": 5, "max_train_length": 4},
            "'max_train_length' (at least min_train_length) must be an integer >= 5",
        ),
        (
            "modular_arithmetic",
            {"operators": "+/"},
            "'operators' must be distinct characters of '+-*'",
        ),
        ("cycle_navigation", {"cycle_length": 1}, "'cycle_length' must be an integer >= 2"),
        ("word_problem", {"group": "Q8"}, "'group' must be Z<m>, S<n> or A<n>"),
        ("word_problem", {"group": "S9"}, "S<n> needs 2 <= n <= 6"),
        ("induction_heads", {"min_train_length": 1}, "'min_train_length' must be an integer >= 2"),
        ("time_series_classification", {"dataset": "Beef"}, "'dataset' must be one of GunPoint"),
        ("tfds_text", {"dataset": ""}, "'dataset' must be a non-empty string"),
    ],
)
def test_bad_benchmark_options_are_named(name, options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        create_task(name, **options)


def test_mnist1d_is_the_generated_standard_split_and_leaves_global_seeds_alone():
    np_state, py_state = np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002
    task = create_task("mnist1d", num_samples=200)
    train = task.train_batch(0, 160)
    assert (task.num_train_examples, task.num_test_examples) == (160, 40)
    assert train["inputs"].shape == (160, 40, 1) and train["inputs"].dtype == np.float32
    assert (train["weights"][:, :-1] == 0).all() and (train["weights"][:, -1] == 1).all()
    assert sorted(set(train["targets"][:, -1])) == list(range(10))
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert random.getstate() == py_state
    from mnist1d.data import get_dataset_args, make_dataset

    arguments = get_dataset_args()
    arguments.num_samples = 200
    reference = make_dataset(arguments)
    test = next(task.test_batches(40))
    np.testing.assert_allclose(test["inputs"][..., 0], reference["x_test"], rtol=1e-6)
    np.testing.assert_array_equal(test["targets"][:, -1], reference["y_test"])


def test_time_series_loads_gunpoint_from_the_sktime_wheel():
    task = create_task("time_series_classification", dataset="GunPoint")
    assert (task.num_train_examples, task.num_test_examples) == (50, 150)
    assert (task.seq_len, task.input_dim, task.vocab_size, task.classes) == (150, 1, 2, ["1", "2"])
    train = task.train_batch(0, 50)
    assert abs(train["inputs"].mean()) < 1e-4 and abs(train["inputs"].std() - 1) < 1e-3
    test = next(task.test_batches(150))
    assert np.bincount(test["targets"][:, -1]).tolist() == [76, 74]
    assert (test["weights"].sum(axis=1) == 1).all()


def test_tfds_text_reads_the_records_without_tensorflow(tfds_dataset):
    import tensorflow_datasets as tfds

    sources = tfds.data_source(tfds_dataset["dataset"], data_dir=tfds_dataset["data_dir"])
    records = {split: [r["text"] for r in sources[split]] for split in ("train", "test")}
    task = create_task("tfds_text", **tfds_dataset, seq_len=8, num_test_examples=10)
    assert task.num_test_examples == 4  # the test split has 4 records
    train = task.train_batch(0, 16)
    train_bytes = b"\n".join(records["train"])
    for inputs, targets, weights in zip(
        train["inputs"], train["targets"], train["weights"], strict=True
    ):
        counted = int(weights.sum())
        assert (weights[:counted] == 1).all() and counted > 0
        window = bytes(inputs[:counted].astype(np.uint8)) + bytes([targets[counted - 1]])
        assert window in train_bytes
    test = next(task.test_batches(4))
    for row, text in enumerate(records["test"]):
        counted = int(test["weights"][row].sum())
        assert counted == min(len(text) - 1, 8)
        assert bytes(test["targets"][row, :counted].astype(np.uint8)) == text[1 : counted + 1]
    assert "tensorflow" not in sys.modules
    with pytest.raises(ValueError, match="cannot open the prepared dataset 'missing_set'"):
        create_task("tfds_text", dataset="missing_set", data_dir=tfds_dataset["data_dir"])
