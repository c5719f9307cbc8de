"""delta_rule: the chunked (UT-transform) form equals the reference on outputs,
final state and the gradients of q, k, v, beta, decays and the initial state, for chunk
sizes 16-128, ragged T, segment resets and beta up to 2; the reference equals a NumPy loop;
long bfloat16 sequences stay finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import assert_relative, outputs_and_grads
from tolerances import CHUNKED_BFLOAT16_RELATIVE, CHUNKED_FLOAT32_RELATIVE, FLOAT32

from seqjax.ops.delta_rule import delta_rule


def inputs(seed, batch, length, heads, key_size, value_size, gated, segments=True):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, length, heads, key_size)).astype(np.float32)
    k = rng.normal(size=(batch, length, heads, key_size))
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(np.float32)
    v = rng.normal(size=(batch, length, heads, value_size)).astype(np.float32)
    beta = rng.uniform(0, 2, (batch, length, heads)).astype(np.float32)
    log_decay = np.log(rng.uniform(0.8, 1, (batch, length, heads))).astype(np.float32)
    state = rng.normal(size=(batch, heads, key_size, value_size)).astype(np.float32)
    starts = rng.random((batch, length)) < 0.05 if segments else None
    return dict(
        q=q, k=k, v=v, beta=beta, log_decay=log_decay if gated else None,
        initial_state=state, segment_starts=starts,
    )  # fmt: skip


@pytest.mark.parametrize(
    "chunk_size, gated, length",
    [(16, True, 50), (32, False, 77), (64, True, 100), (128, False, 130), (64, True, 1024)],
)
def test_chunked_equals_reference(chunk_size, gated, length):
    arrays = inputs(0, 2, length, 2, 8, 4, gated)
    expected = outputs_and_grads(delta_rule, arrays, implementation="reference", scale=0.5)
    actual = outputs_and_grads(
        delta_rule, arrays, implementation="chunked", scale=0.5, chunk_size=chunk_size
    )
    assert_relative(actual, expected, CHUNKED_FLOAT32_RELATIVE)


@pytest.mark.parametrize("gated", [False, True])
def test_reference_equals_numpy(gated):
    arrays = inputs(1, 2, 11, 2, 3, 2, gated)
    output, final = delta_rule(**arrays, scale=0.5, implementation="reference")
    q, k, v, beta = (arrays[name].astype(np.float64) for name in ("q", "k", "v", "beta"))
    S = arrays["initial_state"].astype(np.float64)
    expected = np.zeros(output.shape)
    for t in range(q.shape[1]):
        S = np.where(arrays["segment_starts"][:, t, None, None, None], 0.0, S)
        decay = np.exp(arrays["log_decay"][:, t]) if gated else np.ones(beta[:, t].shape)
        for b in range(q.shape[0]):
            for h in range(q.shape[2]):
                key = k[b, t, h]
                transition = np.eye(len(key)) - beta[b, t, h] * np.outer(key, key)
                S[b, h] = decay[b, h] * transition @ S[b, h]
                S[b, h] += beta[b, t, h] * np.outer(key, v[b, t, h])
                expected[b, t, h] = 0.5 * S[b, h].T @ q[b, t, h]
    np.testing.assert_allclose(output, expected, **FLOAT32)
    np.testing.assert_allclose(final, S, **FLOAT32)


def test_bfloat16_inputs():
    arrays = inputs(3, 2, 70, 2, 8, 8, gated=True)
    expected = outputs_and_grads(delta_rule, arrays, implementation="reference")
    as_bf16 = {
        name: jnp.asarray(value, jnp.bfloat16) if name in ("q", "k", "v", "beta") else value
        for name, value in arrays.items()
    }
    actual = outputs_and_grads(delta_rule, as_bf16, implementation="chunked", chunk_size=32)
    assert actual["output"].dtype == jnp.bfloat16
    assert_relative(actual, expected, CHUNKED_BFLOAT16_RELATIVE)


@pytest.mark.parametrize("decay_range", [(0.9999, 1.0), (1e-6, 1e-3)], ids=["near1", "near0"])
def test_long_bfloat16_sequences_are_finite(decay_range):
    length, heads, size = 16384, 2, 16
    rng = np.random.default_rng(4)
    q, v = (jnp.asarray(rng.normal(size=(1, length, heads, size)), jnp.bfloat16) for _ in "qv")
    k = rng.normal(size=(1, length, heads, size))
    k = jnp.asarray(k / np.linalg.norm(k, axis=-1, keepdims=True), jnp.bfloat16)
    beta = jnp.asarray(rng.uniform(0, 2, (1, length, heads)), jnp.bfloat16)
    log_decay = jnp.asarray(np.log(rng.uniform(*decay_range, (1, length, heads))), jnp.bfloat16)

    @jax.jit
    def value_and_grads(q, k, v, beta, log_decay):
        def loss(q, k, v, beta, log_decay):
            output, final = delta_rule(q, k, v, beta, log_decay=log_decay, scale=0.25)
            return jnp.mean(output.astype(jnp.float32) ** 2) + jnp.mean(final)

        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))(q, k, v, beta, log_decay)

    value, grads = value_and_grads(q, k, v, beta, log_decay)
    assert np.isfinite(float(value))
    for grad in grads:
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_beta_above_one_gives_a_negative_eigenvalue():
    # One step from S₀ with unit key k and no input: S₁ = (I - β k kᵀ) S₀ flips the k
    # component of S₀ when β > 1.
    key = np.array([1.0, 0.0], np.float32)
    state = np.eye(2, dtype=np.float32)[None, None]
    q = k = key.reshape(1, 1, 1, 2)
    v = np.zeros((1, 1, 1, 2), np.float32)
    _, final = delta_rule(q, k, v, np.full((1, 1, 1), 1.5, np.float32), initial_state=state)
    np.testing.assert_allclose(final[0, 0], [[-0.5, 0.0], [0.0, 1.0]], **FLOAT32)


def test_bad_arguments_raise_clear_errors():
    q = jnp.zeros((1, 5, 2, 4))
    v = jnp.zeros((1, 5, 2, 3))
    beta = jnp.zeros((1, 5, 2))
    with pytest.raises(ValueError, match=r"beta must be \[B, T, H\] = \(1, 5, 2\)"):
        delta_rule(q, q, v, beta[..., None])
    with pytest.raises(ValueError, match=r"log_decay must be \[B, T, H\]"):
        delta_rule(q, q, v, beta, log_decay=q)
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, K, V\]"):
        delta_rule(q, q, v, beta, initial_state=jnp.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="'pallas' cannot run: .* not on cpu"):
        delta_rule(q, q, v, beta, implementation="pallas")
