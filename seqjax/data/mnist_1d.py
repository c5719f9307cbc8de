"""MNIST-1D sequence classification, from Greydanus & Kobak 2024, "Scaling Down Deep Learning
with MNIST-1D".

Each example is a 1-D signal of 40 steps made from one of ten digit templates by padding,
scaling, translation, correlated and i.i.d. noise and shear; the class is the digit. The
``mnist1d`` package generates the data from a seed (its generator, never its downloader): with
the defaults, 5000 signals, the first 80% for training and the last 1000 for testing, the
standard split of the paper. Inputs are real-valued features [N, 40, 1] (the model projects
them); the target is the digit at the last position, the only position with weight 1, so a
per-position head read there is a classifier over the whole signal.
"""

from __future__ import annotations

import functools
import random
from functools import cached_property

import numpy as np

from seqjax.data.base import ArrayTask, Batch, check_int, label_at_last_position, register_task

TRAIN_FRACTION = 0.8
SIGNAL_LENGTH = 40


@functools.lru_cache(maxsize=4)
def make_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """The MNIST-1D dataset of ``num_samples`` signals from ``seed``: ``x`` [N_train, 40] and
    ``y`` [N_train] for training, ``x_test`` and ``y_test`` for testing (the last 20%). The
    arrays are read-only, since calls with the same arguments share them."""
    from mnist1d.data import get_dataset_args, make_dataset

    arguments = get_dataset_args()
    arguments.num_samples, arguments.seed = num_samples, seed
    arguments.train_split, arguments.final_seq_length = TRAIN_FRACTION, SIGNAL_LENGTH
    # make_dataset seeds the global NumPy and Python generators; leave them as they were.
    numpy_state, python_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        dataset = make_dataset(arguments)
    finally:
        np.random.set_state(numpy_state)  # noqa: NPY002
        random.setstate(python_state)
    splits = {key: np.asarray(dataset[key]) for key in ("x", "y", "x_test", "y_test")}
    for array in splits.values():
        array.setflags(write=False)
    return splits


@register_task
class Mnist1D(ArrayTask):
    """Classify a 40-step MNIST-1D signal into its digit (10 classes)."""

    name = "mnist1d"
    kind = "classification"
    heads = ("token", "pooled")  # the class at the last position, or pooled over time
    vocab_size = 10
    input_dim = 1

    def __init__(self, *, num_samples: int = 5000, seed: int = 42):
        self.num_samples = check_int("mnist1d: option 'num_samples'", num_samples, minimum=10)
        self.seed = check_int("mnist1d: option 'seed'", seed, minimum=0)
        self.seq_len = SIGNAL_LENGTH

    @cached_property
    def _dataset(self) -> dict[str, np.ndarray]:
        return make_mnist1d(self.num_samples, self.seed)

    @cached_property
    def _train_split(self) -> Batch:
        return label_at_last_position(
            self._dataset["x"][..., None].astype(np.float32), self._dataset["y"]
        )

    @cached_property
    def _test_split(self) -> Batch:
        return label_at_last_position(
            self._dataset["x_test"][..., None].astype(np.float32), self._dataset["y_test"]
        )
