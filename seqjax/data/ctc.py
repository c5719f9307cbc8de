"""Unsegmented sequence labelling for connectionist temporal classification (Graves et al. 2006,
"Connectionist Temporal Classification: Labelling Unsegmented Sequence Data with Recurrent
Neural Networks"): the model reads a signal and emits its label sequence, without being told
where one label's frames end and the next begin.

Batches (``heads`` "ctc"): ``inputs`` float32 features [B, T, F] with ``mask`` bool [B, T]
true at the real frames (right-padded with zeros), ``targets`` int32 label sequences [B, L] of
ids 1 .. vocab_size - 1 (0 is the CTC blank, and the padding) with ``target_mask`` bool [B, L].
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from seqjax.data.base import Batch, SyntheticTask, check_int, register_task
from seqjax.data.mnist_1d import SIGNAL_LENGTH, make_mnist1d

BLANK = 0
MNIST1D_SEED = 42  # the seed of the standard MNIST-1D dataset


@register_task
class Mnist1DDigitStrings(SyntheticTask):
    """Read the digits of a string of MNIST-1D signals (Greydanus & Kobak 2024, "Scaling Down
    Deep Learning with MNIST-1D") laid end to end.

    An example is n digit signals of 40 steps each, n uniform in [min_digits, max_digits] and
    each signal drawn uniformly with repeats, concatenated into 40 n frames of one feature and
    padded to T = 40 max_digits; its targets are the n digits, digit d as id d + 1, padded to
    L = max_digits. The signals are the standard MNIST-1D dataset (the ``mnist1d`` generator
    with its seed 42; ``num_signals`` of them, 5000 by default): training strings use only its
    training signals, test strings only its test signals, so no test signal is ever trained
    on. The task's ``seed`` picks the strings.
    """

    name = "mnist1d_digit_strings"
    kind = "ctc"
    heads = ("ctc",)
    vocab_size = 11  # the blank and ten digits
    input_dim = 1

    def __init__(
        self,
        *,
        min_digits: int = 2,
        max_digits: int = 5,
        num_signals: int = 5000,
        num_train_examples: int = 20_000,
        num_test_examples: int = 1_000,
        seed: int = 0,
    ):
        super().__init__(
            num_train_examples=num_train_examples, num_test_examples=num_test_examples, seed=seed
        )
        prefix = "mnist1d_digit_strings: option"
        self.min_digits = check_int(f"{prefix} 'min_digits'", min_digits, minimum=1)
        self.max_digits = check_int(
            f"{prefix} 'max_digits' (at least min_digits)", max_digits, minimum=self.min_digits
        )
        self.num_signals = check_int(f"{prefix} 'num_signals'", num_signals, minimum=10)
        self.seq_len = self.max_digits * SIGNAL_LENGTH

    @cached_property
    def _signals(self) -> dict[str, np.ndarray]:
        return make_mnist1d(self.num_signals, MNIST1D_SEED)

    def strings(
        self, rng: np.random.Generator, num_examples: int, signals: np.ndarray, digits: np.ndarray
    ) -> Batch:
        """``num_examples`` strings of the ``signals`` [N, 40] whose digits are ``digits``
        [N]."""
        num_digits = rng.integers(self.min_digits, self.max_digits + 1, size=num_examples)
        picks = rng.integers(0, len(signals), size=(num_examples, self.max_digits))
        target_mask = np.arange(self.max_digits) < num_digits[:, None]
        frames = np.where(target_mask[..., None], signals[picks], 0.0)
        return {
            "inputs": frames.reshape(num_examples, self.seq_len, 1).astype(np.float32),
            "mask": np.repeat(target_mask, SIGNAL_LENGTH, axis=1),
            "targets": np.where(target_mask, digits[picks] + 1, BLANK).astype(np.uint8),
            "target_mask": target_mask,
        }

    def generate(self, rng: np.random.Generator, num_examples: int) -> Batch:
        return self.strings(rng, num_examples, self._signals["x"], self._signals["y"])

    @cached_property
    def _test_split(self) -> Batch:
        rng = np.random.default_rng((self.seed, 1))
        return self.strings(
            rng, self.num_test_examples, self._signals["x_test"], self._signals["y_test"]
        )
