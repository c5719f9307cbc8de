"""kernels_pallas.chunked_gla: the TPU and GPU kernels, run in the Pallas interpreter, equal
gated_linear_attention's reference on outputs, final state and the gradients of
q, k, v, the decays and the initial state, for per-key and scalar decays, float32 and
bfloat16, with T not a multiple of the chunk and K, V not powers of two; the kernels lower
for TPU (Mosaic) and CUDA (Triton), forward and backward; the op dispatches to them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_testing import PLATFORMS, assert_chunked_op_dispatches, assert_lowers, interpreted
from parity import assert_relative, outputs_and_grads
from tolerances import CHUNKED_BFLOAT16_RELATIVE, CHUNKED_FLOAT32_RELATIVE

import kernels_pallas.chunked_gla as chunked_gla_kernels
from seqjax.ops.linear_attention import gated_linear_attention

# Sub-chunks of 8 rows in the interpreter (Triton on a GPU needs 16), so a chunk of 16 has two.
INTERPRETED = interpreted(
    chunked_gla_kernels.chunked_gla, tpu=dict(sub_chunk=8), gpu=dict(sub_chunk=8, value_block=16)
)


def inputs(seed, decay, dtype, batch=2, length=37, heads=2, key_size=12, value_size=20):
    rng = np.random.default_rng(seed)
    q, k = (rng.normal(size=(batch, length, heads, key_size)) for _ in "qk")
    v = rng.normal(size=(batch, length, heads, value_size))
    shape = (batch, length, heads, key_size) if decay == "key" else (batch, length, heads)
    # Decays down to 0.05 per step: exp(b_i - b_j) spans far more than float32 over a chunk.
    log_decay = np.log(rng.uniform(0.05, 1.0, shape)).astype(np.float32)
    state = rng.normal(size=(batch, heads, key_size, value_size)).astype(np.float32)
    arrays = dict(q=q, k=k / np.sqrt(key_size), v=v)
    arrays = {name: jnp.asarray(value, dtype) for name, value in arrays.items()}
    return dict(**arrays, log_decay=log_decay, initial_state=state)


@pytest.mark.parametrize("platform", ["tpu", "gpu"])
@pytest.mark.parametrize(
    "decay, dtype", [("key", jnp.float32), ("head", jnp.bfloat16)], ids=["key-f32", "head-bf16"]
)
def test_kernel_equals_the_reference(platform, decay, dtype):
    arrays = inputs(0, decay, dtype)
    actual = outputs_and_grads(INTERPRETED[platform], arrays, scale=0.5, chunk_size=16)
    expected = outputs_and_grads(
        gated_linear_attention, arrays, scale=0.5, implementation="reference"
    )
    bound = CHUNKED_FLOAT32_RELATIVE if dtype == jnp.float32 else CHUNKED_BFLOAT16_RELATIVE
    assert_relative(actual, expected, bound)


@pytest.mark.parametrize("target", ["tpu", "cuda"])
def test_kernels_lower_forward_and_backward(target):
    """Lowering runs the Mosaic or Triton lowering of the forward, state-gradient and
    input-gradient kernels, which rejects tiles and operations the target lacks."""
    kernel = functools.partial(chunked_gla_kernels.chunked_gla, platform=PLATFORMS[target])
    batch, length, heads, key_size, value_size = 2, 1000, 4, 128, 64

    def forward(q, k, v, log_decay):
        return kernel(q, k, v, log_decay=log_decay, scale=0.1)

    def backward(q, k, v, log_decay):
        def loss(*args):
            output, final = forward(*args)
            return jnp.sum(output.astype(jnp.float32)) + jnp.sum(final)

        return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, log_decay)

    for dtype, decay_shape in [
        (jnp.float32, (batch, length, heads, key_size)),
        (jnp.bfloat16, (batch, length, heads)),
    ]:
        q = k = jax.ShapeDtypeStruct((batch, length, heads, key_size), dtype)
        v = jax.ShapeDtypeStruct((batch, length, heads, value_size), dtype)
        log_decay = jax.ShapeDtypeStruct(decay_shape, jnp.float32)
        for function, kernels in ((forward, 1), (backward, 3)):
            assert_lowers(function, (q, k, v, log_decay), target, kernels)


def test_op_dispatches_to_the_kernel_on_accelerators(monkeypatch):
    arrays = inputs(1, "key", jnp.float32, length=20)
    assert_chunked_op_dispatches(
        monkeypatch, gated_linear_attention, arrays, chunked_gla_kernels, "chunked_gla", INTERPRETED
    )
