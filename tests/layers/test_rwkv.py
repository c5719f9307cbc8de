"""RWKV-6 and RWKV-7 time mixing and RWKV-7's channel mixing equal explicit NumPy loops of
their equations over the mixers' own (randomly perturbed) parameters, from a carried state;
RWKV-7's loop is written in RWKV's own [V, K] state convention, so a transposition mistake
fails it, and covers the value residual (the first layer's values carried to a later one);
decays lie in (0, 1)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_testing import sigmoid, silu
from tolerances import FLOAT32

from seqjax import layers
from seqjax.layers.rwkv import (
    GROUP_NORM_EPSILON,
    VALUE_FIRST,
    rwkv6_log_decay,
    rwkv7_log_decay,
)

D_MODEL, HEAD_SIZE, BATCH, LENGTH = 16, 8, 2, 7


def perturbed_mixer(name, **options):
    """The mixer with noise on every parameter, so zero-initialized low-rank factors count."""
    if "head_size" in layers.mixer_options(name):
        options = {"head_size": HEAD_SIZE, **options}
    mixer = layers.create(name, d_model=D_MODEL, rngs=nnx.Rngs(0), **options)
    params = nnx.state(mixer, nnx.Param)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    noisy = [p + 0.3 * jax.random.normal(key, p.shape) for p, key in zip(leaves, keys, strict=True)]
    nnx.update(mixer, jax.tree.unflatten(treedef, noisy))
    flat = nnx.to_flat_state(nnx.state(mixer, nnx.Param))
    return mixer, {".".join(map(str, path)): np.asarray(v, np.float64) for path, v in flat}


def inputs_and_state(mixer, run=lambda m, x, s: m(x, state=s)):
    """x, a carried state, and ``run(mixer, x, state)``'s outputs and final state."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(BATCH, LENGTH, D_MODEL)).astype(np.float32)
    heads = D_MODEL // HEAD_SIZE
    state = {
        "shift": rng.normal(size=(BATCH, D_MODEL)).astype(np.float32),
        "wkv": 0.5 * rng.normal(size=(BATCH, heads, HEAD_SIZE, HEAD_SIZE)).astype(np.float32),
    }
    state = {key: state[key] for key in mixer.init_state(1)}
    y, final = nnx.jit(run)(mixer, x, state)
    return x.astype(np.float64), jax.tree.map(lambda a: np.asarray(a, np.float64), state), y, final


def group_norm(o, scale, bias):  # o [H, V] per head
    mean = o.mean(-1, keepdims=True)
    normed = (o - mean) / np.sqrt(((o - mean) ** 2).mean(-1, keepdims=True) + GROUP_NORM_EPSILON)
    return normed.reshape(-1) * scale + bias


HEADS = D_MODEL // HEAD_SIZE


def assert_equals_token_loop(
    name,
    token_step,
    to_loop_state=np.copy,
    from_loop_state=np.copy,
    run=lambda m, x, s: m(x, state=s),
    **options,
):
    """The perturbed mixer ``name`` with ``options``, run from a carried state by ``run``,
    equals ``token_step`` applied to every token of every row in turn:
    ``token_step(p, x_t, x_{t-1}, S, b, t) -> (y_t, S)``, with the parameter p(name) and S
    in the loop's own state convention (None for a mixer with only a token shift)."""
    mixer, params = perturbed_mixer(name, **options)
    x, state, y, final = inputs_and_state(mixer, run)
    expected = np.zeros_like(x)
    for b in range(BATCH):
        previous = state["shift"][b]
        loop_state = to_loop_state(state["wkv"][b]) if "wkv" in state else None
        for t in range(LENGTH):
            expected[b, t], loop_state = token_step(
                params.__getitem__, x[b, t], previous, loop_state, b, t
            )
            previous = x[b, t]
        if "wkv" in state:
            np.testing.assert_allclose(final["wkv"][b], from_loop_state(loop_state), **FLOAT32)
    np.testing.assert_allclose(y, expected, **FLOAT32)
    np.testing.assert_allclose(final["shift"], x[:, -1], **FLOAT32)


def rwkv6_token(p, x_t, previous, S, b, t):  # S [H, K, V]
    delta = previous - x_t
    low_rank = np.tanh((x_t + delta * p("mix_x")) @ p("mix_down")).reshape(5, -1)
    mix = p("mix_base") + np.einsum("fr,frd->fd", low_rank, p("mix_up"))
    x_w, x_k, x_v, x_r, x_g = x_t + delta * mix
    r, k, v = (x_r @ p("receptance.kernel"), x_k @ p("key.kernel"), x_v @ p("value.kernel"))
    g = silu(x_g @ p("gate.kernel"))
    w = np.exp(-np.exp(p("decay_base") + np.tanh(x_w @ p("decay_down")) @ p("decay_up")))
    r, k, v, w = (u.reshape(HEADS, HEAD_SIZE) for u in (r, k, v, w))
    o = np.zeros((HEADS, HEAD_SIZE))
    for h in range(HEADS):
        kv = np.outer(k[h], v[h])
        o[h] = r[h] @ (S[h] + np.diag(p("bonus")[h]) @ kv)
        S[h] = np.diag(w[h]) @ S[h] + kv
    normed = group_norm(o, p("norm_scale"), p("norm_bias"))
    return (normed * g) @ p("output.kernel"), S


