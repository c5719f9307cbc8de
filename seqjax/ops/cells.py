"""Nonlinear recurrent cells and the one scan driver that runs them over a sequence.

A cell is a pure function ``cell(weights, state, gate_inputs_t) -> (new_state, output_t)``.
The input projection ``gate_inputs = x @ W + b`` has no recurrence, so layers compute it for
the whole sequence at once and the cell only adds the recurrent term. The gate inputs are one
array [B, T, G] or a tuple of one [B, T, N] array per gate: the tuple is split once for the
whole sequence, where XLA on CPU spent more on splitting each step's [B, G] slice than on the
rest of the step (a GRU forward at B=16, T=512, N=128: 12.8 ms pre-split, 30.9 ms split per
step). ``run_cell`` scans a cell over the gate inputs with an initial state, segment
resets and an optional reverse direction, and returns ``(outputs, final_state)`` like every
op in seqjax.

States and gate arithmetic are float32 whatever the input dtype.

Cells:
    elman:  h_t = tanh(u_t + R h_{t-1})                                   (Elman, 1990)
    lstm:   c_t = f_t ⊙ c_{t-1} + i_t ⊙ z_t,  h_t = o_t ⊙ tanh(c_t)      (Hochreiter &
            Schmidhuber, 1997; forget gate: Gers et al., 2000), with the variants of
            "LSTM: A Search Space Odyssey" (Greff et al., 2017): peepholes, a coupled
            input-forget gate (f_t = 1 - i_t) and no forget gate (f_t = 1).
    gru:    h_t = (1 - u_t) ⊙ h_{t-1} + u_t ⊙ n_t                         (Cho et al., 2014)
    slstm:  c_t = f_t c_{t-1} + exp(ĩ_t) z_t,  n_t = f_t n_{t-1} + exp(ĩ_t),  h_t = o_t c_t / n_t
            with a block-diagonal recurrence and a stabilizer              (Beck et al., 2024)
"""

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.ops import checks, deer, implementations, sequence_parallel
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

Cell = Callable[[PyTree, Array], tuple[PyTree, Array]]
IMPLEMENTATIONS = (implementations.REFERENCE, "deer", "quasi_deer")


def run_cell(
    cell: Cell,
    gate_inputs: Array | tuple[Array, ...],
    initial_state: PyTree,
    *,
    segment_starts: Array | None = None,
    reverse: bool = False,
    sequence_split: SequenceSplit | None = None,
    implementation: str | None = None,
    tolerance: float = 1e-6,
    max_iterations: int | None = None,
) -> tuple[Array, PyTree]:
    """Scans ``cell`` over the time axis of ``gate_inputs`` [B, T, G] (floating point), or of
    a tuple of such arrays (one per gate), which the cell then gets as a tuple of [B, G_i].

    ``initial_state`` is a pytree of [B, ...] arrays. Where ``segment_starts`` [B, T] is
    true the state is reset to zero before that token (with ``reverse=True``: the state
    carried from position p into p - 1 is dropped when p starts a segment).
    A nonlinear recurrence has no sequence-parallel form: a ``sequence_split`` whose axis
    has more than one device is an error.

    ``implementation``: "reference" (None) runs one step after another (``lax.scan``);
    "deer" and "quasi_deer" solve for all states at once by Newton iterations with the full
    Jacobian or its diagonal (seqjax.ops.deer), until no state moves by more than
    ``tolerance`` or after ``max_iterations`` (None: T, where they are exact).
    Returns ``(outputs [B, T, ...], final_state)``.
    """
    op = "run_cell"
    parts = gate_inputs if isinstance(gate_inputs, tuple) else (gate_inputs,)
    for part in parts:
        if jnp.ndim(part) != 3 or jnp.shape(part)[:2] != jnp.shape(parts[0])[:2]:
            raise ValueError(
                f"{op}: gate_inputs must be [B, T, G] (or a tuple of them, one B and T), got "
                f"shapes {[jnp.shape(p) for p in parts]}"
            )
        checks.floating(op, "gate_inputs", part)
    checks.nonempty(op, "gate_inputs", parts[0])
    if sequence_parallel.active_split(op, sequence_split) is not None:
        raise ValueError(
            f"{op}: a nonlinear recurrent cell cannot run sequence-parallel (each step needs "
            "the state the previous one computed); run it with sequence_split=None"
        )
    batch, length = parts[0].shape[:2]
    inputs = jax.tree.map(lambda g: jnp.swapaxes(g, 0, 1), gate_inputs)  # time major
    resets = checks.segment_starts(op, segment_starts, batch, length)
    if resets is None:
        step = cell
    else:
        if reverse:
            # Position p receives the state of p + 1, which is dropped when p + 1 starts.
            resets = jnp.concatenate([resets[:, 1:], jnp.zeros((batch, 1), bool)], axis=1)
        inputs = (inputs, jnp.swapaxes(resets, 0, 1))

        def step(state, inputs):
            gate_input, reset = inputs
            state = jax.tree.map(lambda s: jnp.where(reset[:, None], 0, s), state)
            return cell(state, gate_input)

    implementation = implementations.select(
        op, implementation, IMPLEMENTATIONS, preferred=(implementations.REFERENCE,)
    )
    if implementation == implementations.REFERENCE:
        final_state, outputs = jax.lax.scan(step, initial_state, inputs, reverse=reverse)
    else:
        jacobian = "full" if implementation == "deer" else "diagonal"
        outputs, final_state = _parallel_newton_cell(
            step, initial_state, inputs, reverse, jacobian, tolerance, max_iterations
        )
    return jnp.swapaxes(outputs, 0, 1), final_state


