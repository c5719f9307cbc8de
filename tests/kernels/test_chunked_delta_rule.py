"""kernels_pallas.chunked_delta_rule: the TPU and GPU kernels, run in the Pallas interpreter,
equal delta_rule's reference on outputs, final state and the gradients of q, k,
v, beta (in [0, 2]), the decay and the initial state, with and without a decay, float32
and bfloat16, with T not a multiple of the chunk and K, V not powers of two; the kernels
lower for TPU (Mosaic) and CUDA (Triton), forward and backward; the op dispatches to them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_testing import PLATFORMS, assert_chunked_op_dispatches, assert_lowers, interpreted
from parity import assert_relative, outputs_and_grads
from tolerances import CHUNKED_BFLOAT16_RELATIVE, CHUNKED_FLOAT32_RELATIVE

import kernels_pallas.chunked_delta_rule as chunked_delta_rule_kernels
from seqjax.ops.delta_rule import delta_rule

INTERPRETED = interpreted(chunked_delta_rule_kernels.chunked_delta_rule, tpu={}, gpu={})


def inputs(seed, decay, dtype, batch=2, length=37, heads=2, key_size=12, value_size=20):
    rng = np.random.default_rng(seed)
    q, k = (rng.normal(size=(batch, length, heads, key_size)) for _ in "qk")
    v = rng.normal(size=(batch, length, heads, value_size))
    arrays = dict(q=q, k=k / np.linalg.norm(k, axis=-1, keepdims=True), v=v)
    arrays = {name: jnp.asarray(value, dtype) for name, value in arrays.items()}
    # beta up to 2: transitions with a negative eigenvalue.
    arrays["beta"] = jnp.asarray(rng.uniform(0.0, 2.0, (batch, length, heads)), dtype)
    if decay:
        log_decay = np.log(rng.uniform(0.3, 1.0, (batch, length, heads)))
        arrays["log_decay"] = jnp.asarray(log_decay, jnp.float32)
    state = rng.normal(size=(batch, heads, key_size, value_size)).astype(np.float32)
    return dict(**arrays, initial_state=state)


@pytest.mark.parametrize(
    "decay, dtype", [(True, jnp.float32), (False, jnp.bfloat16)], ids=["decay-f32", "plain-bf16"]
)
def test_kernels_equal_the_reference(decay, dtype):
    arrays = inputs(0, decay, dtype)
    expected = outputs_and_grads(delta_rule, arrays, scale=0.5, implementation="reference")
    bound = CHUNKED_FLOAT32_RELATIVE if dtype == jnp.float32 else CHUNKED_BFLOAT16_RELATIVE
    for kernel in INTERPRETED.values():
        assert_relative(
            outputs_and_grads(kernel, arrays, scale=0.5, chunk_size=16), expected, bound
        )


@pytest.mark.parametrize("target", ["tpu", "cuda"])
def test_kernels_lower_forward_and_backward(target):
    """Lowering runs the Mosaic or Triton lowering of the forward and backward kernels,
    which rejects tiles and operations the target lacks."""
    kernel = functools.partial(
        chunked_delta_rule_kernels.chunked_delta_rule, platform=PLATFORMS[target]
    )
    batch, length, heads, key_size, value_size = 2, 1000, 4, 128, 128

    def forward(q, k, v, beta, log_decay):
        return kernel(q, k, v, beta, log_decay=log_decay, scale=0.1)

    def backward(*args):
        def loss(*args):
            output, final = forward(*args)
            return jnp.sum(output.astype(jnp.float32)) + jnp.sum(final)

        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))(*args)

    for dtype in (jnp.float32, jnp.bfloat16):
        q = k = jax.ShapeDtypeStruct((batch, length, heads, key_size), dtype)
        v = jax.ShapeDtypeStruct((batch, length, heads, value_size), dtype)
        beta = jax.ShapeDtypeStruct((batch, length, heads), dtype)
        log_decay = jax.ShapeDtypeStruct((batch, length, heads), jnp.float32)
        for function, kernels in ((forward, 1), (backward, 2)):
            assert_lowers(function, (q, k, v, beta, log_decay), target, kernels)


def test_op_dispatches_to_the_kernel_on_accelerators(monkeypatch):
    arrays = inputs(1, True, jnp.float32, length=20)
    assert_chunked_op_dispatches(
        monkeypatch,
        delta_rule,
        arrays,
        chunked_delta_rule_kernels,
        "chunked_delta_rule",
        INTERPRETED,
    )
