"""A NaN or an inf at the last position of any input of any op, in every implementation (the
Pallas kernels in the interpreter, through the op), leaves every earlier output equal to that
of the prefix alone, and the other batch row equal to its run without it, while the outputs
at that position are non-finite.
The chunked and blocked forms zero non-finite inputs before their matmuls and put NaN back
(seqjax.ops.finite); the recurrent and scan forms need nothing, which these tests show.
An infinite pre-activation of a saturating gate is a limit, not a fault: it gives the outputs
of a large finite one. Gradients of the forms that put NaN back: a loss that masks the NaN
outputs out gets the gradients of the finite prefix, one that reads them gets NaN."""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import FLOAT32

import kernels_pallas.chunked_delta_rule
import kernels_pallas.chunked_gla
import kernels_pallas.flash_attention
import kernels_pallas.linear_scan
from seqjax.layers.s4 import causal_fft_convolution, segmented_convolution
from seqjax.ops import attention, cells, conv, delta_rule, linear_attention, mlstm, scan

BATCH, LENGTH, HEADS, KEY_SIZE, VALUE_SIZE, FEATURES = 2, 21, 2, 4, 3, 3
CHUNK = 8  # chunks of 8, 8 and 5 steps; per-key blocks of 8 are halved into 4 + 4
# Far enough into saturation that tanh, sigmoid and log-sigmoid round to their limits.
SATURATED = 1e4


# The ops' kernels, run in the Pallas interpreter as if on a GPU: (package, entry, tiles).
KERNELS = {
    scan: (kernels_pallas.linear_scan, "linear_scan", dict(feature_block=64)),
    linear_attention: (
        kernels_pallas.chunked_gla,
        "chunked_gla",
        dict(sub_chunk=8, value_block=16),
    ),
    delta_rule: (kernels_pallas.chunked_delta_rule, "chunked_delta_rule", {}),
    attention: (
        kernels_pallas.flash_attention,
        "flash_attention",
        dict(query_block=16, key_block=16),
    ),
}
KERNEL_CHUNK = 16  # the smallest chunk the kernels take


def forms(module, *, kernels: bool = True) -> list[str]:
    """The op's implementations that run here: all but "pallas", which runs in the
    interpreter where the op has kernels (and ``kernels``)."""
    runnable = kernels and module in KERNELS
    return [name for name in module.IMPLEMENTATIONS if name != "pallas" or runnable]


def chunk(implementation) -> int:
    return KERNEL_CHUNK if implementation == "pallas" else CHUNK


def interpret_kernels(monkeypatch) -> None:
    """Every op's kernels in the Pallas interpreter, and a GPU default backend to pick them."""
    for package, entry, tiles in KERNELS.values():
        kernel = functools.partial(getattr(package, entry), interpret=True, **tiles)
        monkeypatch.setattr(package, entry, kernel)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


@dataclasses.dataclass(frozen=True)
class Case:
    """``run(arrays) -> (output [B, T, ...], final state pytree or None)``. ``corrupted``:
    the inputs to corrupt, each at its last position in batch row 0 (unless ``unbatched``:
    at its last lag, seen by every row); ``limits``: those whose +inf is a saturating limit.
    ``reads_only``: inputs the state never holds (a non-finite one may leave it finite)."""

    run: Callable
    arrays: dict
    corrupted: tuple[str, ...]
    limits: tuple[str, ...] = ()
    reads_only: tuple[str, ...] = ()
    unbatched: tuple[str, ...] = ()
    constants: tuple[str, ...] = ()  # not indexed by time


