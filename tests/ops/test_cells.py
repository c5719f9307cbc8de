"""The cells equal an independent NumPy implementation of their equations, and the scan
driver handles initial states, segment resets, the reverse direction and gate inputs given
as one array or one array per gate."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from seqjax.ops import cells

RTOL, ATOL = 1e-5, 1e-6  # float32 against float64 NumPy
B, T, N = 2, 7, 5


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(gate_inputs, h, c, R, peepholes, coupled, forget_gate):
    """Greff et al. 2017, written out per time step in float64."""
    outputs = []
    has_forget = forget_gate and not coupled
    for u in np.moveaxis(gate_inputs, 1, 0):
        pre = u + h @ R
        parts = np.split(pre, 4 if has_forget else 3, axis=-1)
        z_pre, i_pre = parts[0], parts[1]
        f_pre = parts[2] if has_forget else None
        o_pre = parts[-1]
        p_i, p_f, p_o = (
            (peepholes[0], peepholes[1] if has_forget else 0.0, peepholes[-1])
            if peepholes is not None
            else (0.0, 0.0, 0.0)
        )
        z = np.tanh(z_pre)
        i = sigmoid(i_pre + p_i * c)
        if coupled:
            f = 1.0 - i
        elif forget_gate:
            f = sigmoid(f_pre + p_f * c)
        else:
            f = 1.0
        c = f * c + i * z
        o = sigmoid(o_pre + p_o * c)
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, 1), h, c


def numpy_gru(gate_inputs, h, R, b_n, reset_after):
    outputs = []
    R_r, R_u, R_n = np.split(R, 3, axis=-1)
    for u in np.moveaxis(gate_inputs, 1, 0):
        x_r, x_u, x_n = np.split(u, 3, axis=-1)
        r = sigmoid(x_r + h @ R_r)
        z = sigmoid(x_u + h @ R_u)
        if reset_after:
            n = np.tanh(x_n + r * (h @ R_n + b_n))
        else:
            n = np.tanh(x_n + (r * h) @ R_n + b_n)
        h = (1 - z) * h + z * n
        outputs.append(h)
    return np.stack(outputs, 1), h


def numpy_elman(gate_inputs, h, R):
    outputs = []
    for u in np.moveaxis(gate_inputs, 1, 0):
        h = np.tanh(u + h @ R)
        outputs.append(h)
    return np.stack(outputs, 1), h


def random(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


LSTM_VARIANTS = [
    dict(peepholes=p, coupled_input_forget=c, forget_gate=f)
    for p, c, f in itertools.product([False, True], [False, True], [True, False])
    if not (c and not f)
]


@pytest.mark.parametrize("variant", LSTM_VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_lstm_matches_numpy(variant):
    rng = np.random.default_rng(0)
    names = cells.lstm_gate_names(
        coupled_input_forget=variant["coupled_input_forget"], forget_gate=variant["forget_gate"]
    )
    G = len(names)
    gate_inputs, R = random(rng, B, T, G * N), random(rng, N, G * N) * 0.5
    peepholes = random(rng, G - 1, N) if variant["peepholes"] else None
    h0, c0 = random(rng, B, N), random(rng, B, N)
    cell = lambda s, u: cells.lstm_cell(  # noqa: E731
        cells.LSTMWeights(R, peepholes),
        s,
        u,
        coupled_input_forget=variant["coupled_input_forget"],
        forget_gate=variant["forget_gate"],
    )
    outputs, final = cells.run_cell(cell, gate_inputs, cells.LSTMState(h0, c0))
    expected, h, c = numpy_lstm(
        gate_inputs.astype(np.float64), h0, c0, R, peepholes,
        variant["coupled_input_forget"], variant["forget_gate"],
    )  # fmt: skip
    np.testing.assert_allclose(outputs, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(final.hidden, h, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(final.cell, c, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_matches_numpy(reset_after):
    rng = np.random.default_rng(1)
    gate_inputs, R, b_n = random(rng, B, T, 3 * N), random(rng, N, 3 * N) * 0.5, random(rng, N)
    h0 = random(rng, B, N)
    cell = lambda s, u: cells.gru_cell(cells.GRUWeights(R, b_n), s, u, reset_after=reset_after)  # noqa: E731
    outputs, final = cells.run_cell(cell, gate_inputs, h0)
    expected, h = numpy_gru(gate_inputs.astype(np.float64), h0, R, b_n, reset_after)
    np.testing.assert_allclose(outputs, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(final, h, rtol=RTOL, atol=ATOL)


def test_elman_matches_numpy():
    rng = np.random.default_rng(2)
    gate_inputs, R, h0 = random(rng, B, T, N), random(rng, N, N) * 0.5, random(rng, B, N)
    outputs, final = cells.run_cell(lambda s, u: cells.elman_cell(R, s, u), gate_inputs, h0)
    expected, h = numpy_elman(gate_inputs.astype(np.float64), h0, R)
    np.testing.assert_allclose(outputs, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(final, h, rtol=RTOL, atol=ATOL)


def test_segment_resets_equal_separate_runs_forward_and_reverse():
    rng = np.random.default_rng(3)
    gate_inputs, R, h0 = random(rng, 1, T, N), random(rng, N, N) * 0.5, random(rng, 1, N)
    cell = lambda s, u: cells.elman_cell(R, s, u)  # noqa: E731
    split = 3
    starts = np.zeros((1, T), bool)
    starts[0, split] = True
    zeros = np.zeros_like(h0)

    packed, final = cells.run_cell(cell, gate_inputs, h0, segment_starts=starts)
    first, _ = cells.run_cell(cell, gate_inputs[:, :split], h0)
    second, second_final = cells.run_cell(cell, gate_inputs[:, split:], zeros)
    np.testing.assert_allclose(packed, np.concatenate([first, second], 1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(final, second_final, rtol=RTOL, atol=ATOL)

    # Reverse: the state flowing from position `split` into `split - 1` is dropped.
    packed, final = cells.run_cell(cell, gate_inputs, h0, segment_starts=starts, reverse=True)
    second, _ = cells.run_cell(cell, gate_inputs[:, split:], h0, reverse=True)
    first, first_final = cells.run_cell(cell, gate_inputs[:, :split], zeros, reverse=True)
    np.testing.assert_allclose(packed, np.concatenate([first, second], 1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(final, first_final, rtol=RTOL, atol=ATOL)


def test_reverse_equals_forward_on_flipped_sequence():
    rng = np.random.default_rng(4)
    gate_inputs, R, h0 = random(rng, B, T, N), random(rng, N, N) * 0.5, random(rng, B, N)
    cell = lambda s, u: cells.elman_cell(R, s, u)  # noqa: E731
    backward, final_backward = cells.run_cell(cell, gate_inputs, h0, reverse=True)
    forward, final_forward = cells.run_cell(cell, gate_inputs[:, ::-1], h0)
    np.testing.assert_allclose(backward, forward[:, ::-1], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(final_backward, final_forward, rtol=RTOL, atol=ATOL)


def test_lstm_gradients_match_finite_differences_including_initial_state():
    rng = np.random.default_rng(5)
    G = 4
    R = jnp.asarray(random(rng, N, G * N) * 0.5)
    peepholes = jnp.asarray(random(rng, G - 1, N))
    gate_inputs = jnp.asarray(random(rng, 1, 4, G * N))
    h0, c0 = jnp.asarray(random(rng, 1, N)), jnp.asarray(random(rng, 1, N))

    def loss(gate_inputs, R, peepholes, h0, c0):
        cell = lambda s, u: cells.lstm_cell(cells.LSTMWeights(R, peepholes), s, u)  # noqa: E731
        outputs, final = cells.run_cell(cell, gate_inputs, cells.LSTMState(h0, c0))
        return jnp.sum(outputs * 0.3) + jnp.sum(final.cell * 0.7)

    with jax.enable_x64(True) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64():
        args = jax.tree.map(lambda a: a.astype(jnp.float64), (gate_inputs, R, peepholes, h0, c0))
        check_grads(loss, args, order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="coupled_input_forget=True needs forget_gate=True"):
        cells.lstm_gate_names(coupled_input_forget=True, forget_gate=False)
    with pytest.raises(ValueError, match=r"gate_inputs must be \[B, T, G\]"):
        cells.run_cell(lambda s, u: (s, u), jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"segment_starts must be \[B, T\]"):
        cells.run_cell(
            lambda s, u: (s, u), jnp.zeros((2, 3, 1)), jnp.zeros((2, 1)),
            segment_starts=jnp.zeros((2, 4), bool),
        )  # fmt: skip


@pytest.mark.parametrize("implementation", ["reference", "quasi_deer"])
def test_gate_inputs_split_per_gate_equal_the_whole_array(implementation):
    """Each cell given its gate inputs as one [B, T, G] array or as one [B, T, N] per gate
    computes the same outputs, final state and gradients."""
    rng = np.random.default_rng(6)
    heads = 1
    weights = {
        "elman": (cells.elman_cell, jnp.asarray(random(rng, N, N) * 0.5), 1),
        "lstm": (cells.lstm_cell, cells.LSTMWeights(jnp.asarray(random(rng, N, 4 * N)), None), 4),
        "gru": (
            cells.gru_cell,
            cells.GRUWeights(jnp.asarray(random(rng, N, 3 * N)), jnp.ones(N)),
            3,
        ),
        "slstm": (cells.slstm_cell, jnp.asarray(random(rng, heads, N, 4 * N) * 0.5), 4),
    }
    states = {
        "elman": jnp.zeros((B, N)),
        "lstm": cells.LSTMState(jnp.zeros((B, N)), jnp.zeros((B, N))),
        "gru": jnp.zeros((B, N)),
        "slstm": cells.SLSTMState(*(jnp.zeros((B, N)),) * 4),
    }
    for name, (cell, cell_weights, count) in weights.items():
        gate_inputs = jnp.asarray(random(rng, B, T, count * N))

        def loss(gate_inputs, cell=cell, cell_weights=cell_weights, name=name):
            outputs, final = cells.run_cell(
                functools.partial(cell, cell_weights), gate_inputs, states[name],
                implementation=implementation,
            )  # fmt: skip
            value = jnp.sum(outputs**2) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(final))
            return value, (outputs, final)

        whole = jax.grad(loss, has_aux=True)(gate_inputs)

        def split_loss(gate_inputs, loss=loss, count=count):
            return loss(tuple(jnp.split(gate_inputs, count, axis=-1)))

        parts = jax.grad(split_loss, has_aux=True)(gate_inputs)
        jax.tree.map(
            lambda a, e: np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL), parts, whole
        )
    with pytest.raises(ValueError, match="the cell takes 3 gate inputs, got 2"):
        cells.gru_cell(weights["gru"][1], states["gru"], (jnp.zeros((B, N)),) * 2)
