"""Nonlinear recurrences s_t = f(s_{t-1}, x_t) evaluated in parallel over the sequence by
Newton's method.

"Parallelizing non-linear sequential models over the sequence length" (Lim et al., 2024,
DEER) and "Towards Scalable and Stable Parallelization of Nonlinear RNNs" (Gonzalez et al.,
2024, quasi-DEER). From a guess s⁽ᵏ⁾ of all T states, each step is linearized where it stands,

    s_t⁽ᵏ⁺¹⁾ = J_t s_{t-1}⁽ᵏ⁺¹⁾ + f(s_{t-1}⁽ᵏ⁾, x_t) - J_t s_{t-1}⁽ᵏ⁾,
    J_t = ∂f/∂s (s_{t-1}⁽ᵏ⁾, x_t),

which is a linear recurrence over t, solved at once: a scan of affine maps with [S, S]
matrices for the full Jacobian ("full": DEER, Newton's method, quadratic convergence near
the solution), or ``linear_recurrence`` with the Jacobian's diagonal ("diagonal":
quasi-DEER, O(T·S) per solve, linear convergence). Whatever J, iteration k + 1 makes step k
exact, so T iterations always reach the sequential states; the loop stops when no state
moves by more than ``tolerance`` or after ``max_iterations``.

Gradients are implicit, at the solution: the adjoint δ_t = ∂L/∂s_t + J_{t+1}ᵀ δ_{t+1} is
solved the same way (full: the scan of the transposed Jacobians in reverse; diagonal:
quasi-Newton iterations whose residual uses exact vector-Jacobian products), then every
step's vector-Jacobian product gives the gradients of x_t and of the weights f closes over,
for all t at once.

The Jacobians are formed by forward-mode autodiff: S Jacobian-vector products per step and
iteration, [T, B, S, S] floats, and for "full" O(T·S³) work per solve: these forms trade
work for depth (O(log T) per iteration), which pays on parallel hardware, not on a CPU.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from seqjax.ops.scan import linear_recurrence
from seqjax.typing import Array

JACOBIANS = ("full", "diagonal")


def parallel_newton(
    step: Callable[[Array, Array], Array],
    initial_state: Array,
    inputs,
    *,
    jacobian: str = "full",
    tolerance: float = 1e-6,
    max_iterations: int | None = None,
) -> tuple[Array, Array]:
    """All states of s_t = step(s_{t-1}, inputs_t); returns ``(states [T, B, S],
    iterations)``.

    Args:
      step: ``step(state [B, S], inputs_t) -> state [B, S]``, float32; it may close over
        arrays (weights), which then get gradients.
      initial_state: s_{-1} [B, S].
      inputs: a pytree of time-major arrays [T, B, ...].
      jacobian: "full" (DEER) or "diagonal" (quasi-DEER).
      tolerance: stop when max |s⁽ᵏ⁺¹⁾ - s⁽ᵏ⁾| <= tolerance (also for the adjoint).
      max_iterations: at most this many iterations (None: T, where the solution is exact).
    """
    if jacobian not in JACOBIANS:
        raise ValueError(f"parallel_newton: jacobian must be one of {JACOBIANS}, got {jacobian!r}")
    length = jax.tree.leaves(inputs)[0].shape[0]
    max_iterations = length if max_iterations is None else max_iterations
    if max_iterations < 1:
        raise ValueError(f"parallel_newton: max_iterations must be >= 1, got {max_iterations}")

    def row(state, x):  # one batch row: state [S]
        return step(state[None], jax.tree.map(lambda t: t[None], x))[0]

    example = (initial_state[0], jax.tree.map(lambda t: t[0, 0], inputs))
    row, weights = jax.closure_convert(row, *example)
    options = (row, jacobian, float(tolerance), int(max_iterations))
    return _solve(options, initial_state, inputs, weights)


def _shifted(initial_state: Array, states: Array) -> Array:
    """s_{t-1} for every t: [T, B, S]."""
    return jnp.concatenate([initial_state[None], states[:-1]], axis=0)


def _per_step(row, weights):
    """f at every step and batch row: (previous [T, B, S], inputs [T, B, ...]) -> [T, B, S]."""
    return jax.vmap(jax.vmap(lambda s, x: row(s, x, *weights)))


def _linearized(row, weights, previous, inputs, jacobian):
    """f(s_{t-1}, x_t) [T, B, S] and J_t = ∂f/∂s there, [T, B, S, S] or its diagonal
    [T, B, S], from one forward-mode pass."""

    def value_twice(s, x):
        value = row(s, x, *weights)
        return value, value

    full, values = jax.vmap(jax.vmap(jax.jacfwd(value_twice, has_aux=True)))(previous, inputs)
    return values, full if jacobian == "full" else jnp.diagonal(full, axis1=-2, axis2=-1)


def _affine_scan(matrices: Array, offsets: Array, initial_state: Array, *, reverse=False):
    """s_t = A_t s_{t-1} + b_t over axis 0 (s_t = A_t s_{t+1} + b_t with ``reverse``) for
    [T, B, S, S] matrices, by an associative scan of the affine maps."""
    edge = -1 if reverse else 0
    first = jnp.einsum("bij,bj->bi", matrices[edge], initial_state) + offsets[edge]
    offsets = offsets.at[edge].set(first)

    def combine(earlier, later):
        a_earlier, b_earlier = earlier
        a_later, b_later = later
        return a_later @ a_earlier, jnp.einsum("...ij,...j->...i", a_later, b_earlier) + b_later

    _, states = jax.lax.associative_scan(combine, (matrices, offsets), reverse=reverse, axis=0)
    return states


def _linear_solve(jacobians, offsets, initial_state, jacobian, *, reverse=False):
    """s_t = J_t s_{t-1} + b_t (``reverse``: s_t = J_t s_{t+1} + b_t), time-major."""
    if jacobian == "full":
        return _affine_scan(jacobians, offsets, initial_state, reverse=reverse)
    states, _ = linear_recurrence(
        jnp.swapaxes(jacobians, 0, 1),
        jnp.swapaxes(offsets, 0, 1),
        initial_state=initial_state,
        reverse=reverse,
        implementation="associative",
    )
    return jnp.swapaxes(states, 0, 1)


def _iterate(update, guess, tolerance, max_iterations):
    """x ← update(x) until max |Δx| <= tolerance or max_iterations; (x, iterations)."""

    def running(carry):
        _, change, iteration = carry
        return (change > tolerance) & (iteration < max_iterations)

    def body(carry):
        current, _, iteration = carry
        new = update(current)
        # A non-finite state (from a non-finite input) never settles; the others decide.
        change = jnp.abs(new - current)
        return new, jnp.max(jnp.where(jnp.isfinite(change), change, 0)), iteration + 1

    solution, _, iterations = jax.lax.while_loop(
        running, body, (guess, jnp.array(jnp.inf, guess.dtype), jnp.array(0))
    )
    return solution, iterations


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve(options, initial_state, inputs, weights):
    row, jacobian, tolerance, max_iterations = options
    length = jax.tree.leaves(inputs)[0].shape[0]

    def newton(states):
        previous = _shifted(initial_state, states)
        values, jacobians = _linearized(row, weights, previous, inputs, jacobian)
        if jacobian == "full":
            linearized = values - jnp.einsum("tbij,tbj->tbi", jacobians, previous)
        else:
            linearized = values - jacobians * previous
        return _linear_solve(jacobians, linearized, initial_state, jacobian)

    guess = jnp.broadcast_to(initial_state, (length, *initial_state.shape))
    return _iterate(newton, guess, tolerance, max_iterations)


def _solve_forward(options, initial_state, inputs, weights):
    states, iterations = _solve(options, initial_state, inputs, weights)
    return (states, iterations), (initial_state, inputs, weights, states)


def _solve_backward(options, residuals, cotangents):
    row, jacobian, tolerance, max_iterations = options
    initial_state, inputs, weights, states = residuals
    state_cotangent, _ = cotangents
    previous = _shifted(initial_state, states)

    def pullback(adjoint):
        """The cotangents of every step's (s_{t-1}, x_t, weights) from δ_t."""
        _, vjp = jax.vjp(lambda s, x, w: _per_step(row, w)(s, x), previous, inputs, weights)
        return vjp(adjoint)

    _, jacobians = _linearized(row, weights, previous, inputs, jacobian)
    # The adjoint runs backwards: δ_t = A_t δ_{t+1} + ct_t with A_t = J_{t+1}ᵀ.
    shifted = jnp.concatenate([jacobians[1:], jnp.zeros_like(jacobians[:1])], axis=0)
    if jacobian == "full":
        transposed = jnp.swapaxes(shifted, -1, -2)
        adjoint = _affine_scan(
            transposed, state_cotangent, jnp.zeros_like(initial_state), reverse=True
        )
    else:
        # J_{t+1}ᵀ δ_{t+1} is the cotangent of s_t from step t + 1 (0 after the last step).
        def carried_back(adjoint):
            into_previous = pullback(adjoint)[0]
            return jnp.concatenate([into_previous[1:], jnp.zeros_like(into_previous[:1])], 0)

        def quasi_newton(adjoint):
            # The exact residual, with the diagonal part moved to the left-hand side.
            following = jnp.concatenate([adjoint[1:], jnp.zeros_like(adjoint[:1])], axis=0)
            offsets = state_cotangent + carried_back(adjoint) - shifted * following
            return _linear_solve(
                shifted, offsets, jnp.zeros_like(initial_state), jacobian, reverse=True
            )

        adjoint, _ = _iterate(quasi_newton, state_cotangent, tolerance, max_iterations)
    initial_cotangent, input_cotangents, weight_cotangents = pullback(adjoint)
    return initial_cotangent[0], input_cotangents, weight_cotangents


_solve.defvjp(_solve_forward, _solve_backward)