def _parallel_newton_cell(step, initial_state, inputs, reverse, jacobian, tolerance, iterations):
    """``run_cell``'s scan by seqjax.ops.deer: the state pytree as one float32 vector [B, S]
    per step, the states solved for, then every step's output from the state before it."""
    leaves, structure = jax.tree.flatten(initial_state)
    shapes = [leaf.shape[1:] for leaf in leaves]
    splits = list(itertools.accumulate(math.prod(shape) for shape in shapes))[:-1]

    def flat(state):
        parts = [leaf.reshape(leaf.shape[0], -1) for leaf in jax.tree.leaves(state)]
        return jnp.concatenate(parts, axis=-1).astype(jnp.float32)

    def unflat(vector):
        parts = jnp.split(vector, splits, axis=-1)
        leaves = [
            part.reshape(part.shape[:-1] + shape).astype(leaf.dtype)
            for part, shape, leaf in zip(parts, shapes, jax.tree.leaves(initial_state), strict=True)
        ]
        return jax.tree.unflatten(structure, leaves)

    if reverse:
        inputs = jax.tree.map(lambda t: jnp.flip(t, 0), inputs)
    start = flat(initial_state)
    states, _ = deer.parallel_newton(
        lambda vector, x: flat(step(unflat(vector), x)[0]), start, inputs,
        jacobian=jacobian, tolerance=tolerance, max_iterations=iterations,
    )  # fmt: skip
    previous = jnp.concatenate([start[None], states[:-1]], axis=0)
    _, outputs = jax.vmap(step)(unflat(previous), inputs)
    if reverse:
        outputs = jnp.flip(outputs, 0)
    return outputs, unflat(states[-1])


def _at_least_float32(x: Array) -> Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _gate_parts(gate_input, count: int) -> list[Array]:
    """A step's gate inputs as ``count`` float32 arrays [B, N]: the tuple as given, or the
    [B, count · N] array split."""
    if isinstance(gate_input, tuple):
        if len(gate_input) != count:
            raise ValueError(f"the cell takes {count} gate inputs, got {len(gate_input)}")
        return [_at_least_float32(g) for g in gate_input]
    return jnp.split(_at_least_float32(gate_input), count, axis=-1)


