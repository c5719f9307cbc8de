"""The xLSTM 7B mLSTM layer (``mlstm_7b``) computes the paper's equations: the module equals a
NumPy loop over time of Beck et al. (2025), written with the unstabilized memory (float64
holds exp(ĩ) at these sizes), using the module's own parameters.

The shared protocol invariants (pieces, token by token, causality, segments) are in
test_mixer_invariants.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_testing import apply, heads, linear, normalize, param, sigmoid
from tolerances import FLOAT32

from seqjax import layers

D_MODEL, BATCH, LENGTH, HEADS = 16, 2, 9, 2


def numpy_mlstm_7b(mixer, x, cap):
    """xLSTM 7B's mLSTM layer, one token at a time: soft-capped gates from x, the memory
    C_t = f_t C_{t-1} + exp(ĩ_t) k_t v_tᵀ, n_t = f_t n_{t-1} + exp(ĩ_t) k_t,
    h_t = C_tᵀ q_t / max(|n_tᵀ q_t|, 1) with k scaled by K^-1/2, a layer norm per head, the
    sigmoid output gate and the output projection."""
    qk, v = mixer.qk_width, mixer.v_width
    projected = linear(mixer.in_proj, x)
    q, k, values, o = np.split(projected, [qk, 2 * qk, 2 * qk + v], axis=-1)
    q, k, values = (
        heads(q, qk // HEADS),
        heads(k, qk // HEADS) / np.sqrt(qk // HEADS),
        heads(values, v // HEADS),
    )
    gates = linear(mixer.gate_proj, x)
    if cap is not None:
        gates = cap * np.tanh(gates / cap)
    input_gate, forget_gate = np.exp(gates[..., :HEADS]), sigmoid(gates[..., HEADS:])
    cell = np.zeros((x.shape[0], HEADS, qk // HEADS, v // HEADS))
    normalizer = np.zeros((x.shape[0], HEADS, qk // HEADS))
    h = np.zeros((*x.shape[:2], HEADS, v // HEADS))
    for t in range(x.shape[1]):
        i_t, f_t = input_gate[:, t, :, None], forget_gate[:, t, :, None]
        cell = (
            f_t[..., None] * cell + i_t[..., None] * k[:, t, :, :, None] * values[:, t, :, None, :]
        )
        normalizer = f_t * normalizer + i_t * k[:, t]
        numerator = np.einsum("bhk,bhkv->bhv", q[:, t], cell)
        denominator = np.abs(np.einsum("bhk,bhk->bh", q[:, t], normalizer))
        h[:, t] = numerator / np.maximum(denominator, 1.0)[..., None]
    normed = normalize(h, mixer.norm_epsilon, center=True).reshape(*x.shape[:2], v)
    y = linear(mixer.out_proj, sigmoid(o) * normed * param(mixer.norm_scale))
    return y, cell, normalizer


@pytest.mark.parametrize("cap", [4.0, None])
def test_mlstm_7b_equals_loop_of_its_equations(cap):
    mixer = layers.create(
        "mlstm_7b", d_model=D_MODEL, rngs=nnx.Rngs(0), num_heads=HEADS, gate_soft_cap=cap,
        normalizer_epsilon=0.0,  # the paper's equations; ε is tested with the op
    )  # fmt: skip
    keys = jax.random.split(jax.random.key(1), 4)
    # Gates that reach the cap's curve, raise the stabilizer and let |nᵀq| pass the floor.
    mixer.gate_proj.kernel[...] = jax.random.normal(keys[0], (D_MODEL, 2 * HEADS)) / 2
    mixer.gate_proj.bias[...] = jnp.array([-1.0, 2.0, 3.0, 1.0])
    mixer.norm_scale[...] = 1 + jax.random.normal(keys[1], (mixer.v_width,)) / 4
    x = np.asarray(jax.random.normal(keys[2], (BATCH, LENGTH, D_MODEL)))
    y, state = apply(mixer, x)
    expected_y, cell, normalizer = numpy_mlstm_7b(mixer, x, cap)
    np.testing.assert_allclose(np.asarray(y), expected_y, **FLOAT32)
    scale = np.exp(np.asarray(state.stabilizer, np.float64))
    np.testing.assert_allclose(state.cell * scale[..., None, None], cell, **FLOAT32)
    np.testing.assert_allclose(state.normalizer * scale[..., None], normalizer, **FLOAT32)


def test_mlstm_7b_widths_and_initial_gates():
    mixer = layers.create("mlstm_7b", d_model=32, rngs=nnx.Rngs(0), num_heads=4)
    assert (mixer.key_size, mixer.value_size) == (4, 8)  # 0.5 · 32 and 32 over 4 heads
    assert mixer.in_proj.kernel.shape == (32, 2 * 16 + 2 * 32)
    np.testing.assert_array_equal(param(mixer.gate_proj.kernel), 0.0)
    np.testing.assert_allclose(param(mixer.gate_proj.bias), [-10] * 4 + [3, 4, 5, 6])


def test_mlstm_7b_widths_the_heads_do_not_divide_are_refused():
    with pytest.raises(
        ValueError, match=r"num_heads \(4\) must divide qk_dim_factor \* d_model \(6\)"
    ):
        layers.create("mlstm_7b", d_model=24, rngs=nnx.Rngs(0), num_heads=4, qk_dim_factor=0.25)
