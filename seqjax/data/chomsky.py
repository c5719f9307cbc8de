"""Formal-language tasks from Delétang et al. 2023, "Neural Networks and the Chomsky Hierarchy".

Layout, as in the paper's setup without autoregressive decoding: the input string x_1..x_L,
then M = output_length(L) blank tokens; the model's predictions at the blanks are the output.

    inputs   x_1+2 ... x_L+2  1 ... 1         (0: padding after the end, 1: blank)
    targets  0     ...  0     y_1 ... y_M     (output classes, not shifted)
    weights  0     ...  0     1   ... 1

Accuracy is the paper's per-sequence-element accuracy: the fraction of counted output
positions predicted correctly, pooled over the examples of one length (for a final-answer
task, M = 1, the fraction of correct answers). Training lengths are uniform in [1, 40] by
default, as the paper's uniform curriculum; the paper tests on lengths 41 to 500.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from seqjax.data.base import Batch, check_int, register_task
from seqjax.data.lengths import LengthGeneralizationTask

PAD, BLANK, FIRST_SYMBOL = 0, 1, 2
DEFAULT_TEST_LENGTHS = (40, 64, 128, 256)


class ChomskyTask(LengthGeneralizationTask):
    """A transduction from a string of ``num_symbols`` symbols to ``num_classes`` outputs.

    A task with options of its own takes these length options as ``**length_options`` and
    passes them on, so they and their defaults are stated once, here.
    """

    level: ClassVar[str]  # the task's level in the hierarchy: "regular", "dcf" or "cs"
    num_symbols: int
    num_classes: int

    def __init__(
        self,
        *,
        min_train_length: int = 1,
        max_train_length: int = 40,
        test_lengths: Sequence[int] = DEFAULT_TEST_LENGTHS,
        num_train_examples: int = 100_000,
        num_test_examples: int = 500,
        seed: int = 0,
    ):
        self.vocab_size = max(FIRST_SYMBOL + self.num_symbols, self.num_classes)
        super().__init__(
            min_train_length=min_train_length,
            max_train_length=max_train_length,
            test_lengths=test_lengths,
            num_train_examples=num_train_examples,
            num_test_examples=num_test_examples,
            seed=seed,
        )

    def input_length(self, length: int) -> int:
        """Symbols in an input of nominal ``length`` (modular arithmetic rounds down to odd)."""
        return length

    def output_length(self, length: int) -> int:
        return 1

    def sequence_length(self, length: int) -> int:
        return self.input_length(length) + self.output_length(length)

    def sample_inputs(self, rng: np.random.Generator, num_examples: int, length: int):
        """[num_examples, input_length(length)] symbols in [0, num_symbols)."""
        return rng.integers(0, self.num_symbols, size=(num_examples, self.input_length(length)))

    @abc.abstractmethod
    def solve(self, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Outputs [N, M] for input ``symbols`` [N, L], and which outputs count ([N, M] bool,
        or None for all)."""

    def generate_at_length(self, rng: np.random.Generator, num_examples: int, length: int) -> Batch:
        symbols = self.sample_inputs(rng, num_examples, length)
        outputs, counted = self.solve(symbols)
        num_outputs = outputs.shape[1]
        if counted is None:
            counted = np.ones(outputs.shape, bool)
        before_outputs = np.zeros(symbols.shape, bool)
        return {
            "inputs": np.concatenate(
                [symbols + FIRST_SYMBOL, np.full((num_examples, num_outputs), BLANK)], axis=1
            ),
            "targets": np.concatenate([np.zeros(symbols.shape, int), outputs], axis=1),
            "weights": np.concatenate([before_outputs, counted], axis=1),
        }


@register_task
class ParityCheck(ChomskyTask):
    """Parity check (regular): a binary string -> 1 if it holds an odd number of 1s, else 0.

    Example: 0 1 1 0 1 -> 1.
    """

    name, level = "parity_check", "regular"
    num_symbols, num_classes = 2, 2

    def solve(self, symbols):
        return symbols.sum(axis=1, keepdims=True) % 2, None