def elman_cell(recurrent_kernel: Array, state: Array, gate_input: Array) -> tuple[Array, Array]:
    """h_t = tanh(u_t + R h_{t-1}); ``recurrent_kernel`` R is [N, N], state h is [B, N]."""
    (gate_input,) = _gate_parts(gate_input, 1)
    hidden = jnp.tanh(gate_input + state @ recurrent_kernel)
    return hidden, hidden


class LSTMState(NamedTuple):
    hidden: Array  # h [B, N]
    cell: Array  # c [B, N]


class LSTMWeights(NamedTuple):
    recurrent_kernel: Array  # R [N, num_lstm_gates * N], gates in the order of lstm_gate_names
    peepholes: Array | None  # [num_lstm_gates - 1, N]: the input, forget (if any), output gates


def lstm_gate_names(*, coupled_input_forget: bool, forget_gate: bool) -> tuple[str, ...]:
    """The gates whose pre-activations an LSTM variant needs, in gate-input order."""
    if coupled_input_forget and not forget_gate:
        raise ValueError(
            "coupled_input_forget=True needs forget_gate=True (the forget gate is 1 - input)"
        )
    has_forget_input = forget_gate and not coupled_input_forget
    return ("cell_input", "input", *(("forget",) if has_forget_input else ()), "output")


def lstm_cell(
    weights: LSTMWeights,
    state: LSTMState,
    gate_input: Array,
    *,
    coupled_input_forget: bool = False,
    forget_gate: bool = True,
) -> tuple[LSTMState, Array]:
    """One LSTM step (Greff et al., 2017, vanilla LSTM and its CIFG / NFG / peephole variants).

        z = tanh(·), i = σ(· + p_i ⊙ c_{t-1}), f = σ(· + p_f ⊙ c_{t-1}) | 1 - i | 1,
        c_t = f ⊙ c_{t-1} + i ⊙ z,  o = σ(· + p_o ⊙ c_t),  h_t = o ⊙ tanh(c_t)

    where · is the gate input plus R h_{t-1}. ``gate_input`` is [B, num_gates * N] or one
    [B, N] per gate.
    """
    names = lstm_gate_names(coupled_input_forget=coupled_input_forget, forget_gate=forget_gate)
    recurrent = jnp.split(state.hidden @ weights.recurrent_kernel, len(names), axis=-1)
    pre = [x + r for x, r in zip(_gate_parts(gate_input, len(names)), recurrent, strict=True)]
    gates = dict(zip(names, pre, strict=True))
    peep = (
        dict(zip(names[1:], weights.peepholes, strict=True))
        if weights.peepholes is not None
        else {}
    )

    def peephole(name: str, cell: Array) -> Array:
        return gates[name] + peep[name] * cell if name in peep else gates[name]

    cell_input = jnp.tanh(gates["cell_input"])
    input_gate = jax.nn.sigmoid(peephole("input", state.cell))
    if coupled_input_forget:
        forget = 1.0 - input_gate
    elif forget_gate:
        forget = jax.nn.sigmoid(peephole("forget", state.cell))
    else:
        forget = 1.0
    cell = forget * state.cell + input_gate * cell_input
    hidden = jax.nn.sigmoid(peephole("output", cell)) * jnp.tanh(cell)
    return LSTMState(hidden, cell), hidden


class GRUWeights(NamedTuple):
    recurrent_kernel: Array  # R [N, 3N] for the reset, update and candidate gates
    candidate_bias: Array  # b_n [N], inside the reset product (reset_after form)


