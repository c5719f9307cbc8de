"""kernels_pallas.linear_scan: the TPU and GPU kernels, run in the Pallas interpreter, equal
linear_recurrence's reference on outputs, final state and the gradients of a, x
and the initial state, forward and reverse, with segment resets, for float32, bfloat16 and
complex inputs, at shapes that are not multiples of the blocks; both kernels lower for TPU
(Mosaic) and CUDA (Triton), forward and backward; the op dispatches to them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_testing import PLATFORMS, assert_lowers, interpret_dispatch, interpreted
from tolerances import BFLOAT16, FLOAT32

import kernels_pallas.linear_scan as linear_scan_kernels
from seqjax.ops.scan import linear_recurrence

# Small blocks, so that T = 21 spans a ragged last time block and F = 135 a ragged tile.
INTERPRETED = interpreted(
    linear_scan_kernels.linear_scan, tpu=dict(time_block=8), gpu=dict(feature_block=64)
)


def random_inputs(seed, shape, dtype=np.float32):
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 1.0, shape)
    x = rng.normal(size=shape)
    h0 = rng.normal(size=(shape[0], *shape[2:]))
    if np.issubdtype(dtype, np.complexfloating):
        a = a * np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        x = x + 1j * rng.normal(size=shape)
        h0 = h0 + 1j * rng.normal(size=h0.shape)
    starts = rng.random(shape[:2]) < 0.15
    state_dtype = np.complex64 if np.issubdtype(dtype, np.complexfloating) else np.float32
    return jnp.asarray(a, dtype), jnp.asarray(x, dtype), h0.astype(state_dtype), starts


def outputs_and_grads(scan, a, x, h0, starts, reverse):
    """h, final state, and the gradients of a random linear functional of both."""
    rng = np.random.default_rng(99)
    h_weights = rng.normal(size=x.shape).astype(np.float32)
    final_weights = rng.normal(size=h0.shape).astype(np.float32)

    def loss(a, x, h0):
        h, final = scan(a, x, initial_state=h0, segment_starts=starts, reverse=reverse)
        value = jnp.sum(jnp.real(h.astype(final.dtype) * h_weights))
        return value + jnp.sum(jnp.real(final * final_weights)), (h, final)

    grads, (h, final) = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(a, x, h0)
    return h, final, grads


def reference(a, x, **options):
    return linear_recurrence(a, x, implementation="reference", **options)


def assert_close(actual, expected, tolerance):
    for u, v in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert u.dtype == v.dtype
        np.testing.assert_allclose(
            np.asarray(u, np.complex128), np.asarray(v, np.complex128), **tolerance
        )


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize(
    "dtype, reverse, shape",
    [
        (np.float32, False, (2, 21, 3, 45)),
        (np.float32, True, (2, 21, 135)),
        (np.complex64, True, (2, 13, 5)),
        (jnp.bfloat16, False, (2, 21, 135)),
    ],
    ids=["float32", "float32-reverse", "complex-reverse", "bfloat16"],
)
def test_kernel_equals_the_reference(platform, dtype, reverse, shape):
    inputs = random_inputs(0, shape, dtype)
    actual = outputs_and_grads(INTERPRETED[platform], *inputs, reverse)
    expected = outputs_and_grads(reference, *inputs, reverse)
    assert_close(actual, expected, BFLOAT16 if dtype == jnp.bfloat16 else FLOAT32)


@pytest.mark.parametrize("target", ["tpu", "cuda"])
def test_kernels_lower_forward_and_backward(target):
    """Lowering runs the Mosaic or Triton lowering of every kernel, which rejects block
    shapes and operations the target does not support."""
    kernel = functools.partial(linear_scan_kernels.linear_scan, platform=PLATFORMS[target])

    def forward(a, x, h0):
        return kernel(a, x, initial_state=h0, reverse=True)

    def backward(a, x, h0):
        def loss(a, x, h0):
            h, final = kernel(a, x, initial_state=h0)
            return jnp.sum(jnp.real(h.astype(final.dtype))) + jnp.sum(jnp.real(final))

        return jax.grad(loss, argnums=(0, 1, 2))(a, x, h0)

    for dtype, shape in [
        (jnp.float32, (4, 1000, 1000)),
        (jnp.bfloat16, (4, 1024, 2048)),
        (jnp.complex64, (4, 1000, 96)),
    ]:
        a = x = jax.ShapeDtypeStruct(shape, dtype)
        h0 = jax.ShapeDtypeStruct((shape[0], shape[2]), jnp.result_type(dtype, jnp.float32))
        for function in (forward, backward):
            assert_lowers(function, (a, x, h0), target, 1)


def test_op_dispatches_to_the_kernel_on_accelerators(monkeypatch):
    """With implementation None on a TPU backend, linear_recurrence runs the TPU kernel (here
    in the interpreter) and matches the reference; on CPU, asking for it is an error."""
    a, x, h0, starts = random_inputs(1, (2, 11, 7))
    expected = reference(a, x, initial_state=h0, segment_starts=starts)
    with pytest.raises(ValueError, match="TPU or GPU, not on cpu"):
        linear_recurrence(a, x, implementation="pallas")
    calls = interpret_dispatch(monkeypatch, linear_scan_kernels, "linear_scan", INTERPRETED, "tpu")
    actual = linear_recurrence(a, x, initial_state=h0, segment_starts=starts)
    assert len(calls) == 1
    assert_close(actual, expected, FLOAT32)
