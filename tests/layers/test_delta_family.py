"""The delta-rule mixers (deltanet, gated_deltanet, deltaproduct) and forgetting attention
(fox_attention) compute their papers' equations: each module equals an explicit NumPy loop
over its own parameters, DeltaProduct with one Householder factor is DeltaNet, and FoX's
forget gate does what it should (f = 1 is plain attention without positions, f < 1 favours
recent tokens, f ≈ 0 cuts the past off).

The shared protocol invariants (pieces, token by token, causality, segments) are in
test_mixer_invariants.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_testing import apply, assert_trees_close, causal_conv, linear, param, sigmoid, silu
from tolerances import FLOAT32

from seqjax import layers
from seqjax.layers.deltanet import delta_beta

D_MODEL, BATCH, LENGTH = 8, 2, 7


def inputs(seed=0, length=LENGTH):
    return np.asarray(jax.random.normal(jax.random.key(seed), (BATCH, length, D_MODEL)))


def unit(v):
    return v / np.sqrt(np.sum(v * v, axis=-1, keepdims=True) + 1e-6)


def numpy_delta_block(mixer, x, norm_epsilon=1e-5):
    """The DeltaNet / Gated DeltaNet / DeltaProduct block, one token (and one Householder
    factor) at a time: S ← α S, then for j = 1..n_h S ← (I - β_j k_j k_jᵀ) S + β_j k_j v_jᵀ,
    then o = Sᵀ q / √K (value head h with query and key head h // (H_v / H)); per-head
    RMSNorm, SiLU output gate, output projection."""
    batch, length, _ = x.shape
    heads, key_size, value_size = mixer.num_heads, mixer.head_dim, mixer.value_dim
    value_heads, n = mixer.num_value_heads, mixer.num_householder
    group = value_heads // heads
    features = np.concatenate(
        [linear(mixer.q_proj, x), linear(mixer.k_proj, x), linear(mixer.v_proj, x)], axis=-1
    )
    features = silu(causal_conv(mixer.conv, features))
    q_size, k_size = heads * key_size, n * heads * key_size
    q = unit(features[..., :q_size].reshape(batch, length, heads, key_size))
    k = unit(features[..., q_size : q_size + k_size].reshape(batch, length, n, heads, key_size))
    q, k = np.repeat(q, group, axis=-2), np.repeat(k, group, axis=-2)
    v = features[..., q_size + k_size :].reshape(batch, length, n, value_heads, value_size)
    beta = sigmoid(linear(mixer.beta_proj, x)).reshape(batch, length, n, value_heads)
    if mixer.negative_eigenvalues:
        beta = 2 * beta
    decay = np.ones((batch, length, value_heads))
    if mixer.decay_proj is not None:
        step = np.logaddexp(0.0, linear(mixer.decay_proj, x) + param(mixer.dt_bias))
        decay = np.exp(-np.exp(param(mixer.log_decay_rate)) * step)

    state = np.zeros((batch, value_heads, key_size, value_size))
    out = np.zeros((batch, length, value_heads, value_size))
    for t in range(length):
        state = decay[:, t, :, None, None] * state
        for j in range(n):
            k_j, v_j, beta_j = k[:, t, j], v[:, t, j], beta[:, t, j, :, None, None]
            householder = np.eye(key_size) - beta_j * k_j[..., :, None] * k_j[..., None, :]
            state = householder @ state + beta_j * k_j[..., :, None] * v_j[..., None, :]
        out[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], state) / np.sqrt(key_size)

    rms = np.sqrt(np.mean(out**2, axis=-1, keepdims=True) + norm_epsilon)
    out = out / rms * param(mixer.norm.scale)
    if mixer.gate_proj is not None:
        out = out * silu(linear(mixer.gate_proj, x).reshape(out.shape))
    return linear(mixer.out_proj, out.reshape(batch, length, -1)), state


DELTA_CASES = [
    ("deltanet", dict(num_heads=2, negative_eigenvalues=True, output_gate=True, value_dim=3)),
    ("gated_deltanet", dict(num_heads=2, dt_min=0.05, dt_max=1.0)),
    ("gated_deltanet", dict(num_value_heads=4, value_dim=3, output_norm_epsilon=1e-2)),
    ("deltaproduct", dict(num_householder=3, gated=True, negative_eigenvalues=True, dt_max=1.0)),
    ("deltaproduct", dict(num_householder=2, gated=True, num_value_heads=6, dt_max=1.0)),
]


@pytest.mark.parametrize(
    "name, options",
    DELTA_CASES,
    ids=[f"{name}-{'-'.join(options)}" for name, options in DELTA_CASES],
)
def test_delta_mixers_equal_loop_of_their_equations(name, options):
    # chunk_size 4 < T, so the chunked form also carries its state across chunks.
    mixer = layers.create(name, d_model=D_MODEL, rngs=nnx.Rngs(0), chunk_size=4, **options)
    x = inputs()
    y, state = apply(mixer, x)
    epsilon = options.get("output_norm_epsilon", 1e-5)
    expected_y, expected_state = numpy_delta_block(mixer, x, epsilon)
    np.testing.assert_allclose(np.asarray(y), expected_y, **FLOAT32)
    np.testing.assert_allclose(np.asarray(state["recurrent"]), expected_state, **FLOAT32)


def test_value_heads_must_be_a_multiple_of_the_key_heads():
    with pytest.raises(ValueError, match="num_heads"):
        layers.create("gated_deltanet", d_model=D_MODEL, rngs=nnx.Rngs(0), num_value_heads=3)


def test_negative_eigenvalues_give_beta_in_zero_two_with_some_above_one():
    mixer = layers.create("deltanet", d_model=D_MODEL, rngs=nnx.Rngs(0), negative_eigenvalues=True)
    x = jnp.asarray(inputs(3, length=64), jnp.float32)
    beta = np.asarray(delta_beta(mixer.beta_proj(x), negative_eigenvalues=True))
    assert np.all((beta > 0) & (beta < 2))
    assert np.mean(beta > 1) > 0.2, "too few β above 1: no negative eigenvalues at init"
    assert np.mean(beta < 1) > 0.2


def test_deltaproduct_with_one_householder_factor_is_gated_deltanet():
    deltanet = layers.create("gated_deltanet", d_model=D_MODEL, rngs=nnx.Rngs(0), num_heads=2)
    options = dict(num_heads=2, num_householder=1, gated=True, output_gate=True)
    product = layers.create("deltaproduct", d_model=D_MODEL, rngs=nnx.Rngs(1), **options)
    nnx.update(product, nnx.state(deltanet, nnx.Param))
    x = jnp.asarray(inputs(2), jnp.float32)
    segment_starts = jnp.zeros((BATCH, LENGTH), bool).at[:, 4].set(True)
    expected = apply(deltanet, x, None, segment_starts)
    assert_trees_close(apply(product, x, None, segment_starts), expected)


# --- fox_attention ---------------------------------------------------------------------------


def fox_with_attention_parameters(forget_bias, **options):
    """A fox_attention mixer and a plain attention mixer (no rotary) sharing parameters."""
    common = dict(d_model=D_MODEL, num_heads=2, cache_length=16)
    attention = layers.create("attention", rngs=nnx.Rngs(0), rotary=False, **common)
    fox = layers.create(
        "fox_attention", rngs=nnx.Rngs(1), forget_bias=forget_bias, **common, **options
    )
    nnx.update(fox, nnx.state(attention, nnx.Param))
    return fox, attention


def test_fox_with_forget_gate_one_is_attention_without_positions():
    fox, attention = fox_with_attention_parameters(forget_bias=1e4)  # log σ(1e4) = 0
    x = jnp.asarray(inputs(4), jnp.float32)
    expected, _ = apply(attention, x)
    np.testing.assert_allclose(np.asarray(apply(fox, x)[0]), np.asarray(expected), **FLOAT32)
    # Also through the cache: two pieces with the state passed between them.
    first, state = apply(fox, x[:, :3])
    second, _ = apply(fox, x[:, 3:], state)
    pieces = jnp.concatenate([first, second], axis=1)
    np.testing.assert_allclose(np.asarray(pieces), np.asarray(expected), **FLOAT32)
    # The paper's initial bias 0 (f ≈ 0.5) does change the outputs.
    default_fox, _ = fox_with_attention_parameters(forget_bias=0.0)
    assert np.max(np.abs(np.asarray(apply(default_fox, x)[0] - expected))) > 1e-2


def test_fox_constant_forget_gate_weights_keys_geometrically_by_age():
    """With equal scores (zero queries) plain attention averages the values uniformly;
    a constant gate f gives key j the weight ∝ f^(i - j) for query i."""
    forget = 0.6
    fox, _ = fox_with_attention_parameters(forget_bias=float(np.log(forget / (1 - forget))))
    fox.query.kernel[...] = jnp.zeros_like(fox.query.kernel[...])
    fox.forget_gate.kernel[...] = jnp.zeros_like(fox.forget_gate.kernel[...])
    x = inputs(5)
    y, _ = apply(fox, x)

    values = np.split(linear(fox.key_value, x), 2, axis=-1)[1]  # [B, T, H * K]
    age = np.arange(LENGTH)[:, None] - np.arange(LENGTH)[None, :]
    weights = np.where(age >= 0, forget ** np.maximum(age, 0), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    expected = linear(fox.output, np.einsum("ij,bjc->bic", weights, values))
    np.testing.assert_allclose(np.asarray(y), expected, **FLOAT32)
    assert weights[-1, -1] > 5 * weights[-1, 0], "recent keys should dominate"


def test_fox_forget_gate_near_zero_cuts_off_the_past():
    """A token whose gate is ≈ 0 (a marker feature drives the logit to -30) hides every key
    before it, so later outputs equal a fresh run that starts at that token; before it the
    gate is ≈ 1 and the outputs are plain attention's."""
    fox, attention = fox_with_attention_parameters(forget_bias=30.0)
    fox.forget_gate.kernel[...] = jnp.zeros_like(fox.forget_gate.kernel[...]).at[0].set(-30.0)
    cut = 4
    x = jnp.asarray(inputs(6), jnp.float32).at[:, :, 0].set(0.0).at[:, cut, 0].set(2.0)
    y, _ = apply(fox, x)
    fresh, _ = apply(fox, x[:, cut:])
    np.testing.assert_allclose(np.asarray(y[:, cut:]), np.asarray(fresh), **FLOAT32)
    plain, _ = apply(attention, x)
    np.testing.assert_allclose(np.asarray(y[:, :cut]), np.asarray(plain[:, :cut]), **FLOAT32)
    assert np.max(np.abs(np.asarray(y[:, cut + 1 :] - plain[:, cut + 1 :]))) > 1e-2


def test_fox_output_gate_multiplies_the_attended_values():
    fox, attention = fox_with_attention_parameters(forget_bias=1e4, output_gate=True)
    x = jnp.asarray(inputs(7), jnp.float32)
    attended, _ = nnx.jit(lambda mixer, x: mixer.attend(x))(attention, x)
    gate = jax.nn.sigmoid(fox.output_gate(x))
    expected = attention.output(attended.reshape(BATCH, LENGTH, -1) * gate)
    np.testing.assert_allclose(np.asarray(apply(fox, x)[0]), np.asarray(expected), **FLOAT32)
