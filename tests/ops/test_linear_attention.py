"""gated_linear_attention: the chunked form equals the reference on outputs, final
state and the gradients of q, k, v, decays and the initial state (with a random cotangent on
the final state), for every decay shape, chunk sizes 16-128, ragged T and segment resets;
the reference equals a NumPy loop; long bfloat16 sequences stay finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import assert_relative, outputs_and_grads
from tolerances import CHUNKED_BFLOAT16_RELATIVE, CHUNKED_FLOAT32_RELATIVE, FLOAT32

from seqjax.ops.linear_attention import gated_linear_attention

DECAYS = ("none", "head", "key")


def inputs(
    seed, batch, length, heads, key_size, value_size, decay, segments=True, decay_range=(0.7, 1.0)
):
    rng = np.random.default_rng(seed)
    q, k = (rng.normal(size=(batch, length, heads, key_size)).astype(np.float32) for _ in "qk")
    v = rng.normal(size=(batch, length, heads, value_size)).astype(np.float32)
    state = rng.normal(size=(batch, heads, key_size, value_size)).astype(np.float32)
    shape = {"none": None, "head": (batch, length, heads), "key": (batch, length, heads, key_size)}
    log_decay = None
    if shape[decay] is not None:
        log_decay = np.log(rng.uniform(*decay_range, shape[decay])).astype(np.float32)
    starts = rng.random((batch, length)) < 0.05 if segments else None
    return q, k / np.sqrt(key_size), v, log_decay, state, starts


def parity(implementation, q, k, v, log_decay, state, starts, chunk_size):
    arrays = dict(q=q, k=k, v=v, log_decay=log_decay, initial_state=state, segment_starts=starts)
    return outputs_and_grads(
        gated_linear_attention, arrays, scale=0.5, chunk_size=chunk_size,
        implementation=implementation,
    )  # fmt: skip


@pytest.mark.parametrize(
    "chunk_size, decay, length",
    [(16, "key", 50), (32, "head", 77), (64, "none", 100), (128, "key", 130), (64, "head", 1024)],
)
def test_chunked_equals_reference(chunk_size, decay, length):
    args = inputs(0, 2, length, 2, 8, 4, decay)
    expected = parity("reference", *args, chunk_size)
    actual = parity("chunked", *args, chunk_size)
    assert_relative(actual, expected, CHUNKED_FLOAT32_RELATIVE)


@pytest.mark.parametrize("decay", ["head", "key"])
def test_chunked_equals_reference_with_decays_near_zero(decay):
    """Decays of 1e-6 to 1e-2 (log decays down to -14 per step): within a sub-chunk the
    cumulative log decays span more than exp's float32 range, which a split of
    exp(b_i - b_j) into exp(b_i) · exp(-b_j) would overflow."""
    args = inputs(4, 2, 100, 2, 8, 4, decay, decay_range=(1e-6, 1e-2))
    expected = parity("reference", *args, 64)
    actual = parity("chunked", *args, 64)
    assert_relative(actual, expected, CHUNKED_FLOAT32_RELATIVE)


@pytest.mark.parametrize("decay", DECAYS)
def test_reference_equals_numpy(decay):
    q, k, v, log_decay, state, starts = inputs(1, 2, 11, 2, 3, 2, decay)
    output, final = gated_linear_attention(
        q, k, v, log_decay=log_decay, initial_state=state, segment_starts=starts, scale=0.5,
        implementation="reference",
    )  # fmt: skip
    expected = np.zeros_like(output)
    S = state.astype(np.float64)
    for t in range(q.shape[1]):
        S = np.where(starts[:, t, None, None, None], 0.0, S)
        if log_decay is not None:
            decay_t = np.exp(log_decay[:, t])
            S = S * (decay_t[..., None, None] if decay == "head" else decay_t[..., None])
        S = S + k[:, t, :, :, None] * v[:, t, :, None, :]
        expected[:, t] = 0.5 * np.einsum("bhk,bhkv->bhv", q[:, t], S)
    np.testing.assert_allclose(output, expected, **FLOAT32)
    np.testing.assert_allclose(final, S, **FLOAT32)


def test_pieces_with_the_state_equal_the_whole():
    q, k, v, log_decay, state, _ = inputs(2, 1, 40, 2, 4, 4, "key", segments=False)
    whole, whole_final = gated_linear_attention(q, k, v, log_decay=log_decay, chunk_size=16)
    first, middle = gated_linear_attention(
        q[:, :23], k[:, :23], v[:, :23], log_decay=log_decay[:, :23], chunk_size=16
    )
    second, final = gated_linear_attention(
        q[:, 23:], k[:, 23:], v[:, 23:], log_decay=log_decay[:, 23:], initial_state=middle,
        chunk_size=16,
    )  # fmt: skip
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, **FLOAT32)
    np.testing.assert_allclose(final, whole_final, **FLOAT32)


@pytest.mark.parametrize("decay", ["head", "key"])
def test_bfloat16_inputs(decay):
    args = inputs(3, 2, 70, 2, 8, 8, decay)
    expected = parity("reference", *args, 32)
    as_bf16 = [None if a is None or a.dtype == bool else jnp.asarray(a, jnp.bfloat16)
               for a in args[:4]]  # fmt: skip
    actual = parity("chunked", *as_bf16, args[4], args[5], 32)
    assert actual["output"].dtype == jnp.bfloat16
    assert_relative(actual, expected, CHUNKED_BFLOAT16_RELATIVE)


@pytest.mark.parametrize("decay_range", [(0.9999, 1.0), (1e-6, 1e-3)], ids=["near1", "near0"])
@pytest.mark.parametrize("decay", ["head", "key"])
def test_long_bfloat16_sequences_are_finite(decay_range, decay):
    length, heads, size = 16384, 2, 16
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(1, length, heads, size)), jnp.bfloat16) for _ in "qkv")
    shape = (1, length, heads) if decay == "head" else (1, length, heads, size)
    log_decay = jnp.asarray(np.log(rng.uniform(*decay_range, shape)), jnp.bfloat16)

    @jax.jit
    def value_and_grads(q, k, v, log_decay):
        def loss(q, k, v, log_decay):
            output, final = gated_linear_attention(q, k, v, log_decay=log_decay, scale=0.25)
            return jnp.mean(output.astype(jnp.float32) ** 2) + jnp.mean(final)

        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(q, k, v, log_decay)

    value, grads = value_and_grads(q, k, v, log_decay)
    assert np.isfinite(float(value))
    for grad in grads:
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_bad_arguments_raise_clear_errors():
    q = jnp.zeros((1, 5, 2, 4))
    v = jnp.zeros((1, 5, 2, 3))
    with pytest.raises(ValueError, match=r"q must be \[B, T, H, K\]"):
        gated_linear_attention(q[0], q[0], v[0])
    with pytest.raises(ValueError, match="k must have q's shape"):
        gated_linear_attention(q, q[:, :4], v)
    with pytest.raises(ValueError, match=r"v must be \[B, T, H, V\]"):
        gated_linear_attention(q, q, v[:, :4])
    with pytest.raises(ValueError, match=r"log_decay must be \[B, T, H\] = \(1, 5, 2\)"):
        gated_linear_attention(q, q, v, log_decay=jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, K, V\] = \(1, 2, 4, 3\)"):
        gated_linear_attention(q, q, v, initial_state=jnp.zeros((1, 2, 3, 4)))
    with pytest.raises(ValueError, match="'pallas' cannot run: .* not on cpu"):
        gated_linear_attention(q, q, v, implementation="pallas")
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        gated_linear_attention(q, q, v, implementation="fast")