def gru_cell(
    weights: GRUWeights, state: Array, gate_input: Array, *, reset_after: bool = True
) -> tuple[Array, Array]:
    """One GRU step (Cho et al., 2014). ``gate_input`` [B, 3N] (or one [B, N] per gate)
    holds W x + b for r, u, n.

    r = σ(W_r x + R_r h),  u = σ(W_u x + R_u h),
    n = tanh(W_n x + r ⊙ (R_n h + b_n))       (reset_after, as in cuDNN)
      | tanh(W_n x + R_n (r ⊙ h) + b_n)       (the original form),
    h_t = (1 - u) ⊙ h_{t-1} + u ⊙ n
    """
    r_kernel, u_kernel, n_kernel = jnp.split(weights.recurrent_kernel, 3, axis=-1)
    x_reset, x_update, x_candidate = _gate_parts(gate_input, 3)
    reset = jax.nn.sigmoid(x_reset + state @ r_kernel)
    update = jax.nn.sigmoid(x_update + state @ u_kernel)
    if reset_after:
        candidate = jnp.tanh(x_candidate + reset * (state @ n_kernel + weights.candidate_bias))
    else:
        candidate = jnp.tanh(x_candidate + (reset * state) @ n_kernel + weights.candidate_bias)
    hidden = (1.0 - update) * state + update * candidate
    return hidden, hidden


class SLSTMState(NamedTuple):
    cell: Array  # c [B, N], divided by exp(m)
    normalizer: Array  # n [B, N], divided by exp(m)
    stabilizer: Array  # m [B, N]
    hidden: Array  # h [B, N]


SLSTM_GATES = ("cell_input", "input", "forget", "output")  # z, i, f, o in gate-input order


def slstm_cell(
    recurrent_kernel: Array, state: SLSTMState, gate_input: Array
) -> tuple[SLSTMState, Array]:
    """One sLSTM step ("xLSTM: Extended Long Short-Term Memory", Beck et al., 2024, Sec. 2.2).

        z̃, ĩ, f̃, õ = gate_input + R h_{t-1},   m_t = max(log σ(f̃) + m_{t-1}, ĩ)
        c_t = f' c_{t-1} + i' tanh(z̃),   n_t = f' n_{t-1} + i',   h_t = σ(õ) c_t / n_t

    with i' = exp(ĩ - m_t) and f' = exp(log σ(f̃) + m_{t-1} - m_t), both <= 1: the
    exponential input gate and sigmoid forget gate with c and n kept divided by exp(m_t).
    ``gate_input`` [B, 4N] (or one [B, N] per gate) holds W x + b for the gates of
    SLSTM_GATES, N each. The recurrence R is block-diagonal over heads:
    ``recurrent_kernel`` [heads, N/heads, 4·N/heads] maps a head's part of h to that head's
    four gates (gate-major within the head).

    An empty state (n = 0: the start, or a reset to zeros) takes m_t = ĩ_t, as in the xLSTM
    code, rather than max(log f + 0, ĩ): then i' = 1, and since one of i', f' is 1 at every
    step, n_t >= 1 from the first step on, so c_t / n_t never divides by an underflowed n.
    """
    heads, head_size, _ = recurrent_kernel.shape
    batch = state.hidden.shape[0]
    recurrent = jnp.einsum(
        "bhi,hig->bhg", state.hidden.reshape(batch, heads, head_size), recurrent_kernel
    )  # [B, heads, 4 · head_size] -> gate-major [B, 4N]
    recurrent = jnp.swapaxes(recurrent.reshape(batch, heads, 4, head_size), 1, 2)
    recurrent = jnp.split(recurrent.reshape(batch, 4 * heads * head_size), 4, axis=-1)
    cell_input, input_gate, forget_gate, output_gate = (
        x + r for x, r in zip(_gate_parts(gate_input, 4), recurrent, strict=True)
    )

    log_forget_and_state = jax.nn.log_sigmoid(forget_gate) + state.stabilizer
    empty = state.normalizer == 0
    stabilizer = jnp.where(empty, input_gate, jnp.maximum(log_forget_and_state, input_gate))
    input_weight = jnp.exp(input_gate - stabilizer)
    # Masked before exp: on an empty state the exponent may be large and positive.
    forget_weight = jnp.exp(jnp.where(empty, -jnp.inf, log_forget_and_state - stabilizer))
    cell = forget_weight * state.cell + input_weight * jnp.tanh(cell_input)
    normalizer = forget_weight * state.normalizer + input_weight
    hidden = jax.nn.sigmoid(output_gate) * cell / normalizer
    return SLSTMState(cell, normalizer, stabilizer, hidden), hidden
