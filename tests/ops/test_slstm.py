"""slstm_cell run by run_cell: equals a NumPy loop of the stabilized equations with the
block-diagonal recurrence written as one dense matrix (initial state, segment resets), equals
the paper's unstabilized equations in float64 with input gates of ±200 (where exp overflows
float32), and has finite gradients there."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from tolerances import FLOAT32

from seqjax.ops.cells import SLSTMState, run_cell, slstm_cell

BATCH, LENGTH, HEADS, HEAD_SIZE = 2, 12, 2, 3
SIZE = HEADS * HEAD_SIZE


def inputs(seed, *, input_gate_range=(-3.0, 3.0)):
    rng = np.random.default_rng(seed)
    gate_input = rng.normal(0.0, 1.5, (BATCH, LENGTH, 4, SIZE))
    gate_input[:, :, 1] = rng.uniform(*input_gate_range, (BATCH, LENGTH, SIZE))
    normalizer = rng.uniform(1.0, 3.0, (BATCH, SIZE))
    state = SLSTMState(
        cell=normalizer * rng.uniform(-1.0, 1.0, (BATCH, SIZE)),  # |c| <= n, as c/n averages tanh
        normalizer=normalizer,
        stabilizer=rng.normal(size=(BATCH, SIZE)),
        hidden=rng.uniform(-1.0, 1.0, (BATCH, SIZE)),
    )
    return dict(
        recurrent_kernel=rng.normal(0.0, 0.5, (HEADS, HEAD_SIZE, 4 * HEAD_SIZE)).astype(np.float32),
        gate_input=gate_input.reshape(BATCH, LENGTH, 4 * SIZE).astype(np.float32),
        state=SLSTMState(*(a.astype(np.float32) for a in state)),
        segment_starts=rng.random((BATCH, LENGTH)) < 0.15,
    )


@jax.jit
def run_slstm(recurrent_kernel, gate_input, state, segment_starts):
    cell = functools.partial(slstm_cell, recurrent_kernel)
    return run_cell(cell, gate_input, state, segment_starts=segment_starts)


def dense_recurrence(recurrent_kernel):
    """The block-diagonal R [heads, N/heads, 4·N/heads] as a dense [N, 4N] matrix whose
    columns follow the gate input: gate-major, then head, then unit."""
    dense = np.zeros((SIZE, 4, SIZE))
    for head in range(HEADS):
        rows = slice(head * HEAD_SIZE, (head + 1) * HEAD_SIZE)
        blocks = recurrent_kernel[head].reshape(HEAD_SIZE, 4, HEAD_SIZE)
        dense[rows, :, rows] = blocks
    return dense.reshape(SIZE, 4 * SIZE)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_slstm(recurrent_kernel, gate_input, state, segment_starts, *, stabilized=True):
    """The sLSTM in float64, one step at a time. ``stabilized``: the equations with m, c and
    n divided by exp(m), and m = ĩ on an empty state; otherwise the paper's plain equations
    c_t = f c_{t-1} + exp(ĩ) z, n_t = f n_{t-1} + exp(ĩ), h_t = σ(õ) c_t / n_t."""
    R = dense_recurrence(np.asarray(recurrent_kernel, np.float64))
    c, n, m, h = (np.asarray(a, np.float64) for a in state)
    if not stabilized:
        c, n = c * np.exp(m), n * np.exp(m)
    outputs = np.zeros((BATCH, LENGTH, SIZE))
    for t in range(LENGTH):
        reset = segment_starts[:, t, None]
        c, n, m, h = (np.where(reset, 0.0, a) for a in (c, n, m, h))
        z, i, f, o = np.split(gate_input[:, t] + h @ R, 4, axis=-1)
        log_f = -np.logaddexp(0.0, -f)
        if stabilized:
            new_m = np.where(n == 0, i, np.maximum(log_f + m, i))
            input_weight = np.exp(i - new_m)
            forget_weight = np.where(n == 0, 0.0, np.exp(log_f + m - new_m))
            m = new_m
        else:
            input_weight, forget_weight = np.exp(i), np.exp(log_f)
        c = forget_weight * c + input_weight * np.tanh(z)
        n = forget_weight * n + input_weight
        h = sigmoid(o) * c / n
        outputs[:, t] = h
    return outputs, SLSTMState(c, n, m, h)


def test_slstm_equals_numpy():
    arrays = inputs(0)
    outputs, final = run_slstm(**arrays)
    expected_outputs, expected_final = numpy_slstm(**arrays)
    np.testing.assert_allclose(outputs, expected_outputs, **FLOAT32)
    for actual, expected in zip(final, expected_final, strict=True):
        np.testing.assert_allclose(actual, expected, **FLOAT32)


def test_huge_input_gates_equal_the_plain_equations_with_finite_gradients():
    arrays = inputs(1, input_gate_range=(-200.0, 200.0))
    outputs, final = run_slstm(**arrays)
    expected_outputs, expected_final = numpy_slstm(**arrays, stabilized=False)
    np.testing.assert_allclose(outputs, expected_outputs, **FLOAT32)
    # The plain c and n range over e^±200; compare them divided by exp(m).
    scale = np.exp(-np.asarray(final.stabilizer, np.float64))
    np.testing.assert_allclose(final.cell, expected_final.cell * scale, **FLOAT32)
    np.testing.assert_allclose(final.normalizer, expected_final.normalizer * scale, **FLOAT32)

    def loss(recurrent_kernel, gate_input, state):
        outputs, final = run_slstm(recurrent_kernel, gate_input, state, arrays["segment_starts"])
        return jnp.sum(outputs**2) + sum(jnp.sum(s) for s in final)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(
        arrays["recurrent_kernel"], arrays["gate_input"], arrays["state"]
    )
    for grad in jax.tree.leaves(grads):
        assert np.all(np.isfinite(np.asarray(grad)))
