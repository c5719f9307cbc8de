"""run_cell's parallel Newton forms ("deer" with the full Jacobian, "quasi_deer" with its
diagonal) equal the sequential reference on outputs, final states and the gradients of the
weights, gate inputs and initial state, for the Elman, LSTM (a two-part state), GRU and
sLSTM cells, forward and reverse, with segment resets; on a contractive GRU both converge
in fewer iterations than steps, Newton's in fewer than the quasi-Newton's; an iteration
cap of k makes exactly the first k steps exact; bad options are refused by name."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import FLOAT32

from seqjax.ops import cells, deer

B, T, N = 2, 24, 6


def normal(rng, *shape, scale=1.0):
    return jnp.asarray(scale * rng.normal(size=shape), jnp.float32)


def cell_case(name, rng):
    """(cell builder from the weights, weights, gate inputs [B, T, G], initial state)."""
    if name == "elman":
        return (
            cells.elman_cell,
            normal(rng, N, N, scale=0.4),
            normal(rng, B, T, N),
            normal(rng, B, N),
        )
    if name == "lstm":
        weights = cells.LSTMWeights(normal(rng, N, 4 * N, scale=0.4), None)
        state = cells.LSTMState(normal(rng, B, N), normal(rng, B, N))
        return cells.lstm_cell, weights, normal(rng, B, T, 4 * N), state
    if name == "gru":
        weights = cells.GRUWeights(normal(rng, N, 3 * N, scale=0.4), normal(rng, N))
        return cells.gru_cell, weights, normal(rng, B, T, 3 * N), normal(rng, B, N)
    heads = 2
    kernel = normal(rng, heads, N // heads, 4 * N // heads, scale=0.4)
    zeros = jnp.zeros((B, N))
    state = cells.SLSTMState(zeros, zeros, zeros, zeros)
    return cells.slstm_cell, kernel, normal(rng, B, T, 4 * N), state


FORMS = [
    (implementation, reverse)
    for implementation in cells.IMPLEMENTATIONS
    for reverse in (False, True)
]


def outputs_and_grads_of_every_form(name):
    """{(implementation, reverse): outputs, final state and the gradients of a fixed random
    linear functional of both}, all in one jitted call (one compilation per cell)."""
    rng = np.random.default_rng(0)
    cell, weights, gate_inputs, initial_state = cell_case(name, rng)
    starts = rng.random((B, T)) < 0.1
    output_weights = rng.normal(size=(B, T, N)).astype(np.float32)

    def loss(weights, gate_inputs, initial_state, implementation, reverse):
        outputs, final = cells.run_cell(
            functools.partial(cell, weights), gate_inputs, initial_state,
            segment_starts=starts, reverse=reverse, implementation=implementation,
        )  # fmt: skip
        final_sum = sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final))
        return jnp.sum(outputs * output_weights) + final_sum, (outputs, final)

    def every_form(weights, gate_inputs, initial_state):
        results = {}
        for form in FORMS:
            grad = jax.grad(functools.partial(loss, implementation=form[0], reverse=form[1]),
                            argnums=(0, 1, 2), has_aux=True)  # fmt: skip
            grads, (outputs, final) = grad(weights, gate_inputs, initial_state)
            if name == "slstm":  # the initial state is empty: its gradient is not compared
                grads = grads[:2]
            results[form] = {"outputs": outputs, "final_state": final, "grads": grads}
        return results

    return jax.jit(every_form)(weights, gate_inputs, initial_state)


@pytest.mark.parametrize("name", ["elman", "lstm", "gru", "slstm"])
def test_parallel_newton_equals_the_sequential_scan(name):
    results = outputs_and_grads_of_every_form(name)
    for implementation, reverse in FORMS:
        expected = results["reference", reverse]
        jax.tree.map(
            lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), **FLOAT32),
            results[implementation, reverse],
            expected,
        )


def gru_step(rng):
    cell, weights, gate_inputs, h0 = cell_case("gru", rng)
    inputs = jnp.swapaxes(gate_inputs, 0, 1)  # time major

    def step(state, x):
        return cell(weights, state, x)[0]

    return step, h0, inputs


def sequential_states(step, h0, inputs):
    return jax.lax.scan(lambda s, x: (step(s, x),) * 2, h0, inputs)[1]


def test_a_contractive_cell_converges_in_fewer_iterations_than_steps():
    """Newton's method (the full Jacobian) in fewer iterations than the quasi-Newton one."""
    step, h0, inputs = gru_step(np.random.default_rng(1))
    iterations = {}
    for jacobian in deer.JACOBIANS:
        states, iterations[jacobian] = deer.parallel_newton(step, h0, inputs, jacobian=jacobian)
        np.testing.assert_allclose(states, sequential_states(step, h0, inputs), **FLOAT32)
    assert 2 <= int(iterations["full"]) < int(iterations["diagonal"]) < T, iterations


def test_k_iterations_make_the_first_k_steps_exact():
    step, h0, inputs = gru_step(np.random.default_rng(2))
    expected = sequential_states(step, h0, inputs)
    states, iterations = deer.parallel_newton(
        step, h0, inputs, jacobian="diagonal", max_iterations=3
    )
    assert int(iterations) == 3
    np.testing.assert_allclose(states[:3], expected[:3], **FLOAT32)
    assert np.max(np.abs(np.asarray(states - expected))) > 1e-3  # not converged yet


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(jacobian="block"), r"jacobian must be one of \('full', 'diagonal'\)"),
        (dict(max_iterations=0), r"max_iterations must be >= 1"),
    ],
)
def test_bad_options_are_refused_by_name(options, message):
    step, h0, inputs = gru_step(np.random.default_rng(3))
    with pytest.raises(ValueError, match=f"parallel_newton: {message}"):
        deer.parallel_newton(step, h0, inputs, **options)


def test_an_unknown_implementation_is_refused():
    _, weights, gate_inputs, h0 = cell_case("elman", np.random.default_rng(4))
    with pytest.raises(ValueError, match="run_cell: unknown implementation 'newton'"):
        cells.run_cell(
            functools.partial(cells.elman_cell, weights), gate_inputs, h0, implementation="newton"
        )
