"""generalized_delta_rule: the chunked form equals the reference on outputs, final
state and the gradients of every input (with a random cotangent on the final state), for
decays per key and per head, chunk sizes 16-64, ragged T and segment resets; the reference
equals a NumPy loop; it reduces to ``delta_rule``; long bfloat16 sequences stay finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import assert_relative, outputs_and_grads
from tolerances import CHUNKED_FLOAT32_RELATIVE, FLOAT32

from seqjax.ops.delta_rule import delta_rule, generalized_delta_rule


def normalized(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def inputs(seed, batch, length, heads, key_size, value_size, decay, decay_range=(0.5, 1.0)):
    """RWKV-7-like inputs: unit removal keys e, directions a ⊙ e with a in [0, 1]."""
    rng = np.random.default_rng(seed)
    shape = (batch, length, heads, key_size)
    removal_key = normalized(rng.normal(size=shape))
    decay_shape = {"head": shape[:3], "key": shape}[decay]
    arrays = dict(
        q=rng.normal(size=shape),
        k=rng.normal(size=shape) / np.sqrt(key_size),
        v=rng.normal(size=(batch, length, heads, value_size)),
        removal_key=removal_key,
        removal_direction=rng.uniform(0, 1, shape) * removal_key,
        log_decay=np.log(rng.uniform(*decay_range, decay_shape)),
        initial_state=rng.normal(size=(batch, heads, key_size, value_size)),
    )
    arrays = {name: value.astype(np.float32) for name, value in arrays.items()}
    return dict(arrays, segment_starts=rng.random((batch, length)) < 0.05)


@pytest.mark.parametrize(
    "chunk_size, decay, length", [(16, "key", 50), (32, "head", 77), (64, "key", 100)]
)
def test_chunked_equals_reference(chunk_size, decay, length):
    arrays = inputs(0, 2, length, 2, 8, 4, decay)
    options = dict(scale=0.5, chunk_size=chunk_size)
    expected = outputs_and_grads(
        generalized_delta_rule, arrays, implementation="reference", **options
    )
    actual = outputs_and_grads(generalized_delta_rule, arrays, implementation="chunked", **options)
    assert_relative(actual, expected, CHUNKED_FLOAT32_RELATIVE)


def test_reference_equals_numpy():
    arrays = inputs(1, 2, 11, 2, 3, 2, "key")
    output, final = generalized_delta_rule(**arrays, scale=0.5, implementation="reference")
    q, k, v, e, d, log_decay, S = (
        arrays[name].astype(np.float64)
        for name in ("q", "k", "v", "removal_key", "removal_direction", "log_decay")
        + ("initial_state",)
    )
    expected = np.zeros(output.shape)
    for t in range(q.shape[1]):
        S = np.where(arrays["segment_starts"][:, t, None, None, None], 0.0, S)
        for b in range(q.shape[0]):
            for h in range(q.shape[2]):
                S[b, h] = (
                    np.diag(np.exp(log_decay[b, t, h])) @ S[b, h]
                    - np.outer(d[b, t, h], e[b, t, h] @ S[b, h])
                    + np.outer(k[b, t, h], v[b, t, h])
                )
                expected[b, t, h] = 0.5 * S[b, h].T @ q[b, t, h]
    np.testing.assert_allclose(output, expected, **FLOAT32)
    np.testing.assert_allclose(final, S, **FLOAT32)


def test_reduces_to_the_delta_rule():
    # S_t = α(I - β k kᵀ) S + β k vᵀ is e = k, d = α β k with values β v. (The chunked forms
    # equal these references by the parity tests.)
    rng = np.random.default_rng(2)
    arrays = inputs(2, 2, 40, 2, 8, 4, "head")
    q, k, v = arrays["q"], normalized(arrays["k"]), arrays["v"]
    beta = rng.uniform(0, 2, q.shape[:3]).astype(np.float32)
    log_decay = arrays["log_decay"]
    common = dict(
        log_decay=log_decay, initial_state=arrays["initial_state"],
        segment_starts=arrays["segment_starts"], scale=0.5, implementation="reference",
    )  # fmt: skip
    direction = (np.exp(log_decay) * beta)[..., None] * k
    actual = generalized_delta_rule(q, k, beta[..., None] * v, k, direction, **common)
    expected = delta_rule(q, k, v, beta, **common)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **FLOAT32), actual, expected)


def test_long_bfloat16_sequences_are_finite():
    # Batch row 0 has decays near 1 (long memory), row 1 near 0 (cumulative log decays of
    # -400 to -900 over a chunk): one compilation covers both.
    length, heads, size = 16384, 2, 16
    rng = np.random.default_rng(4)
    shape = (1, length, heads, size)
    near_one, near_zero = (np.log(rng.uniform(*r, shape)) for r in ((0.9999, 1), (1e-6, 1e-3)))
    log_decay = jnp.asarray(np.concatenate([near_one, near_zero]), jnp.bfloat16)
    q, k, v = (jnp.asarray(rng.normal(size=(2, *shape[1:])), jnp.bfloat16) for _ in "qkv")
    removal_key = normalized(rng.normal(size=(2, *shape[1:])))
    removal_direction = jnp.asarray(rng.uniform(0, 1, removal_key.shape) * removal_key)
    removal_key = jnp.asarray(removal_key, jnp.bfloat16)
    removal_direction = removal_direction.astype(jnp.bfloat16)

    @jax.jit
    def value_and_grads(*arrays):
        def loss(q, k, v, e, d, log_decay):
            output, final = generalized_delta_rule(q, k, v, e, d, log_decay=log_decay, scale=0.25)
            return jnp.mean(output.astype(jnp.float32) ** 2) + jnp.mean(final)

        return jax.value_and_grad(loss, argnums=tuple(range(6)))(*arrays)

    value, grads = value_and_grads(q, k / 4, v, removal_key, removal_direction, log_decay)
    assert np.isfinite(float(value))
    for grad in grads:
        assert grad.dtype == jnp.bfloat16
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_bad_arguments_raise_clear_errors():
    q = jnp.zeros((1, 5, 2, 4))
    v = jnp.zeros((1, 5, 2, 3))
    with pytest.raises(ValueError, match=r"removal_direction must have q's shape"):
        generalized_delta_rule(q, q, v, q, q[..., :3])
    with pytest.raises(ValueError, match=r"log_decay must be \[B, T, H\]"):
        generalized_delta_rule(q, q, v, q, q, log_decay=v)
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, K, V\]"):
        generalized_delta_rule(q, q, v, q, q, initial_state=jnp.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="'pallas' cannot run: there are no Pallas kernels"):
        generalized_delta_rule(q, q, v, q, q, implementation="pallas")
