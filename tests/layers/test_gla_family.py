"""The gated-linear-attention mixers (retnet, gla, mamba2, hgrn2) compute their papers'
equations: each whole module equals an explicit NumPy loop over time written from the paper
with the module's own parameters (RetNet's in the paper's complex form, e^{inθ}); and the
properties each paper relies on hold (RetNet's fixed decays γ_h, GLA's decays σ^(1/τ) in
(0, 1), Mamba-2's one decay per head for the whole state, HGRN2's depth-dependent forget-gate
lower bound).

The shared protocol invariants (pieces, token by token, causality, segments) are in
test_mixer_invariants.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from layer_testing import apply, causal_conv, heads, linear, normalize, param, sigmoid, silu
from tolerances import FLOAT32

from seqjax import layers
from seqjax.layers.gla import gla_log_decay
from seqjax.layers.hgrn2 import hgrn2_gates
from seqjax.layers.mamba2 import state_space_duality

D_MODEL, BATCH, LENGTH = 16, 2, 7


def inputs(seed=0):
    return np.asarray(jax.random.normal(jax.random.key(seed), (BATCH, LENGTH, D_MODEL)))


# --- retnet ----------------------------------------------------------------------------------


def numpy_retnet(mixer, x, state, starts):
    """Multi-scale retention (Sun et al., 2023), recurrent form, with the paper's complex
    rotation: the pair (x_i, x_{i+K/2}) is the complex number x_i + i·x_{i+K/2}, rotated by
    e^{i n θ_i}, θ_i = 10000^(-2i/K), and the state is S_n = γ S_{n-1} + (K_n e^{inθ})^† v_n."""
    num_heads, key_size = mixer.num_heads, mixer.key_size
    half = key_size // 2
    gamma = 1.0 - 2.0 ** (-5.0 - np.arange(num_heads))
    theta = 10_000.0 ** (-2.0 * np.arange(half) / key_size)

    def complex_pairs(t):
        t = heads(t, key_size)
        return t[..., :half] + 1j * t[..., half:]

    q, k = complex_pairs(linear(mixer.query, x)), complex_pairs(linear(mixer.key, x))
    v = heads(linear(mixer.value, x), mixer.value_size)
    real_state = np.asarray(state["retention"], np.float64)
    s = real_state[:, :, :half] - 1j * real_state[:, :, half:]  # [B, H, K/2, V]
    position = np.asarray(state["next_position"]).copy()
    o = np.zeros(v.shape)
    for t in range(x.shape[1]):
        position = np.where(starts[:, t], 0, position)
        s = np.where(starts[:, t, None, None, None], 0.0, s)
        rotation = np.exp(1j * position[:, None, None] * theta)  # [B, 1, K/2]
        key = np.conj(k[:, t] * rotation)
        s = gamma[:, None, None] * s + key[..., None] * v[:, t, :, None, :]
        o[:, t] = np.real(np.einsum("bhi,bhiv->bhv", q[:, t] * rotation, s)) / np.sqrt(key_size)
        position = position + 1
    normed = normalize(o, 1e-5, center=True) * param(mixer.norm_scale) + param(mixer.norm_bias)
    gated = silu(linear(mixer.gate, x)) * normed.reshape(*x.shape[:2], -1)
    final_state = np.concatenate([np.real(s), -np.imag(s)], axis=2)
    return linear(mixer.output, gated), final_state, position


def test_retnet_equals_loop_of_paper_equations():
    mixer = layers.create("retnet", d_model=D_MODEL, rngs=nnx.Rngs(0), num_heads=2)
    x = inputs(0)
    # A carried state at positions 5 and 2, and a new segment at t = 4 in the second row.
    state = {
        "retention": np.random.default_rng(9).normal(size=(BATCH, 2, 8, 16)).astype(np.float32),
        "next_position": jnp.asarray([5, 2], jnp.int32),
    }
    starts = np.zeros((BATCH, LENGTH), bool)
    starts[1, 4] = True
    y, final = apply(mixer, x, state, jnp.asarray(starts))
    expected_y, expected_state, expected_position = numpy_retnet(mixer, x, state, starts)
    np.testing.assert_allclose(np.asarray(y), expected_y, **FLOAT32)
    np.testing.assert_allclose(np.asarray(final["retention"]), expected_state, **FLOAT32)
    np.testing.assert_array_equal(np.asarray(final["next_position"]), expected_position)
    np.testing.assert_array_equal(expected_position, [12, 3])


def test_retnet_decays_are_the_papers():
    mixer = layers.create("retnet", d_model=D_MODEL, rngs=nnx.Rngs(0), num_heads=4)
    expected = 1.0 - 2.0 ** (-5.0 - np.arange(4))  # 1 - 1/32, 1 - 1/64, 1 - 1/128, 1 - 1/256
    np.testing.assert_allclose(np.asarray(mixer.decays), expected, rtol=1e-7, atol=0)


# --- gla -------------------------------------------------------------------------------------


def numpy_gla(mixer, x):
    """GLA (Yang et al., 2024): α_t = σ(W_α2 W_α1 x_t + b_α)^(1/16) per key dimension,
    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ, o_t = S_tᵀ q_t / √K; RMS norm per head; swish gate."""
    key_size, value_size = mixer.key_size, mixer.value_size
    q, k = (heads(linear(p, x), key_size) for p in (mixer.query, mixer.key))
    v = heads(linear(mixer.value, x), value_size)
    gate_logits = heads(linear(mixer.decay_up, linear(mixer.decay_down, x)), key_size)
    alpha = sigmoid(gate_logits) ** (1 / 16)
    s = np.zeros((x.shape[0], mixer.num_heads, key_size, value_size))
    o = np.zeros(v.shape)
    for t in range(x.shape[1]):
        s = alpha[:, t, ..., None] * s + k[:, t, ..., None] * v[:, t, :, None, :]
        o[:, t] = np.einsum("bhk,bhkv->bhv", q[:, t], s) / np.sqrt(key_size)
    normed = normalize(o, 1e-5, center=False) * param(mixer.norm.scale)
    gated = silu(linear(mixer.output_gate, x)) * normed.reshape(*x.shape[:2], -1)
    return linear(mixer.output, gated), s


def test_gla_equals_loop_of_paper_equations():
    mixer = layers.create("gla", d_model=D_MODEL, rngs=nnx.Rngs(1), num_heads=2)
    x = inputs(1)
    y, state = apply(mixer, x)
    expected_y, expected_state = numpy_gla(mixer, x)
    np.testing.assert_allclose(np.asarray(y), expected_y, **FLOAT32)
    np.testing.assert_allclose(np.asarray(state), expected_state, **FLOAT32)


def test_gla_decays_are_sigmoid_to_the_one_over_tau_in_zero_one():
    logits = jnp.linspace(-12.0, 12.0, 97)
    decays = np.exp(np.asarray(gla_log_decay(logits), np.float64))
    assert np.all((decays > 0) & (decays < 1))
    np.testing.assert_allclose(decays**16, sigmoid(np.asarray(logits, np.float64)), rtol=1e-5)
    # The 1/τ power keeps even a nearly closed gate σ(-12) ≈ 6e-6 at a decay above 0.47.
    assert decays[0] > 0.47
    np.testing.assert_allclose(decays[48], 0.5 ** (1 / 16), rtol=1e-6)


# --- mamba2 ----------------------------------------------------------------------------------


def numpy_mamba2(mixer, x):
    """The Mamba-2 block (Dao & Gu, 2024), one token at a time: per head h, S_t =
    exp(Δ_t A_h) S_{t-1} + B_t (Δ_t x_t)ᵀ, y_t = S_tᵀ C_t + D_h x_t; RMSNorm(y ⊙ SiLU(z))."""
    inner, size, groups = mixer.inner_size, mixer.state_size, mixer.num_groups
    num_heads, head_dim = mixer.num_heads, mixer.head_dim
    projected = linear(mixer.in_proj, x)
    z, conv_input, dt = np.split(projected, [inner, inner + mixer.conv_size], axis=-1)
    conv = silu(causal_conv(mixer.conv, conv_input))
    u, b_matrix, c_matrix = np.split(conv, [inner, inner + groups * size], axis=-1)
    u, b_matrix, c_matrix = heads(u, head_dim), heads(b_matrix, size), heads(c_matrix, size)
    delta = np.logaddexp(0.0, dt + param(mixer.dt_bias))  # [B, T, H]
    a = -np.exp(param(mixer.log_decay_rate))  # [H]
    group_of_head = np.arange(num_heads) // (num_heads // groups)
    s = np.zeros((x.shape[0], num_heads, size, head_dim))
    y = np.zeros(u.shape)
    for t in range(x.shape[1]):
        for h in range(num_heads):
            g = group_of_head[h]
            decay = np.exp(delta[:, t, h] * a[h])[:, None, None]
            update = b_matrix[:, t, g, :, None] * (delta[:, t, h, None] * u[:, t, h])[:, None, :]
            s[:, h] = decay * s[:, h] + update
            y[:, t, h] = np.einsum("bnp,bn->bp", s[:, h], c_matrix[:, t, g])
            y[:, t, h] += param(mixer.skip)[h] * u[:, t, h]
    gated = y.reshape(*x.shape[:2], inner) * silu(z)
    normed = normalize(heads(gated, inner // groups), 1e-5, center=False).reshape(gated.shape)
    return linear(mixer.out_proj, normed * param(mixer.norm_scale)), s


def test_mamba2_equals_loop_of_ssd_equations():
    # Two groups of B, C over four heads; large steps, so that decays span (0, 1).
    options = dict(state_size=4, head_dim=8, num_groups=2, conv_width=3, dt_min=0.05, dt_max=1.0)
    mixer = layers.create("mamba2", d_model=D_MODEL, rngs=nnx.Rngs(2), **options)
    x = inputs(2)
    y, state = apply(mixer, x)
    expected_y, expected_s = numpy_mamba2(mixer, x)
    np.testing.assert_allclose(np.asarray(y), expected_y, **FLOAT32)
    np.testing.assert_allclose(np.asarray(state["ssm"]), expected_s, **FLOAT32)


def test_mamba2_decay_is_one_scalar_per_head_for_the_whole_state():
    """With no input, one step multiplies every entry S[n, p] of head h by exp(Δ A_h)."""
    heads_, size, head_dim = 3, 4, 5
    rng = np.random.default_rng(3)
    delta = rng.uniform(0.1, 2.0, (BATCH, 1, heads_)).astype(np.float32)
    log_rate = rng.normal(size=heads_).astype(np.float32)
    initial = rng.normal(size=(BATCH, heads_, size, head_dim)).astype(np.float32)
    matrix = rng.normal(size=(BATCH, 1, 1, size)).astype(np.float32)
    _, final = jax.jit(state_space_duality)(
        np.zeros((BATCH, 1, heads_, head_dim), np.float32),
        delta,
        log_rate,
        matrix,
        matrix,
        np.ones(heads_, np.float32),
        initial_state=initial,
    )
    ratio = np.asarray(final) / initial
    expected = np.exp(-delta[:, 0] * np.exp(log_rate.astype(np.float64)))  # [B, H]
    np.testing.assert_allclose(
        ratio, np.broadcast_to(expected[..., None, None], ratio.shape), **FLOAT32
    )


# --- hgrn2 -----------------------------------------------------------------------------------


def numpy_hgrn2(mixer, x, lower_bound):
    """HGRN2 (Qin et al., 2024): f = γ + (1-γ)σ(W_f x), S_t = diag(f_t) S_{t-1} + (1-f_t) i_tᵀ
    with i = SiLU(W_i x), y_t = S_tᵀ σ(W_o x_t); LayerNorm; output projection."""
    size = mixer.expand_ratio
    o_logits, f_logits, i_logits = np.split(linear(mixer.input_proj, x), 3, axis=-1)
    query, inputs_ = heads(sigmoid(o_logits), size), heads(silu(i_logits), size)
    forget = heads(lower_bound + (1 - lower_bound) * sigmoid(f_logits), size)
    s = np.zeros((x.shape[0], mixer.num_heads, size, size))
    y = np.zeros(query.shape)
    for t in range(x.shape[1]):
        outer = (1 - forget[:, t])[..., None] * inputs_[:, t, :, None, :]
        s = forget[:, t, ..., None] * s + outer
        y[:, t] = np.einsum("bhk,bhkv->bhv", query[:, t], s)
    normed = normalize(y.reshape(x.shape), 1e-5, center=True)
    normed = normed * param(mixer.norm.scale) + param(mixer.norm.bias)
    return linear(mixer.out_proj, normed), s


def test_hgrn2_equals_loop_of_paper_equations():
    # The second of two layers: lower bound 1/2.
    mixer = layers.create(
        "hgrn2", d_model=D_MODEL, rngs=nnx.Rngs(3), expand_ratio=8, layer_index=1, num_layers=2
    )
    assert mixer.forget_lower_bound == 0.5
    x = inputs(3)
    y, state = apply(mixer, x)
    expected_y, expected_state = numpy_hgrn2(mixer, x, 0.5)
    np.testing.assert_allclose(np.asarray(y), expected_y, **FLOAT32)
    np.testing.assert_allclose(np.asarray(state), expected_state, **FLOAT32)


def test_hgrn2_forget_gates_respect_the_lower_bound_at_depth():
    logits = jnp.linspace(-60.0, 60.0, 121)
    for layer_index, num_layers in ((0, 4), (1, 4), (3, 4), (5, 6)):
        mixer = layers.create(
            "hgrn2",
            d_model=D_MODEL,
            rngs=nnx.Rngs(0),
            layer_index=layer_index,
            num_layers=num_layers,
        )
        bound = layer_index / num_layers
        assert mixer.forget_lower_bound == bound
        log_forget, key = map(np.asarray, hgrn2_gates(logits, mixer.forget_lower_bound))
        forget = np.exp(log_forget.astype(np.float64))
        assert np.all((forget >= bound * (1 - 1e-6)) & (forget <= 1.0))
        np.testing.assert_allclose(forget[0], bound, rtol=1e-6, atol=1e-12)  # fully closed
        np.testing.assert_allclose(key, 1.0 - forget, **FLOAT32)  # input gate tied to forget
        assert key[0] > 0 and key[-1] >= 0
