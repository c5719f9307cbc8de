"""The gated linear-recurrent mixers (mamba, rg_lru, hgrn, min_gru, min_lstm) compute their
papers' equations: each whole module equals an explicit NumPy loop over time written from the
paper, using the module's own parameters; and the properties each paper relies on hold
(negative eigenvalues, RG-LRU's decay range and variance-preserving normalization, HGRN's
forget-gate lower bound, minLSTM's normalized gates).

The shared protocol invariants (pieces, token by token, causality, segments) are in
test_mixer_invariants.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_testing import apply, causal_conv, gelu_tanh, linear, param, sigmoid, silu, softplus
from tolerances import FLOAT32

from seqjax import layers
from seqjax.layers.hgrn import hgrn_forget_gate
from seqjax.layers.mamba import step_size_bias
from seqjax.layers.min_rnn import min_lstm_gates
from seqjax.layers.rg_lru import decay_logits_init, rg_lru, rg_lru_log_decay
from seqjax.ops.selective_scan import discretize, selective_scan

D_MODEL, BATCH, LENGTH = 8, 2, 7


def inputs(seed=0):
    return np.asarray(jax.random.normal(jax.random.key(seed), (BATCH, LENGTH, D_MODEL)))


def run(mixer, x):
    y, state = apply(mixer, x)
    return np.asarray(y), state


# --- mamba -----------------------------------------------------------------------------------


def numpy_mamba(mixer, x, negative_eigenvalues):
    """The Mamba block of Gu & Dao (2023), Algorithm 2, one token at a time."""
    u, z = np.split(linear(mixer.in_proj, x), 2, axis=-1)
    u = silu(causal_conv(mixer.conv, u))
    rank, n = mixer.dt_rank, mixer.state_size
    projected = linear(mixer.x_proj, u)
    low_rank, b_matrix = projected[..., :rank], projected[..., rank : rank + n]
    c_matrix = projected[..., rank + n :]
    delta = softplus(linear(mixer.dt_proj, low_rank))  # [B, T, E]
    a_matrix = -np.exp(param(mixer.log_decay_rate))  # [E, N]
    h = np.zeros((x.shape[0], mixer.inner_size, n))
    y = np.zeros_like(u)
    for t in range(x.shape[1]):
        decay = np.exp(delta[:, t, :, None] * a_matrix)
        if negative_eigenvalues:
            decay = 2 * decay - 1
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * b_matrix[:, t, None, :]
        y[:, t] = np.sum(h * c_matrix[:, t, None, :], axis=-1) + param(mixer.skip) * u[:, t]
    return linear(mixer.out_proj, y * silu(z)), h


@pytest.mark.parametrize("negative_eigenvalues", [False, True])
def test_mamba_equals_loop_of_s6_equations(negative_eigenvalues):
    # Large steps, so that decays span (0, 1) (or (-1, 1)) instead of staying near 1.
    options = dict(state_size=4, conv_width=3, dt_min=0.05, dt_max=2.0)
    mixer = layers.create(
        "mamba",
        d_model=D_MODEL,
        rngs=nnx.Rngs(0),
        negative_eigenvalues=negative_eigenvalues,
        **options,
    )
    x = inputs()
    y, state = run(mixer, x)
    expected_y, expected_h = numpy_mamba(mixer, x, negative_eigenvalues)
    np.testing.assert_allclose(y, expected_y, **FLOAT32)
    np.testing.assert_allclose(state["ssm"], expected_h, **FLOAT32)


def test_negative_eigenvalues_give_decays_in_minus_one_to_one():
    # Δ over the default initial range [0.001, 0.1] and the S4D-Real rates A = -(n + 1).
    delta = jax.nn.softplus(step_size_bias(jax.random.key(0), 256, 0.001, 0.1))
    rates = -jnp.broadcast_to(jnp.arange(1.0, 17.0), (256, 16))
    positive = np.asarray(discretize(delta, rates, negative_eigenvalues=False))
    negative = np.asarray(discretize(delta, rates, negative_eigenvalues=True))
    assert np.all((positive > 0) & (positive < 1))
    np.testing.assert_allclose(negative, 2 * positive - 1, **FLOAT32)
    assert np.all(np.abs(negative) <= 1)
    assert np.mean(negative < 0) > 0.05, "no decay is negative"


def test_negative_eigenvalues_let_the_state_flip_sign():
    """With a decay near -1 an impulse alternates in sign, which (0, 1) decays cannot do."""
    steps = 6
    u = jnp.zeros((1, steps, 1)).at[0, 0, 0].set(1.0)
    delta = jnp.full((1, steps, 1), 5.0)  # exp(-5) ≈ 0.007: decay ≈ -0.99
    ones = jnp.ones((1, steps, 1))
    y, _ = selective_scan(u, delta, -jnp.ones((1, 1)), ones, ones, negative_eigenvalues=True)
    signs = np.sign(np.asarray(y[0, :, 0]))
    np.testing.assert_array_equal(signs, [1, -1, 1, -1, 1, -1])


# --- rg_lru ----------------------------------------------------------------------------------


def numpy_rg_lru_gates(mixer, u):
    """The recurrence and input gates r_t, i_t of u: dense, or one block per head."""
    if mixer.num_heads is None:
        return np.split(sigmoid(linear(mixer.gates, u)), 2, axis=-1)
    kernel, bias = param(mixer.gate_kernel), param(mixer.gate_bias)
    blocks = u.reshape(*u.shape[:-1], mixer.num_heads, -1)
    logits = np.einsum("bthi,hio->btho", blocks, kernel) + bias
    r, i = np.split(sigmoid(logits), 2, axis=-1)
    return r.reshape(u.shape), i.reshape(u.shape)


def numpy_rg_lru_block(mixer, x):
    """Hawk's recurrent block with the RG-LRU of De et al. (2024), eqs. (1)-(4); the first
    token enters unscaled unless ``normalize_first_input`` (recurrentgemma's RG-LRU)."""
    gate = gelu_tanh(linear(mixer.gate_proj, x))
    u = causal_conv(mixer.conv, linear(mixer.input_proj, x))
    r, i = numpy_rg_lru_gates(mixer, u)
    a = sigmoid(param(mixer.decay_logits))
    h = np.zeros((x.shape[0], mixer.lru_width))
    out = np.zeros_like(u)
    for t in range(x.shape[1]):
        a_t = a ** (8 * r[:, t])
        scale = 1.0 if t == 0 and not mixer.normalize_first_input else np.sqrt(1 - a_t**2)
        h = a_t * h + scale * (i[:, t] * u[:, t])
        out[:, t] = h
    return linear(mixer.out_proj, out * gate), h


@pytest.mark.parametrize(
    "options",
    [{}, dict(num_heads=2), dict(normalize_first_input=True), dict(lru_width=12, num_heads=3)],
)
def test_rg_lru_block_equals_loop_of_paper_equations(options):
    # A wide initial decay range, so that a_t is not near 1 everywhere.
    mixer = layers.create("rg_lru", d_model=D_MODEL, rngs=nnx.Rngs(1), min_decay=0.3, **options)
    x = inputs(1)
    y, state = run(mixer, x)
    expected_y, expected_h = numpy_rg_lru_block(mixer, x)
    np.testing.assert_allclose(y, expected_y, **FLOAT32)
    np.testing.assert_allclose(state["rnn"], expected_h, **FLOAT32)
    assert ("at_start" in state) != mixer.normalize_first_input
    if "at_start" in state:
        np.testing.assert_array_equal(state["at_start"], False)


def test_rg_lru_resets_skip_the_input_normalization_and_drop_the_state():
    """At a reset h_t = i_t ⊙ x_t (transformers' RecurrentGemmaRglru), elsewhere the
    normalized recurrence."""
    x, gate_logits, input_logits = (
        np.asarray(jax.random.normal(jax.random.key(k), (BATCH, LENGTH, 3))) for k in (3, 4, 5)
    )
    decay_logits = np.asarray([0.0, 1.0, 2.0])
    resets = np.zeros((BATCH, LENGTH), bool)
    resets[0, [0, 4]] = resets[1, 2] = True
    initial = np.asarray(jax.random.normal(jax.random.key(6), (BATCH, 3)))
    h, final = rg_lru(
        x,
        gate_logits,
        input_logits,
        decay_logits,
        resets=resets,
        segment_starts=resets,
        initial_state=initial,
    )
    a_t = sigmoid(decay_logits) ** (8 * sigmoid(gate_logits))
    expected, state = np.zeros_like(x), initial
    for t in range(LENGTH):
        reset = resets[:, t, None]
        scale = np.where(reset, 1.0, np.sqrt(1 - a_t[:, t] ** 2))
        state = (
            np.where(reset, 0.0, a_t[:, t] * state) + scale * sigmoid(input_logits[:, t]) * x[:, t]
        )
        expected[:, t] = state
    np.testing.assert_allclose(h, expected, **FLOAT32)
    np.testing.assert_allclose(final, state, **FLOAT32)


def test_rg_lru_first_token_is_the_first_of_the_sequence_not_of_each_call():
    """Fed in pieces, only the first piece's first token enters unscaled: the pieces equal
    the whole, and a later piece from a fresh state differs from it."""
    mixer = layers.create("rg_lru", d_model=D_MODEL, rngs=nnx.Rngs(1), min_decay=0.3)
    x = inputs(2)
    whole, _ = run(mixer, x)
    first, state = apply(mixer, x[:, :3])
    second, _ = apply(mixer, x[:, 3:], state)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, **FLOAT32)
    fresh, _ = apply(mixer, x[:, 3:], mixer.init_state(BATCH))
    starts = np.zeros((BATCH, LENGTH - 3), bool)
    starts[:, 0] = True
    reset, _ = apply(mixer, x[:, 3:], state, jnp.asarray(starts))
    np.testing.assert_allclose(reset, fresh, **FLOAT32)
    assert np.max(np.abs(np.asarray(fresh) - whole[:, 3:])) > 1e-3


