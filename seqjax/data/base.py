"""The task interface, the task registry, and the batching scheme shared by every task.

A batch is a dict of NumPy arrays. Every batch has ``inputs``: int32 token ids [B, T] (or
float32 features [B, T, F] for a task whose ``input_dim`` is F), and may have ``mask`` bool
[B, T], true at real positions, for rows of different lengths (right-padded; no mask: every
position is real). The rest depends on the head the task serves (``Task.heads``):

- ``"token"`` (an output class at every position) and ``"crf"`` (the same labels scored as a
  linear chain): ``targets`` int32 [B, T] and ``weights`` float32 [B, T], 1 where the loss
  and metrics count. A CRF scores whole rows, so its weights are 1 at every real position.
- ``"pooled"`` (one class per sequence): the classification form of ``label_at_last_position``,
  each row's class in ``targets`` at the one position of weight 1.
- ``"regression"``: float32 ``targets`` [B, T, output_dim] and ``weights`` [B, T].
- ``"ctc"``: label sequences ``targets`` int32 [B, L] of ids 1 .. vocab_size - 1 (0 is the
  blank, and the padding), ``target_mask`` bool [B, L].
- ``"seq2seq"``: ``inputs`` are source ids [B, S] (``mask`` their padding), ``decoder_inputs``
  int32 [B, T] the start token then the target shifted right, ``targets`` int32 [B, T] the
  target then the end token, ``weights`` float32 [B, T] 1 there.

Every training batch is a pure function of the task options and the step, so a run resumes
exactly; the held-out split is fixed.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import Any, ClassVar, TypeAlias

import numpy as np

Batch: TypeAlias = dict[str, np.ndarray]

_TASKS: dict[str, type[Task]] = {}

# Synthetic splits are generated this many examples at a time, which bounds the memory of the
# intermediate arrays. The random stream is consumed chunk by chunk, so changing this number
# changes the generated data.
_EXAMPLES_PER_CHUNK = 4096


class Task(abc.ABC):
    """A source of training batches and of a fixed held-out split.

    Subclasses take their options as keyword-only constructor arguments and keep each one in an
    attribute of the same name, which is what ``options()`` reads back.
    """

    name: ClassVar[str]  # registry name
    kind: ClassVar[str]  # "lm" (report bits per byte) or "synthetic"
    heads: ClassVar[tuple[str, ...]] = ("token",)  # the heads its batches serve; [0] default
    vocab_size: int  # input vocabulary and number of output classes
    seq_len: int  # T of every batch
    input_dim: int | None = None  # F of real-valued inputs [B, T, F]; None for token ids

    @abc.abstractmethod
    def train_batch(
        self, step: int, batch_size: int, *, shard_index: int = 0, num_shards: int = 1
    ) -> Batch:
        """Rows of the global training batch for ``step`` that belong to ``shard_index``.

        ``batch_size`` is the global batch size; shard ``i`` of ``n`` gets the ``i``-th of ``n``
        contiguous, equal blocks of rows, so the shards concatenate back to the global batch.
        """

    @abc.abstractmethod
    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        """The held-out split in a fixed order, every example once; the last batch is padded
        to ``batch_size`` with rows whose weights are all 0."""

    @property
    @abc.abstractmethod
    def num_test_examples(self) -> int:
        """Number of held-out examples (rows) that ``test_batches`` yields, padding excluded."""

    def options(self) -> dict[str, Any]:
        """The constructor options: ``create_task(task.name, **task.options())`` rebuilds it."""
        return {option: getattr(self, option) for option in _option_names(type(self))}


def register_task(task_class: type[Task]) -> type[Task]:
    """Class decorator that makes a task available to ``create_task`` under its ``name``."""
    if task_class.name in _TASKS:
        raise ValueError(f"a task named {task_class.name!r} is already registered")
    _TASKS[task_class.name] = task_class
    return task_class


def available_tasks() -> list[str]:
    """Names accepted by ``create_task``, sorted."""
    return sorted(_TASKS)


def create_task(name: str, **options: Any) -> Task:
    """Builds the task registered as ``name`` from its keyword options."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(available_tasks())}")
    task_class = _TASKS[name]
    valid_options = _option_names(task_class)
    unknown = [option for option in options if option not in valid_options]
    if unknown:
        raise ValueError(
            f"{name}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(valid_options)}"
        )
    parameters = _keyword_parameters(task_class)
    missing = [
        option
        for option in valid_options
        if parameters[option].default is inspect.Parameter.empty and option not in options
    ]
    if missing:
        raise ValueError(f"{name}: missing required option(s) {', '.join(map(repr, missing))}")
    return task_class(**options)