@register_task
class EvenPairs(ChomskyTask):
    """Even pairs (regular): a binary string -> the parity of the number of unequal adjacent
    pairs (01 or 10), which is 1 exactly when the first and last symbols differ.

    Example: 0 0 1 1 1 0 -> one 01 and one 10 -> 0.
    """

    name, level = "even_pairs", "regular"
    num_symbols, num_classes = 2, 2

    def solve(self, symbols):
        unequal_pairs = symbols[:, 1:] != symbols[:, :-1]
        return unequal_pairs.sum(axis=1, keepdims=True) % 2, None


@register_task
class CycleNavigation(ChomskyTask):
    """Cycle navigation (regular): moves on a cycle of ``cycle_length`` positions, starting at
    0; symbol a in {0, 1, 2} moves by a - 1 (left, stay, right) -> the final position.

    Example (cycle of 5): 2 0 1 0 0 -> +1 -1 0 -1 -1 = -2 -> 3.
    """

    name, level = "cycle_navigation", "regular"
    num_symbols = 3

    def __init__(
        self,
        *,
        cycle_length: int = 5,
        **length_options: Any,
    ):
        self.cycle_length = check_int(
            "cycle_navigation: option 'cycle_length'", cycle_length, minimum=2
        )
        self.num_classes = self.cycle_length
        super().__init__(**length_options)

    def solve(self, symbols):
        return (symbols - 1).sum(axis=1, keepdims=True) % self.cycle_length, None


MODULAR_OPERATORS = "+-*"


@register_task
class ModularArithmetic(ChomskyTask):
    """Modular arithmetic without brackets (regular): an expression n_0 o_1 n_1 ... o_k n_k
    with numbers in [0, modulus) and operators from ``operators`` (of "+-*") -> its value mod
    ``modulus``, multiplication binding tighter. The expression has odd length: an input of
    nominal length L has L symbols if L is odd, else L - 1, as in the paper.

    Symbols: the numbers 0..modulus-1, then "+", "-", "*". Example (mod 5): 1 - 1 - 1 -> 4;
    1 + 2 * 3 -> 2.
    """

    name, level = "modular_arithmetic", "regular"

    def __init__(
        self,
        *,
        modulus: int = 5,
        operators: str = MODULAR_OPERATORS,
        **length_options: Any,
    ):
        self.modulus = check_int("modular_arithmetic: option 'modulus'", modulus, minimum=2)
        if (
            not isinstance(operators, str)
            or not operators
            or not set(operators) <= set(MODULAR_OPERATORS)
            or len(set(operators)) != len(operators)
        ):
            raise ValueError(
                "modular_arithmetic: option 'operators' must be distinct characters of "
                f"{MODULAR_OPERATORS!r}, got {operators!r}"
            )
        self.operators = operators
        self.num_symbols = self.modulus + len(MODULAR_OPERATORS)
        self.num_classes = self.modulus
        super().__init__(**length_options)

    def input_length(self, length: int) -> int:
        return length if length % 2 else length - 1

    def sample_inputs(self, rng, num_examples, length):
        symbols = np.empty((num_examples, self.input_length(length)), int)
        symbols[:, ::2] = rng.integers(0, self.modulus, size=symbols[:, ::2].shape)
        operator_symbols = [self.modulus + MODULAR_OPERATORS.index(op) for op in self.operators]
        symbols[:, 1::2] = rng.choice(operator_symbols, size=symbols[:, 1::2].shape)
        return symbols

    def solve(self, symbols):
        plus, minus, times = (self.modulus + MODULAR_OPERATORS.index(op) for op in "+-*")
        total = np.zeros(len(symbols), int)
        term = symbols[:, 0].copy()  # the signed product being accumulated
        for position in range(1, symbols.shape[1], 2):
            operator, number = symbols[:, position], symbols[:, position + 1]
            ends_term = operator != times
            total = np.where(ends_term, total + term, total)
            term = np.select(
                [operator == plus, operator == minus], [number, -number], term * number
            )
            term %= self.modulus
        return ((total + term) % self.modulus)[:, None], None