def test_rg_lru_decays_start_in_range_and_stay_in_zero_one():
    logits = decay_logits_init(jax.random.key(0), 1000, 0.9, 0.999)
    a = np.asarray(jax.nn.sigmoid(logits))
    assert np.all((a >= 0.9 - 1e-6) & (a <= 0.999 + 1e-6))
    gate_logits = jnp.linspace(-30.0, 30.0, 1000)[None, None]
    a_t = np.exp(np.asarray(rg_lru_log_decay(gate_logits, logits)))
    assert np.all((a_t > 0) & (a_t <= 1))
    assert np.all(a_t >= a**8 - 1e-6), "a_t = a^(8 r_t) must lie in [a^8, 1]"


@pytest.mark.parametrize("normalize_first_input", [False, True])
def test_rg_lru_normalization_keeps_unit_variance(normalize_first_input):
    """With i_t = 1, a stationary unit-variance input gives h of variance 1 at every step
    from an unscaled first input (1 - a^(2t+2) → 1 from a scaled one)."""
    batch, steps, width = 4096, 64, 3
    x = jax.random.normal(jax.random.key(2), (batch, steps, width))
    open_gate = jnp.full((batch, steps, width), 30.0)  # i_t = σ(30) = 1
    decay_logits = jnp.asarray([0.0, 1.0, 2.0])  # a = 0.5, 0.73, 0.88; a^8 ≤ 0.36
    resets = None if normalize_first_input else jnp.zeros((batch, steps), bool).at[:, 0].set(True)
    h, _ = rg_lru(x, jnp.zeros_like(x), open_gate, decay_logits, resets=resets)
    checked = np.asarray([0, 1, 8, steps - 1])
    variance = np.var(np.asarray(h)[:, checked], axis=0)  # [4, N]
    a_t = sigmoid(np.asarray(decay_logits)) ** 4  # r_t = σ(0) = 1/2
    steps_done = checked[:, None] + 1
    expected = 1 - a_t ** (2 * steps_done) if normalize_first_input else np.ones_like(variance)
    np.testing.assert_allclose(variance, expected, atol=0.08)  # sampling error ≈ 0.02


