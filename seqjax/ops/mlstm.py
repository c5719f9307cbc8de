"""The mLSTM: a matrix memory with an exponential input gate, a normalizer and a stabilizer.

"xLSTM: Extended Long Short-Term Memory" (Beck et al., 2024), eqs. 19-27. Per head, with
input gate exp(ĩ_t) and forget gate f_t = σ(f̃_t) from their pre-activations:

    C_t = f_t C_{t-1} + exp(ĩ_t) k_t v_tᵀ,   n_t = f_t n_{t-1} + exp(ĩ_t) k_t
    h_t = C_tᵀ q_t / (max(|n_tᵀ q_t|, 1) + ε)

exp(ĩ_t) overflows float32 for ĩ_t > 88, so the state is kept divided by exp(m_t) with the
stabilizer m_t = max(log f_t + m_{t-1}, ĩ_t): C_t = f' C_{t-1} + i' k_t v_tᵀ with
i' = exp(ĩ_t - m_t), f' = exp(log f_t + m_{t-1} - m_t), both <= 1, and
h_t = C_tᵀ q_t / (max(|n_tᵀ q_t|, exp(-m_t)) + ε), which for ε = 0 (the paper's, the
default) does not depend on the choice of m. xLSTM 7B ("xLSTM 7B: A Recurrent LLM for Fast
and Efficient Inference", Beck et al., 2025) adds ε = 1e-6 to the stabilized denominator,
as written, so ``epsilon`` is added there.

    "reference"  the stabilized recurrence, one step at a time
    "parallel"   the paper's quadratic form: h_i = Σ_j exp(D_ij - m_i) (q_i·k_j) v_j / ...
                 with D_ij = F_i - F_j + ĩ_j (F the cumulative log f) and m_i the row maximum;
                 materializes [T, T], for short sequences
    "chunked"    the parallel form inside chunks of C steps and the (C, n, m) recurrence
                 across them, the stabilizer carried from chunk to chunk;
                 O(T·C·(K + V) + T·K·V)
    "pallas"     not yet available

Conventions:
- No 1/√K: the op computes the equations for the q and k it is given; the paper divides k
  by √K, which is the caller's job (the ``mlstm`` mixer does it).
- The state is ``MLSTMState(cell=C, normalizer=n, stabilizer=m)``, C and n divided by
  exp(m). It starts, and restarts at each segment start, at C = 0, n = 0, m = 0 (as in the
  xLSTM code; with C = n = 0 any m describes the same memory).
- Every form returns the same final m, the recurrent one: the max-plus recurrence has the
  closed form m_t = max(m_0 + F_t, max_{j <= t} F_t - F_j + ĩ_j), which the parallel and
  chunked forms compute directly. So the final states of all forms (and of a sequence fed
  in pieces) agree entry by entry, not only up to the exp(m) scaling.
- All arithmetic is float32 and every exponent is <= 0, except in the floor exp(-m), which
  is clipped to [exp(-80), exp(80)] (FLOOR_EXPONENT_LIMIT) so that it neither overflows
  nor underflows: m < -80 (input gates below -80) gives h ≈ 0 (|h| < e^-80 |Cᵀq|) rather
  than 0 · ∞, and m > 103, where exp(-m) is 0 in float32, keeps a positive floor, so that
  q = 0 (or a padded step) gives h = 0 rather than 0 / 0. The clip changes h only where
  |nᵀq| < e^-80, 35 orders of magnitude below the normalizer's scale. The division's
  derivative is taken as (dx - h dy) / y, which stays finite where y² underflows.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seqjax.ops import checks, finite, implementations, sequence_parallel
from seqjax.ops.chunking import cumulative_sum, scan_over_chunks
from seqjax.ops.implementations import REFERENCE
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

IMPLEMENTATIONS = (REFERENCE, "chunked", "parallel", "pallas")
FLOOR_EXPONENT_LIMIT = 80.0  # float32 spans about exp(±88)


class MLSTMState(NamedTuple):
    cell: Array  # C [B, H, K, V], divided by exp(m)
    normalizer: Array  # n [B, H, K], divided by exp(m)
    stabilizer: Array  # m [B, H]


def zero_mlstm_state(batch: int, heads: int, key_size: int, value_size: int) -> MLSTMState:
    """The empty memory C = 0, n = 0, m = 0, in float32."""
    return MLSTMState(
        jnp.zeros((batch, heads, key_size, value_size), jnp.float32),
        jnp.zeros((batch, heads, key_size), jnp.float32),
        jnp.zeros((batch, heads), jnp.float32),
    )


def mlstm(
    q: Array,
    k: Array,
    v: Array,
    input_gate: Array,
    forget_gate: Array,
    *,
    initial_state: MLSTMState | None = None,
    segment_starts: Array | None = None,
    chunk_size: int = 64,
    epsilon: float = 0.0,
    implementation: str | None = None,
    sequence_split: SequenceSplit | None = None,
) -> tuple[Array, MLSTMState]:
    """Runs the stabilized mLSTM of the module docstring.

    Args:
      q, k: [B, T, H, K] (k already scaled as the model wants, e.g. by K**-0.5).
      v: [B, T, H, V].  All floating point (seqjax.ops.checks), as are the gates and state.
      input_gate: ĩ [B, T, H], the pre-activation of the exponential input gate exp(ĩ).
      forget_gate: f̃ [B, T, H], the pre-activation of the sigmoid forget gate σ(f̃).
      initial_state: an ``MLSTMState`` with C [B, H, K, V], n [B, H, K], m [B, H]
        (``zero_mlstm_state`` if None).
      segment_starts: bool [B, T]; the state is reset to zero before each true position.
      chunk_size: C of the chunked form.
      epsilon: ε >= 0 added to the stabilized denominator (0: the paper's).
      implementation: one of IMPLEMENTATIONS, or None for "chunked".
      sequence_split: run sequence-parallel over this mesh axis (seqjax.ops.sequence_parallel).

    Returns:
      h [B, T, H, V] in v's dtype, and the final ``MLSTMState`` in float32.
    """
    op = "mlstm"
    gates = {"input_gate": input_gate, "forget_gate": forget_gate}
    batch, length, heads, key_size, value_size = checks.head_inputs(op, q, k, v, per_head=gates)
    if initial_state is None:
        initial_state = zero_mlstm_state(batch, heads, key_size, value_size)
    initial_state = _check_state(initial_state, batch, heads, key_size, value_size)
    segment_starts = checks.segment_starts(op, segment_starts, batch, length)
    checks.at_least_one(op, "chunk_size", chunk_size)
    if not epsilon >= 0:
        raise ValueError(f"mlstm: epsilon must be >= 0, got {epsilon!r}")
    implementation = implementations.select(
        op, implementation, IMPLEMENTATIONS, preferred=("chunked",),
        cannot_run={"pallas": "there are no Pallas kernels for mlstm yet"},
    )  # fmt: skip
    starts = jnp.zeros((batch, length), bool) if segment_starts is None else segment_starts
    run = functools.partial(
        _run, implementation=implementation, chunk_size=chunk_size, epsilon=float(epsilon)
    )
    if (split := sequence_parallel.active_split(op, sequence_split)) is not None:

        def local(q, k, v, input_gate, forget_gate, starts, state):
            return run(state, q, k, v, input_gate, forget_gate, starts)

        log_forget = jax.nn.log_sigmoid(jnp.asarray(forget_gate, jnp.float32))
        output, final_state = sequence_parallel.split_mlstm(
            local, split, (q, k, v, input_gate, forget_gate), log_forget, starts, initial_state
        )
    else:
        output, final_state = run(initial_state, q, k, v, input_gate, forget_gate, starts)
    return output.astype(v.dtype), final_state


@functools.partial(jax.jit, static_argnames=("implementation", "chunk_size", "epsilon"))
def _run(state, q, k, v, input_gate, forget_gate, starts, *, implementation, chunk_size, epsilon):
    """The chosen form in float32, compiled as one unit (called eagerly, the parallel form
    would otherwise compile op by op)."""
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    log_forget = jax.nn.log_sigmoid(f32(forget_gate))  # log σ(f̃) without overflow
    arrays = (f32(q), f32(k), f32(v), f32(input_gate), log_forget, starts)
    if implementation == REFERENCE:
        return _recurrent(state, *arrays, epsilon=epsilon)
    chunk = functools.partial(_chunk, epsilon=epsilon)
    if implementation == "parallel" or q.shape[1] <= chunk_size:
        # One chunk is the parallel form; no chunk loop needed, but the chunk loop's
        # treatment of non-finite inputs (seqjax.ops.finite).
        floating, nonfinite = finite.zero_nonfinite(*arrays[:5])
        output, state = chunk(state, *floating, starts, jnp.ones_like(starts))
        return finite.nan_from_first(nonfinite, output, state)
    # Padded steps of the last chunk are marked invalid: they must not raise m.
    return scan_over_chunks(chunk, state, (*arrays, jnp.ones_like(starts)), chunk_size=chunk_size)


def _check_state(state, batch, heads, key_size, value_size) -> MLSTMState:
    state = MLSTMState(*state)
    expected = MLSTMState(
        ((batch, heads, key_size, value_size), "[B, H, K, V]"),
        ((batch, heads, key_size), "[B, H, K]"),
        ((batch, heads), "[B, H]"),
    )
    for name, array, (shape, layout) in zip(MLSTMState._fields, state, expected, strict=True):
        checks.shape("mlstm", f"initial_state.{name}", array, shape, layout)
        checks.floating("mlstm", f"initial_state.{name}", array)
    return MLSTMState(*(jnp.asarray(s, jnp.float32) for s in state))


def _normalize(
    numerator: Array, query_normalizer: Array, stabilizer: Array, epsilon: float
) -> Array:
    """h = Cᵀq / (max(|nᵀq|, exp(-m)) + ε): the paper's max(|ñᵀq|, 1) in units of exp(-m).
    ``numerator`` is [..., V], the others [...]."""
    floor = jnp.exp(jnp.clip(-stabilizer, -FLOOR_EXPONENT_LIMIT, FLOOR_EXPONENT_LIMIT))
    denominator = jnp.maximum(jnp.abs(query_normalizer), floor) + epsilon
    return _divide(numerator, denominator[..., None])


@jax.custom_jvp
def _divide(x: Array, y: Array) -> Array:
    """x / y with the derivative (dx - (x / y) dy) / y. The default one, dx / y - x dy / y²,
    gives 0 · ∞ = NaN where y² underflows (y < 1e-19) even when x = 0, as for q = 0."""
    return x / y


@_divide.defjvp
def _divide_jvp(primals, tangents):
    (x, y), (dx, dy) = primals, tangents
    quotient = x / y
    return quotient, (dx - quotient * dy) / y


def _recurrent(state, q, k, v, input_gate, log_forget, starts, *, epsilon):
    """The reference: the stabilized recurrence, one step at a time, time-major."""

    def step(state, inputs):
        q_t, k_t, v_t, input_gate_t, log_forget_t, start_t = inputs  # [B, H, ·], [B]
        cell, normalizer, stabilizer = (
            jnp.where(start_t.reshape(-1, *(1,) * (s.ndim - 1)), 0.0, s) for s in state
        )
        new_stabilizer = jnp.maximum(log_forget_t + stabilizer, input_gate_t)
        input_weight = jnp.exp(input_gate_t - new_stabilizer)  # i'
        forget_weight = jnp.exp(log_forget_t + stabilizer - new_stabilizer)  # f'
        cell = forget_weight[..., None, None] * cell + input_weight[..., None, None] * (
            k_t[..., :, None] * v_t[..., None, :]
        )
        normalizer = forget_weight[..., None] * normalizer + input_weight[..., None] * k_t
        h_t = _normalize(
            jnp.einsum("bhk,bhkv->bhv", q_t, cell),
            jnp.einsum("bhk,bhk->bh", q_t, normalizer),
            new_stabilizer,
            epsilon,
        )
        return MLSTMState(cell, normalizer, new_stabilizer), h_t

    time_major = [jnp.swapaxes(t, 0, 1) for t in (q, k, v, input_gate, log_forget, starts)]
    final_state, output = jax.lax.scan(step, state, time_major)
    return jnp.swapaxes(output, 0, 1), final_state


def _chunk(state, q, k, v, input_gate, log_forget, starts, valid, *, epsilon):
    """The parallel form over one chunk of L steps, as [B, L, H, ·] arrays, starting from
    ``state``; ``valid`` [B, L] is false on padding. Returns h [B, L, H, V] and the state
    after the chunk's last step."""
    positions = jnp.arange(q.shape[1])
    segment = jnp.cumsum(starts, axis=1)  # segment index within the chunk; 0 = carried in
    # F_i = Σ_{s <= i in the chunk and in i's segment} log f_s: F_i - F_j of one segment
    # sums its own gates, not an earlier segment's cancelled up to rounding.
    cumulative = cumulative_sum(log_forget, segment)
    carried = segment == 0
    same_segment = (positions[:, None] >= positions[None, :]) & (
        segment[:, :, None] == segment[:, None, :]
    )  # [B, Li, Lj]: j <= i in i's segment

    # The log weight at row i of the state its segment starts from: F_i, plus m_0 for the
    # carried segment (other segments start from m = 0).
    start_log_weight = cumulative + jnp.where(carried[..., None], state.stabilizer[:, None], 0.0)

    # D_ij = F_i - F_j + ĩ_j for j <= i in i's segment; m_i = max(start weight, max_j D_ij).
    log_weights = cumulative[:, :, None] - cumulative[:, None, :] + input_gate[:, None, :]
    mask = same_segment & valid[:, None, :]
    log_weights = jnp.where(mask[..., None], log_weights, -jnp.inf)  # [B, Li, Lj, H]
    stabilizer = jnp.maximum(start_log_weight, jnp.max(log_weights, axis=2))  # [B, L, H]

    weights = jnp.exp(log_weights - stabilizer[:, :, None])
    scores = jnp.where(mask[..., None], jnp.einsum("bihk,bjhk->bijh", q, k) * weights, 0.0)
    numerator = jnp.einsum("bijh,bjhv->bihv", scores, v)
    query_normalizer = jnp.sum(scores, axis=2)
    # Rows of the carried segment also read the entering state.
    state_log_weight = start_log_weight - stabilizer  # <= 0
    state_weight = jnp.exp(jnp.where(carried[..., None], state_log_weight, -jnp.inf))
    numerator += state_weight[..., None] * jnp.einsum("bihk,bhkv->bihv", q, state.cell)
    query_normalizer += state_weight * jnp.einsum("bihk,bhk->bih", q, state.normalizer)
    output = _normalize(numerator, query_normalizer, stabilizer, epsilon)

    # The state leaving: the last row's stabilizer (padding leaves F and m unchanged), the
    # keys of the last segment and, if no segment started, the entering state.
    final_stabilizer = stabilizer[:, -1]  # [B, H]
    in_last_segment = (segment == segment[:, -1:]) & valid
    key_log_weight = cumulative[:, -1:] - cumulative + input_gate - final_stabilizer[:, None]
    key_weight = jnp.exp(jnp.where(in_last_segment[..., None], key_log_weight, -jnp.inf))
    state_decay = jnp.exp(jnp.where(carried[:, -1:], state_log_weight[:, -1], -jnp.inf))
    cell = state_decay[..., None, None] * state.cell + jnp.einsum(
        "bjh,bjhk,bjhv->bhkv", key_weight, k, v
    )
    normalizer = state_decay[..., None] * state.normalizer + jnp.einsum(
        "bjh,bjhk->bhk", key_weight, k
    )
    return output, MLSTMState(cell, normalizer, final_stabilizer)