def default_options(name: str) -> dict[str, Any]:
    """The options of the task registered as ``name`` that have defaults, with those defaults."""
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; available tasks: {', '.join(available_tasks())}")
    parameters = _keyword_parameters(_TASKS[name])
    return {
        option: parameters[option].default
        for option in _option_names(_TASKS[name])
        if parameters[option].default is not inspect.Parameter.empty
    }


def _option_names(task_class: type[Task]) -> list[str]:
    return list(_keyword_parameters(task_class))


def _keyword_parameters(task_class: type) -> dict[str, inspect.Parameter]:
    """The keyword-only parameters of ``task_class.__init__``; an ``__init__`` that also takes
    ``**options`` passes them to its parent class's, whose options follow its own."""
    index, owner = next(
        (index, owner)
        for index, owner in enumerate(task_class.__mro__)
        if "__init__" in vars(owner)
    )
    parameters = inspect.signature(owner.__init__).parameters
    options = {
        name: param for name, param in parameters.items() if param.kind is param.KEYWORD_ONLY
    }
    if any(param.kind is param.VAR_KEYWORD for param in parameters.values()):
        return {**options, **_keyword_parameters(task_class.__mro__[index + 1])}
    return options


def check_int(label: str, value: Any, *, minimum: int) -> int:
    """``value`` as an int, or a ValueError saying that ``label`` must be an integer >= minimum."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(f"{label} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{label} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_float(
    label: str, value: Any, *, minimum: float = -math.inf, below: float = math.inf
) -> float:
    """``value`` as a finite float in [minimum, below), or a ValueError naming ``label``."""
    if math.isinf(minimum) and math.isinf(below):
        expected = "a finite number"
    else:
        expected = f"a number in [{minimum}, {below})"
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{label} must be {expected}, got {value!r}")
    if not (math.isfinite(value) and minimum <= value < below):
        raise ValueError(f"{label} must be {expected}, got {value}")
    return float(value)


def check_bool(label: str, value: Any) -> bool:
    """``value`` as a bool, or a ValueError naming ``label``."""
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{label} must be True or False, got {value!r}")
    return bool(value)


def shard_rows(batch_size: int, shard_index: int, num_shards: int) -> slice:
    """The rows of a global batch of ``batch_size`` that shard ``shard_index`` holds."""
    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_shards = check_int("num_shards", num_shards, minimum=1)
    shard_index = check_int("shard_index", shard_index, minimum=0)
    if shard_index >= num_shards:
        raise ValueError(f"shard_index must be < num_shards={num_shards}, got {shard_index}")
    if batch_size % num_shards:
        raise ValueError(
            f"the global batch_size={batch_size} must be divisible by num_shards={num_shards}"
        )
    rows_per_shard = batch_size // num_shards
    return slice(shard_index * rows_per_shard, (shard_index + 1) * rows_per_shard)


BATCH_DTYPES = {
    "targets": np.int32,
    "weights": np.float32,
    "mask": np.bool_,
    "target_mask": np.bool_,
    "decoder_inputs": np.int32,
}


def as_batch(**arrays: np.ndarray) -> Batch:
    """A batch with the interface dtypes (module docstring): int32 ids (float32 features),
    int32 targets (float32 regression targets), float32 weights, bool masks."""
    unknown = sorted(set(arrays) - {"inputs", *BATCH_DTYPES})
    if unknown:
        raise ValueError(f"unknown batch array(s) {', '.join(unknown)}")

    def dtype(name, array):
        if name in ("inputs", "targets") and np.issubdtype(array.dtype, np.floating):
            return np.float32
        return np.int32 if name == "inputs" else BATCH_DTYPES[name]

    return {name: array.astype(dtype(name, array)) for name, array in arrays.items()}


def label_at_last_position(inputs: np.ndarray, labels: np.ndarray) -> Batch:
    """A whole-sequence classification split: ``labels`` [N] as the targets at the last
    position, the only position with weight 1."""
    num_examples, length = inputs.shape[:2]
    targets = np.zeros((num_examples, length), np.int32)
    targets[:, -1] = labels
    weights = np.zeros((num_examples, length), bool)
    weights[:, -1] = True
    return {"inputs": inputs, "targets": targets, "weights": weights}


def padded_batches(
    num_examples: int, batch_size: int, take_examples: Callable[[int, int], Batch]
) -> Iterator[Batch]:
    """Batches of ``take_examples(start, stop)`` over ``range(num_examples)``; the last one is
    padded with rows of token 0 and weight 0."""
    batch_size = check_int("batch_size", batch_size, minimum=1)

    def batches() -> Iterator[Batch]:
        for start in range(0, num_examples, batch_size):
            batch = take_examples(start, min(start + batch_size, num_examples))
            num_padding = batch_size - len(batch["inputs"])
            yield {
                key: np.pad(array, [(0, num_padding)] + [(0, 0)] * (array.ndim - 1))
                for key, array in batch.items()
            }

    return batches()


def compact_id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds every id below ``vocab_size``."""
    return np.min_scalar_type(vocab_size - 1)