def test_rg_lru_gradients_stay_finite_when_the_decay_reaches_one():
    """r_t = 0 gives a_t = 1 and √(1 - a_t²) = 0, whose derivative is infinite."""
    x = jnp.ones((1, 3, 2))

    def loss(gate_logits):
        h, _ = rg_lru(x, gate_logits, jnp.zeros_like(x), jnp.zeros(2))
        return jnp.sum(h)

    grad = np.asarray(jax.grad(loss)(jnp.full((1, 3, 2), -200.0)))
    assert np.all(np.isfinite(grad))


# --- hgrn ------------------------------------------------------------------------------------


def numpy_hgrn(mixer, x, lower_bound):
    """HGRN (Qin et al., 2023), real-valued, with its output gate and LayerNorm."""
    c_logits, f_logits, g_logits = np.split(linear(mixer.input_proj, x), 3, axis=-1)
    forget = lower_bound + (1 - lower_bound) * sigmoid(f_logits)
    h = np.zeros((x.shape[0], mixer.hidden_size))
    out = np.zeros_like(c_logits)
    for t in range(x.shape[1]):
        h = forget[:, t] * h + (1 - forget[:, t]) * silu(c_logits[:, t])
        out[:, t] = h
    gated = sigmoid(g_logits) * out
    mean = gated.mean(-1, keepdims=True)
    normed = (gated - mean) / np.sqrt(((gated - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    normed = normed * param(mixer.norm.scale) + param(mixer.norm.bias)
    return linear(mixer.out_proj, normed), h


@pytest.mark.parametrize("lower_bound", [0.0, 0.8])
def test_hgrn_equals_loop_of_paper_equations(lower_bound):
    mixer = layers.create("hgrn", d_model=D_MODEL, rngs=nnx.Rngs(2), forget_lower_bound=lower_bound)
    x = inputs(2)
    y, state = run(mixer, x)
    expected_y, expected_h = numpy_hgrn(mixer, x, lower_bound)
    np.testing.assert_allclose(y, expected_y, **FLOAT32)
    np.testing.assert_allclose(state, expected_h, **FLOAT32)


def test_hgrn_forget_gates_respect_the_lower_bound():
    logits = jnp.linspace(-100.0, 100.0, 201)
    for lower_bound in (0.0, 0.5, 0.95):
        forget = np.asarray(hgrn_forget_gate(logits, lower_bound))
        assert np.all((forget >= lower_bound) & (forget <= 1.0))
        np.testing.assert_allclose(forget[0], lower_bound, **FLOAT32)  # fully closed
    with pytest.raises(ValueError, match="forget_lower_bound"):
        layers.create("hgrn", d_model=D_MODEL, rngs=nnx.Rngs(0), forget_lower_bound=1.0)


# --- min_gru, min_lstm -----------------------------------------------------------------------


def positive_candidate(v):
    return np.where(v >= 0, v + 0.5, sigmoid(v))


def numpy_min_rnn(mixer, x, name):
    """minGRU and minLSTM of Feng et al. (2024), Algorithms 5 and 7 (the g-candidate form)."""
    candidate, *gates = np.split(linear(mixer.input_proj, x), 3 if name == "min_lstm" else 2, -1)
    if name == "min_gru":
        update = sigmoid(gates[0])
        decay, input_weight = 1 - update, update
    else:
        forget, input_gate = sigmoid(gates[0]), sigmoid(gates[1])
        decay, input_weight = forget / (forget + input_gate), input_gate / (forget + input_gate)
    h = np.zeros((x.shape[0], mixer.hidden_size))
    out = np.zeros_like(candidate)
    for t in range(x.shape[1]):
        h = decay[:, t] * h + input_weight[:, t] * positive_candidate(candidate[:, t])
        out[:, t] = h
    return linear(mixer.out_proj, out), h


@pytest.mark.parametrize("name", ["min_gru", "min_lstm"])
def test_min_rnn_equals_loop_of_paper_equations(name):
    mixer = layers.create(name, d_model=D_MODEL, rngs=nnx.Rngs(3), hidden_size=12)
    x = 2.0 * inputs(3)  # candidates on both sides of g's kink at 0
    y, state = run(mixer, x)
    expected_y, expected_h = numpy_min_rnn(mixer, x, name)
    np.testing.assert_allclose(y, expected_y, **FLOAT32)
    np.testing.assert_allclose(state, expected_h, **FLOAT32)


def test_min_lstm_gates_are_normalized_even_when_both_are_tiny():
    forget_logits = jnp.asarray([-200.0, -200.0, 0.0, 3.0, -5.0])
    input_logits = jnp.asarray([-200.0, -190.0, 0.0, -1.0, 40.0])
    forget, input_gate = map(np.asarray, min_lstm_gates(forget_logits, input_logits))
    np.testing.assert_allclose(forget + input_gate, 1.0, **FLOAT32)
    np.testing.assert_allclose(forget[0], 0.5, **FLOAT32)  # σ(-200) underflows in float32
    f, i = sigmoid(np.asarray(forget_logits[2:])), sigmoid(np.asarray(input_logits[2:]))
    np.testing.assert_allclose(forget[2:], f / (f + i), **FLOAT32)