def rwkv7_token(p, x_t, previous, state_vk, b, t, value_first=None):  # RWKV's [H, V, K]
    x_r, x_w, x_k, x_v, x_a, x_g = x_t + (previous - x_t) * p("mix")
    r, k, v = (x_r @ p("receptance.kernel"), x_k @ p("key.kernel"), x_v @ p("value.kernel"))
    if value_first is not None:  # RWKV's v + (v_first - v) * sigmoid(v0 + (xv @ v1) @ v2)
        mix = p("value_residual_base") + (x_v @ p("value_residual_down")) @ p("value_residual_up")
        v = v + (value_first[b, t] - v) * sigmoid(mix)
    # RWKV's code: w = -softplus(-(w0 + tanh(x_w w1) w2)) - 0.5, decay exp(-exp(w)).
    w = p("decay_base") + np.tanh(x_w @ p("decay_down")) @ p("decay_up")
    w = np.exp(-np.exp(-np.log1p(np.exp(-w)) - 0.5))
    a = sigmoid(p("icl_base") + (x_a @ p("icl_down")) @ p("icl_up"))
    g = sigmoid(x_g @ p("gate_down")) @ p("gate_up")
    r, k, v, w, a = (u.reshape(HEADS, HEAD_SIZE) for u in (r, k, v, w, a))
    kk = k * p("removal_key_scale")
    kk = kk / np.linalg.norm(kk, axis=-1, keepdims=True)
    k = k * (1 + (a - 1) * p("icl_key_scale"))
    o = np.zeros((HEADS, HEAD_SIZE))
    for h in range(HEADS):
        vk = np.outer(v[h], k[h])
        ab = np.outer(-kk[h], kk[h] * a[h])
        state_vk[h] = state_vk[h] * w[h][None, :] + state_vk[h] @ ab + vk
        o[h] = state_vk[h] @ r[h]
    out = group_norm(o, p("norm_scale"), p("norm_bias"))
    out += ((r * k * p("bonus")).sum(-1, keepdims=True) * v).reshape(-1)
    return (out * g) @ p("output.kernel"), state_vk


def test_rwkv6_equals_a_loop_of_its_equations():
    assert_equals_token_loop("rwkv6", rwkv6_token)


def test_rwkv7_equals_a_loop_in_rwkv_state_convention():
    def transposed(state):
        return np.swapaxes(state, -1, -2).copy()

    assert_equals_token_loop("rwkv7", rwkv7_token, transposed, transposed)


FIRST_VALUES = np.random.default_rng(3).normal(size=(BATCH, LENGTH, D_MODEL))


def run_after_a_first_layer(mixer, x, state):
    """A later rwkv7 layer run as a stack runs it, with FIRST_VALUES in the carry."""
    carry = {VALUE_FIRST: jnp.asarray(FIRST_VALUES, jnp.float32)}
    y, final, carry_out = mixer.call_with_carry(x, carry, state=state)
    assert carry_out is carry  # a later layer passes the first layer's values on as they are
    return y, final


def test_rwkv7_value_residual_mixes_in_the_first_layers_values():
    assert_equals_token_loop(
        "rwkv7",
        functools.partial(rwkv7_token, value_first=FIRST_VALUES),
        lambda state: np.swapaxes(state, -1, -2).copy(),
        lambda state: np.swapaxes(state, -1, -2).copy(),
        run=run_after_a_first_layer,
        value_residual=True,
    )


def test_the_first_rwkv7_layer_leaves_its_values_and_output_as_a_plain_call():
    mixer, params = perturbed_mixer("rwkv7")
    x = np.random.default_rng(4).normal(size=(BATCH, LENGTH, D_MODEL)).astype(np.float32)
    y, state, carry = nnx.jit(lambda m, x: m.call_with_carry(x, {}))(mixer, x)
    plain_y, plain_state = nnx.jit(lambda m, x: m(x))(mixer, x)
    np.testing.assert_array_equal(y, plain_y)
    jax.tree.map(np.testing.assert_array_equal, state, plain_state)
    shifted = np.concatenate([np.zeros_like(x[:, :1]), x[:, :-1]], axis=1)
    x_v = x + (shifted - x) * params["mix"][3]
    np.testing.assert_allclose(carry[VALUE_FIRST], x_v @ params["value.kernel"], **FLOAT32)


def test_a_value_residual_layer_without_a_first_layer_is_refused():
    mixer = layers.create("rwkv7", d_model=D_MODEL, rngs=nnx.Rngs(0), value_residual=True)
    x = jnp.zeros((BATCH, LENGTH, D_MODEL))
    with pytest.raises(ValueError, match="value_residual .* only a stack has"):
        mixer(x)
    with pytest.raises(ValueError, match="this layer is the first rwkv7 layer"):
        mixer.call_with_carry(x, {})


def rwkv7_channel_mix_token(p, x_t, previous, state, b, t):
    k = np.maximum((x_t + (previous - x_t) * p("mix")) @ p("key.kernel"), 0.0) ** 2
    return k @ p("value.kernel"), state


def test_rwkv7_channel_mix_equals_a_loop_of_its_equation():
    assert_equals_token_loop("rwkv7_channel_mix", rwkv7_channel_mix_token, hidden_size=24)


def test_decays_lie_in_the_open_unit_interval():
    exponents = jnp.linspace(-20.0, 3.0, 101)
    rwkv6 = np.exp(np.asarray(rwkv6_log_decay(exponents), np.float64))
    assert np.all((rwkv6 > 0) & (rwkv6 < 1))
    # Huge exponents give a decay of 0 but a finite log decay (no inf - inf in the chunks).
    assert np.all(np.isfinite(rwkv6_log_decay(jnp.array([100.0, 1e30]))))
    rwkv7 = np.exp(np.asarray(rwkv7_log_decay(jnp.linspace(-10.0, 50.0, 101)), np.float64))
    assert np.all((rwkv7 >= np.exp(-np.exp(-0.5)) - 1e-7) & (rwkv7 < 1))