def sample_without_replacement(
    rng: np.random.Generator, population_size: int, subset_size: int, num_rows: int
) -> np.ndarray:
    """[num_rows, subset_size] ints in [0, population_size), distinct within a row.

    Each row is a uniformly random ordered subset: a partial Fisher-Yates shuffle, run on all
    rows at once, so the cost is one vectorized swap per drawn element rather than a loop over
    rows.
    """
    picks = rng.integers(np.arange(subset_size), population_size, size=(num_rows, subset_size))
    pool = np.tile(np.arange(population_size, dtype=np.int32), (num_rows, 1))
    rows = np.arange(num_rows)
    for position in range(subset_size):
        picked = pool[rows, picks[:, position]]
        pool[rows, picks[:, position]] = pool[:, position]
        pool[:, position] = picked
    return pool[:, :subset_size]


class ArrayTask(Task):
    """A task whose train and test splits are arrays held in memory (``_train_split`` and
    ``_test_split``, dicts of arrays with one row per example).

    Training batches walk epoch-wise permutations: step ``s`` with batch size B takes rows
    ``[i*B, (i+1)*B)`` of ``default_rng((seed, 2, epoch)).permutation(num_train_examples)``,
    where ``epoch, i = divmod(s, num_train_examples // B)``.
    """

    seed: int
    _train_split: Batch
    _test_split: Batch

    @property
    def num_train_examples(self) -> int:
        return len(self._train_split["targets"])

    @property
    def num_test_examples(self) -> int:
        return len(self._test_split["targets"])

    def train_batch(
        self, step: int, batch_size: int, *, shard_index: int = 0, num_shards: int = 1
    ) -> Batch:
        step = check_int("step", step, minimum=0)
        rows = shard_rows(batch_size, shard_index, num_shards)
        if batch_size > self.num_train_examples:
            option = "num_train_examples"
            hint = f" (option {option!r})" if option in _option_names(type(self)) else ""
            raise ValueError(
                f"batch_size={batch_size} exceeds the {self.num_train_examples} training examples"
                f" of this {self.name} task{hint}"
            )
        epoch, index_in_epoch = divmod(step, self.num_train_examples // batch_size)
        order = np.random.default_rng((self.seed, 2, epoch)).permutation(self.num_train_examples)
        examples = order[index_in_epoch * batch_size : (index_in_epoch + 1) * batch_size][rows]
        return as_batch(**{key: array[examples] for key, array in self._train_split.items()})

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        def take_examples(start: int, stop: int) -> Batch:
            return as_batch(**{key: array[start:stop] for key, array in self._test_split.items()})

        return padded_batches(self.num_test_examples, batch_size, take_examples)


class SyntheticTask(ArrayTask):
    """An array task whose train and test splits are generated once from the seed.

    The train split comes from ``default_rng((seed, 0))`` and the test split from
    ``default_rng((seed, 1))``, so the test split does not depend on the train size.
    """

    kind = "synthetic"

    def __init__(self, *, num_train_examples: int, num_test_examples: int, seed: int):
        self._num_train_examples = check_int(
            f"{self.name}: option 'num_train_examples'", num_train_examples, minimum=1
        )
        self._num_test_examples = check_int(
            f"{self.name}: option 'num_test_examples'", num_test_examples, minimum=1
        )
        self.seed = check_int(f"{self.name}: option 'seed'", seed, minimum=0)

    @property
    def num_train_examples(self) -> int:
        return self._num_train_examples

    @property
    def num_test_examples(self) -> int:
        return self._num_test_examples

    @abc.abstractmethod
    def generate(self, rng: np.random.Generator, num_examples: int) -> Batch:
        """``num_examples`` fresh examples drawn from ``rng``, as a batch; any integer dtype for
        the ids and bool weights are fine (they are stored compactly and cast per batch)."""

    def _generate_split(self, rng: np.random.Generator, num_examples: int) -> Batch:
        chunks = [
            self.generate(rng, min(_EXAMPLES_PER_CHUNK, num_examples - start))
            for start in range(0, num_examples, _EXAMPLES_PER_CHUNK)
        ]
        return {key: np.concatenate([chunk[key] for chunk in chunks]) for key in chunks[0]}

    @cached_property
    def _train_split(self) -> Batch:
        return self._generate_split(np.random.default_rng((self.seed, 0)), self.num_train_examples)

    @cached_property
    def _test_split(self) -> Batch:
        return self._generate_split(np.random.default_rng((self.seed, 1)), self.num_test_examples)