@register_task
class ReverseString(ChomskyTask):
    """Reverse string (deterministic context-free): a binary string -> the string reversed.

    Example: 0 1 1 -> 1 1 0.
    """

    name, level = "reverse_string", "dcf"
    num_symbols, num_classes = 2, 2

    def output_length(self, length):
        return length

    def solve(self, symbols):
        return symbols[:, ::-1], None


STACK_POP, STACK_PUSH_0, STACK_PUSH_1 = 2, 3, 4


@register_task
class StackManipulation(ChomskyTask):
    """Stack manipulation (deterministic context-free): a binary stack given bottom to top,
    then actions POP (2), PUSH 0 (3), PUSH 1 (4) -> the final stack read top to bottom, then a
    termination class 2, padded with 0 to L + 1 outputs. A POP on an empty stack does nothing.
    An input of length L > 1 has a stack of length uniform in [1, L - 1] and L minus that many
    actions; L = 1 is a one-symbol stack. Only the outputs up to the termination class count
    (the paper's accuracy mask), in the loss as in the accuracy.

    Example: 0 1 1 0 PUSH1 POP POP -> 1 1 0 2 0 0 0 0.
    """

    name, level = "stack_manipulation", "dcf"
    num_symbols, num_classes = 5, 3

    def output_length(self, length):
        return length + 1

    def sample_inputs(self, rng, num_examples, length):
        if length == 1:
            return rng.integers(0, 2, size=(num_examples, 1))
        stack_lengths = rng.integers(1, length, size=num_examples)
        stacks = rng.integers(0, 2, size=(num_examples, length))
        actions = rng.integers(STACK_POP, STACK_PUSH_1 + 1, size=(num_examples, length))
        return np.where(np.arange(length) < stack_lengths[:, None], stacks, actions)

    def solve(self, symbols):
        num_examples, length = symbols.shape
        rows = np.arange(num_examples)
        stack = np.zeros((num_examples, length), int)  # bottom to top
        height = np.zeros(num_examples, int)
        for symbol in symbols.T:  # an initial stack symbol (0 or 1) is a push too
            pushed = np.where(symbol >= STACK_PUSH_0, symbol - STACK_PUSH_0, symbol)
            pushes = symbol != STACK_POP
            stack[rows[pushes], height[pushes]] = pushed[pushes]
            height = np.where(pushes, height + 1, np.maximum(height - 1, 0))
        positions = np.arange(length + 1)
        top_down = stack[rows[:, None], np.clip(height[:, None] - 1 - positions, 0, None)]
        outputs = np.where(positions < height[:, None], top_down, 0)
        outputs[rows, height] = 2
        return outputs, positions <= height[:, None]


@register_task
class DuplicateString(ChomskyTask):
    """Duplicate string (context-sensitive): a binary string w -> ww.

    Example: 0 1 1 -> 0 1 1 0 1 1.
    """

    name, level = "duplicate_string", "cs"
    num_symbols, num_classes = 2, 2

    def output_length(self, length):
        return 2 * length

    def solve(self, symbols):
        return np.concatenate([symbols, symbols], axis=1), None


@register_task
class BucketSort(ChomskyTask):
    """Bucket sort (context-sensitive): a string over ``num_symbols`` symbols -> the same
    symbols in increasing order.

    Example (5 symbols): 1 0 2 0 4 1 1 2 -> 0 0 1 1 1 2 2 4.
    """

    name, level = "bucket_sort", "cs"

    def __init__(
        self,
        *,
        num_symbols: int = 5,
        **length_options: Any,
    ):
        self.num_symbols = check_int("bucket_sort: option 'num_symbols'", num_symbols, minimum=2)
        self.num_classes = self.num_symbols
        super().__init__(**length_options)

    def output_length(self, length):
        return length

    def solve(self, symbols):
        return np.sort(symbols, axis=1), None