def random_arrays(seed, **shapes_and_ranges):
    """name -> [shape, (low, high) uniform | None normal], as float32."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for name, (shape, bounds) in shapes_and_ranges.items():
        value = rng.normal(size=shape) if bounds is None else rng.uniform(*bounds, shape)
        arrays[name] = value.astype(np.float32)
    return arrays


def normalized(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


HEAD = (BATCH, LENGTH, HEADS)
KEY = (*HEAD, KEY_SIZE)
VALUE = (*HEAD, VALUE_SIZE)
LOG_DECAY = (np.log(0.5), 0.0)


def linear_recurrence_case(implementation):
    shape = (BATCH, LENGTH, FEATURES)
    arrays = random_arrays(0, a=(shape, (0.5, 1.0)), x=(shape, None))
    run = functools.partial(
        scan.linear_recurrence, implementation=implementation, chunk_size=chunk(implementation)
    )
    return Case(lambda arrays: run(**arrays), arrays, ("a", "x"))


def matrix_state_case(op, implementation, arrays):
    """A matrix-state op, whose queries the state never holds."""
    run = functools.partial(
        op, scale=0.5, chunk_size=chunk(implementation), implementation=implementation
    )
    return Case(lambda arrays: run(**arrays), arrays, tuple(arrays), reads_only=("q",))


def gla_case(implementation, decay):
    shapes = dict(q=(KEY, None), k=(KEY, None), v=(VALUE, None))
    if decay != "no":
        shapes["log_decay"] = ({"head": HEAD, "key": KEY}[decay], LOG_DECAY)
    arrays = random_arrays(1, **shapes)
    return matrix_state_case(linear_attention.gated_linear_attention, implementation, arrays)


def delta_rule_case(implementation):
    arrays = random_arrays(
        2, q=(KEY, None), k=(KEY, None), v=(VALUE, None), beta=(HEAD, (0.0, 1.5)),
        log_decay=(HEAD, LOG_DECAY),
    )  # fmt: skip
    arrays["k"] = normalized(arrays["k"])
    return matrix_state_case(delta_rule.delta_rule, implementation, arrays)


def generalized_delta_rule_case(implementation):
    arrays = random_arrays(
        3, q=(KEY, None), k=(KEY, None), v=(VALUE, None), removal_key=(KEY, None),
        removal_direction=(KEY, (0.0, 1.0)), log_decay=(KEY, LOG_DECAY),
    )  # fmt: skip
    arrays["removal_key"] = normalized(arrays["removal_key"])
    arrays["removal_direction"] *= arrays["removal_key"]
    return matrix_state_case(delta_rule.generalized_delta_rule, implementation, arrays)


def mlstm_case(implementation):
    arrays = random_arrays(
        4, q=(KEY, None), k=(KEY, None), v=(VALUE, None), input_gate=(HEAD, None),
        forget_gate=(HEAD, (0.0, 4.0)),
    )  # fmt: skip
    run = functools.partial(mlstm.mlstm, chunk_size=CHUNK, implementation=implementation)
    return Case(
        lambda arrays: run(**arrays), arrays, tuple(arrays), limits=("forget_gate",),
        reads_only=("q",),
    )  # fmt: skip


def attention_case(implementation, masking):
    groups = 1  # two query heads share one key/value head
    key_shape = (BATCH, LENGTH, groups, KEY_SIZE)
    shapes = dict(q=(KEY, None), k=(key_shape, None), v=((*key_shape[:3], VALUE_SIZE), None))
    if masking == "forget gate":
        shapes["log_forget"] = (HEAD, LOG_DECAY)
    arrays = random_arrays(5, **shapes)
    options = dict(block_size=CHUNK, implementation=implementation)
    if masking == "window":
        options["window"] = 5
    if masking == "segments":
        ids = np.repeat([[0] * 9 + [1] * (LENGTH - 9)], BATCH, axis=0).astype(np.int32)
        arrays.update(q_segment_ids=ids, kv_segment_ids=ids)

    def run(arrays):
        return attention.softmax_attention(**arrays, **options), None

    corrupted = ("q", "k", "v", "log_forget") if masking == "forget gate" else ("q", "k", "v")
    return Case(run, arrays, corrupted)


def causal_conv1d_case():
    arrays = random_arrays(
        6, x=((BATCH, LENGTH, FEATURES), None), kernel=((4, FEATURES), None),
        bias=((FEATURES,), None),
    )  # fmt: skip
    return Case(
        lambda arrays: conv.causal_conv1d(**arrays), arrays, ("x",), constants=("kernel", "bias")
    )


def cell_case(name):
    """Gate inputs [B, T, G] with +inf in the first gate (a tanh or a sigmoid) as a limit."""
    size = 4
    rng = np.random.default_rng(7)
    zeros = np.zeros((BATCH, size), np.float32)

    def weights(*shape):
        return (rng.normal(size=shape) / np.sqrt(size)).astype(np.float32)

    cell, state, gates = {
        "elman": lambda: (functools.partial(cells.elman_cell, weights(size, size)), zeros, 1),
        "lstm": lambda: (
            functools.partial(cells.lstm_cell, cells.LSTMWeights(weights(size, 4 * size), None)),
            cells.LSTMState(zeros, zeros),
            4,
        ),
        "gru": lambda: (
            functools.partial(
                cells.gru_cell, cells.GRUWeights(weights(size, 3 * size), weights(size))
            ),
            zeros,
            3,
        ),
        "slstm": lambda: (
            functools.partial(cells.slstm_cell, weights(2, size // 2, 2 * size)),
            cells.SLSTMState(zeros, zeros, zeros, zeros),
            4,
        ),
    }[name]()
    arrays = random_arrays(8, gate_inputs=((BATCH, LENGTH, gates * size), None))
    run = functools.partial(cells.run_cell, cell)
    return Case(
        lambda arrays: run(arrays["gate_inputs"], state), arrays, ("gate_inputs",),
        limits=("gate_inputs",),
    )  # fmt: skip


def fft_convolution_case():
    arrays = random_arrays(
        9, u=((BATCH, LENGTH, FEATURES), None), kernel=((LENGTH, FEATURES), None)
    )
    return Case(
        lambda arrays: (causal_fft_convolution(**arrays), None), arrays, ("u", "kernel"),
        unbatched=("kernel",),
    )  # fmt: skip


def segmented_convolution_case():
    arrays = random_arrays(
        10, u=((BATCH, LENGTH, FEATURES), None), kernel=((LENGTH, FEATURES), None)
    )
    arrays["segment_ids"] = np.repeat([[0] * 9 + [1] * (LENGTH - 9)], BATCH, axis=0)
    return Case(
        lambda arrays: (segmented_convolution(**arrays), None), arrays, ("u", "kernel"),
        unbatched=("kernel",),
    )  # fmt: skip


CASES = {
    **{f"linear_recurrence-{form}": (linear_recurrence_case, form) for form in forms(scan)},
    **{
        f"gated_linear_attention-{form}-{decay}-decay": (gla_case, form, decay)
        for form in forms(linear_attention)
        for decay in ("no", "head", "key")
    },
    **{f"delta_rule-{form}": (delta_rule_case, form) for form in forms(delta_rule)},
    **{
        f"generalized_delta_rule-{form}": (generalized_delta_rule_case, form)
        for form in forms(delta_rule, kernels=False)
    },
    **{f"mlstm-{form}": (mlstm_case, form) for form in forms(mlstm)},
    **{
        f"softmax_attention-{form}-{masking}": (attention_case, form, masking)
        for form in forms(attention)
        for masking in ("causal", "window", "segments", "forget gate")
    },
    "causal_conv1d": (causal_conv1d_case,),
    **{f"run_cell-{name}": (cell_case, name) for name in ("elman", "lstm", "gru", "slstm")},
    "s4-causal_fft_convolution": (fft_convolution_case,),
    "s4-segmented_convolution": (segmented_convolution_case,),
}


def build(name, monkeypatch) -> Case:
    make, *arguments = CASES[name]
    if "pallas" in arguments:
        interpret_kernels(monkeypatch)
    return make(*arguments)


def prefix(case: Case) -> dict:
    """Every input without its last position."""
    return {
        name: value
        if name in case.constants
        else value[:-1]
        if name in case.unbatched
        else value[:, :-1]
        for name, value in case.arrays.items()
    }


def with_last(case: Case, name: str, value: float) -> dict:
    """The inputs with one entry of ``name`` at its last position set to ``value``."""
    array = case.arrays[name]
    index = (-1,) if name in case.unbatched else (0, -1)
    array = array.copy()
    array[index + (0,) * (array.ndim - len(index))] = value
    return {**case.arrays, name: array}


def assert_nonfinite(tree, what):
    """Some entry of some leaf of ``tree`` is non-finite."""
    assert not all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(tree)), what


@pytest.mark.parametrize("name", list(CASES))
def test_a_nonfinite_last_input_reaches_no_earlier_output(name, monkeypatch):
    case = build(name, monkeypatch)
    run = jax.jit(case.run)
    prefix_output, _ = run(prefix(case))
    clean_output, clean_state = run(case.arrays)
    for corrupted in case.corrupted:
        for value in (np.nan, np.inf):
            output, state = run(with_last(case, corrupted, value))
            what = f"{corrupted} = {value}"
            np.testing.assert_allclose(output[:, :-1], prefix_output, **FLOAT32, err_msg=what)
            if corrupted not in case.unbatched:  # the other row is its own sequence
                np.testing.assert_allclose(output[1], clean_output[1], **FLOAT32, err_msg=what)
                jax.tree.map(
                    lambda s, c: np.testing.assert_allclose(s[1], c[1], **FLOAT32),
                    state, clean_state,
                )  # fmt: skip
            if value == np.inf and corrupted in case.limits:
                expected, _ = run(with_last(case, corrupted, SATURATED))
                np.testing.assert_allclose(output, expected, **FLOAT32, err_msg=what)
                continue
            assert_nonfinite(output[:, -1] if corrupted in case.unbatched else output[0, -1], what)
            if state is not None and corrupted not in case.reads_only:
                assert_nonfinite(jax.tree.map(lambda s: s[0], state), what)


# One case for each form that puts NaN back.
NAN_FORMS = (
    "gated_linear_attention-chunked-key-decay",
    "gated_linear_attention-pallas-head-decay",
    "delta_rule-chunked",
    "delta_rule-pallas",
    "generalized_delta_rule-chunked",
    "mlstm-chunked",
    "mlstm-parallel",
    "softmax_attention-reference-forget gate",
    "softmax_attention-chunked-forget gate",
    "softmax_attention-pallas-forget gate",
    "s4-causal_fft_convolution",
)


@pytest.mark.parametrize("name", NAN_FORMS)
def test_a_loss_masking_the_nan_outputs_gets_the_prefix_gradients(name, monkeypatch):
    """With a NaN input at the last position, a loss that masks the outputs there out with
    ``where`` has, at every earlier position, the gradients it has without the NaN; a loss
    that reads them (and the final state) has NaN gradients in that batch row."""
    case = build(name, monkeypatch)
    differentiable = [n for n in case.arrays if n not in case.constants and "ids" not in n]

    def loss(arrays, masked):
        output, state = case.run(arrays)
        weights = np.random.default_rng(10).normal(size=output.shape).astype(np.float32)
        earlier = (np.arange(LENGTH) < LENGTH - 1).reshape(1, -1, *(1,) * (output.ndim - 2))
        if masked:
            return jnp.sum(jnp.where(earlier, output * weights, 0.0))
        return jnp.sum(output * weights) + sum(jnp.sum(s) for s in jax.tree.leaves(state))

    @jax.jit
    def gradients(arrays):
        def of(masked):
            return jax.grad(lambda inputs: loss({**arrays, **inputs}, masked))(
                {n: arrays[n] for n in differentiable}
            )

        return of(True), of(False)

    expected, _ = gradients(case.arrays)
    for corrupted in case.corrupted:
        masked, read = gradients(with_last(case, corrupted, np.nan))
        for n in differentiable:  # at the prefix's positions
            earlier = (slice(None, -1),) if n in case.unbatched else (slice(None), slice(None, -1))
            np.testing.assert_allclose(
                masked[n][earlier], expected[n][earlier], **FLOAT32, err_msg=corrupted
            )
        rows = read if corrupted in case.unbatched else jax.tree.map(lambda g: g[0], read)
        assert_nonfinite(rows, corrupted)
