"""The (gated) delta rule: a matrix state that is corrected, not only accumulated.

    S_t = exp(log_decay_t) (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ      S_t: [K, V]
    o_t = scale · S_tᵀ q_t

DeltaNet (Schlag et al. 2021; Yang et al. 2024, "Parallelizing Linear Transformers with the
Delta Rule over Sequence Length") has no decay; Gated DeltaNet (Yang et al. 2025) a scalar
decay per head. β in [0, 2]: above 1 the transition I - β k kᵀ has a negative eigenvalue
(for unit-norm keys), which lets the state track parity ("Unlocking State-Tracking in
Linear RNNs Through Negative Eigenvalues", Grazzi et al. 2025).

    "reference"  the recurrence above, one step at a time
    "chunked"    chunks of C steps in the WY / UT-transform form below
    "pallas"     the kernels of kernels_pallas/chunked_delta_rule (TPU and GPU; no
                 segment_starts); not available for generalized_delta_rule

The chunked form rewrites each step as a gated linear-attention step with a corrected value
u_t = β_t (v_t - exp(log_decay_t) S_{t-1}ᵀ k_t), so S_t = exp(log_decay_t) S_{t-1} + k_t u_tᵀ.
Inside a chunk with cumulative log decay b and entering state S₀, the u's solve the unit
lower-triangular system

    (I + A) U = diag(β) (V - diag(exp(b)) K S₀),   A_ij = β_i exp(b_i - b_j) k_i·k_j, j < i,

(I + A is inverted in matmuls by block doubling), after which outputs and the leaving state
are those of gated linear attention with values U.

``generalized_delta_rule`` (below) is the diagonal-plus-rank-one form of RWKV-7, with a decay
per key and separate removal key and direction; the same derivation carries over with the
decays kept per key (see its docstring).
"""

import functools

import jax
import jax.numpy as jnp

import kernels_pallas.chunked_delta_rule as chunked_delta_rule_kernels
from seqjax.ops import checks, finite, implementations, sequence_parallel
from seqjax.ops.chunking import cumulative_sum, scan_over_chunks
from seqjax.ops.decayed_scores import decayed_scores
from seqjax.ops.implementations import REFERENCE
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

IMPLEMENTATIONS = (REFERENCE, "chunked", "pallas")


def delta_rule(
    q: Array,
    k: Array,
    v: Array,
    beta: Array,
    *,
    log_decay: Array | None = None,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    implementation: str | None = None,
    sequence_split: SequenceSplit | None = None,
    debug_checks: bool = False,
) -> tuple[Array, Array]:
    """Runs S_t = exp(log_decay_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = scale S_tᵀ q_t.

    Args:
      q, k: [B, T, H, K] (keys are usually L2-normalized by the caller).  v: [B, T, H, V].
        All floating point (seqjax.ops.checks).
      beta: [B, T, H], in [0, 2].
      log_decay: None or [B, T, H], values <= 0.
      initial_state: [B, H, K, V] (zeros if None).
      segment_starts: bool [B, T]; the state is reset to zero before each true position.
      scale: multiplies the output; default 1.
      chunk_size: C of the chunked form.
      implementation: one of IMPLEMENTATIONS, or None for the best available.
      sequence_split: run sequence-parallel over this mesh axis (seqjax.ops.sequence_parallel).
      debug_checks: check the domains of traced beta and log decays with checkify
        (seqjax.ops.checks).

    Returns:
      o [B, T, H, V] in v's dtype, and the final state [B, H, K, V] in float32.
    """
    op = "delta_rule"
    batch, length, heads, _, _ = checks.head_inputs(
        op, q, k, v, per_head={"beta": beta}, log_decay=log_decay, per_key_decay=False,
        initial_state=initial_state,
    )  # fmt: skip
    segment_starts = checks.segment_starts(op, segment_starts, batch, length)
    checks.at_least_one(op, "chunk_size", chunk_size)
    checks.in_range(op, "beta", beta, low=0.0, high=2.0, debug_checks=debug_checks)
    checks.in_range(op, "log_decay", log_decay, high=0.0, debug_checks=debug_checks)
    implementation = implementations.select_chunked(
        op, implementation, IMPLEMENTATIONS, chunked_delta_rule_kernels,
        segment_starts=segment_starts, chunk_size=chunk_size,
    )  # fmt: skip
    split = sequence_parallel.active_split(op, sequence_split)
    if implementation == "pallas" and split is None:
        return _pallas(q, k, v, beta, log_decay, initial_state, scale, chunk_size)

    def local(v, q, k, beta, log_decay, starts, state):
        return delta_rule(
            q, k, v, beta, log_decay=log_decay, initial_state=state, scale=scale,
            segment_starts=None if segment_starts is None else starts, chunk_size=chunk_size,
            implementation=implementation,
        )  # fmt: skip

    if log_decay is None:
        log_decay = jnp.zeros((batch, length, heads), jnp.float32)
    return _run_delta_rule(
        op, _recurrent, _chunk, implementation, split, local, (q, k, v, beta, log_decay),
        initial_state, segment_starts, scale=scale, chunk_size=chunk_size,
    )  # fmt: skip


def _run_delta_rule(
    op, reference, chunk, implementation, split, local_op, arrays, initial_state, segment_starts,
    *, scale, chunk_size,
):  # fmt: skip
    """A delta rule after its checks, split or whole, in float32: ``arrays`` (q, k, v, ...)
    [B, T, ...] as ``reference(*arrays, state, starts)`` and the chunk function
    ``chunk(state, *arrays, starts)`` take them; ``local_op(v, q, k, ..., starts, state)`` is
    the op on one shard. Returns o in v's dtype and the final state."""
    q, k, v = arrays[:3]
    batch, length, heads, key_size = q.shape
    if initial_state is None:
        initial_state = jnp.zeros((batch, heads, key_size, v.shape[-1]), jnp.float32)
    starts = jnp.zeros((batch, length), bool) if segment_starts is None else segment_starts
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    q32, k32, v32, *rest = (f32(t) for t in arrays)
    if split is not None:
        output, final_state = sequence_parallel.split_left_linear_state(
            op, local_op, split, v32, (q32, k32, *rest, starts), f32(initial_state)
        )
        return output.astype(v.dtype), final_state
    if implementation == REFERENCE:
        output, final_state = reference(q32, k32, v32, *rest, f32(initial_state), starts)
    else:
        output, final_state = scan_over_chunks(
            chunk, f32(initial_state), (q32, k32, v32, *rest, starts), chunk_size=chunk_size
        )
    return (output * (1.0 if scale is None else scale)).astype(v.dtype), final_state


def _pallas(q, k, v, beta, log_decay, initial_state, scale, chunk_size):
    """The kernels of kernels_pallas.chunked_delta_rule on the inputs with non-finite entries
    replaced by 0, NaN from each row's first one on (seqjax.ops.finite)."""
    (q, k, v, beta, log_decay), nonfinite = finite.zero_nonfinite(q, k, v, beta, log_decay)
    output, final_state = chunked_delta_rule_kernels.chunked_delta_rule(
        q, k, v, beta, platform=jax.default_backend(), log_decay=log_decay,
        initial_state=initial_state, scale=scale, chunk_size=chunk_size,
    )  # fmt: skip
    return finite.nan_from_first(nonfinite, output, final_state)


def _recurrent(q, k, v, beta, log_decay, initial_state, starts):
    """The reference: one step at a time, time-major."""

    def step(state, inputs):
        q_t, k_t, v_t, beta_t, log_decay_t, start_t = inputs
        state = jnp.where(start_t[:, None, None, None], 0.0, state)
        beta_t, decay_t = beta_t[..., None, None], jnp.exp(log_decay_t)[..., None, None]
        removed = k_t[..., :, None] * jnp.einsum("bhk,bhkv->bhv", k_t, state)[..., None, :]
        state = (
            decay_t * (state - beta_t * removed) + beta_t * k_t[..., :, None] * v_t[..., None, :]
        )
        return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

    time_major = [jnp.swapaxes(t, 0, 1) for t in (q, k, v, beta, log_decay, starts)]
    final_state, output = jax.lax.scan(step, initial_state, time_major)
    return jnp.swapaxes(output, 0, 1), final_state


def _chunk(state, q, k, v, beta, log_decay, starts):
    """One chunk of the UT-transform form; arrays [B, C, H, ·], state [B, H, K, V]."""
    chunk_size = q.shape[1]
    segment = jnp.cumsum(starts, axis=1)  # 0 = the segment carried into the chunk
    cumulative = cumulative_sum(log_decay, segment)  # b_i [B, C, H], restarting per segment
    positions = jnp.arange(chunk_size)
    same_segment = segment[:, :, None] == segment[:, None, :]  # [B, Ci, Cj]
    exponent = cumulative[:, :, None] - cumulative[:, None, :]  # b_i - b_j [B, Ci, Cj, H]

    def decayed(products, mask):  # [B, H, Ci, Cj] · exp(b_i - b_j) on mask, 0 elsewhere
        decay = jnp.moveaxis(jnp.exp(jnp.where(mask[..., None], exponent, -jnp.inf)), 3, 1)
        return jnp.where(mask[:, None], products * decay, 0.0)  # no positive exponent

    strictly_lower = (positions[:, None] > positions[None, :]) & same_segment
    lower = (positions[:, None] >= positions[None, :]) & same_segment
    carried = (segment == 0)[..., None, None]  # [B, C, 1, 1]
    decayed_keys = jnp.where(carried, k * jnp.exp(cumulative)[..., None], 0.0)

    # (I + A) U = diag(β) (V - diag(exp(b)) K S₀), solved per batch and head.
    key_products = jnp.einsum("bihk,bjhk->bhij", k, k)
    a = decayed(jnp.moveaxis(beta, 2, 1)[..., None] * key_products, strictly_lower)
    right = beta[..., None] * (v - jnp.einsum("bihk,bhkv->bihv", decayed_keys, state))
    u = jnp.einsum("bhij,bjhv->bhiv", _unit_lower_triangular_inverse(a), right)  # [B, H, C, V]

    # Outputs and leaving state of gated linear attention with values U.
    scores = decayed(jnp.einsum("bihk,bjhk->bhij", q, k), lower)
    decayed_queries = jnp.where(carried, q * jnp.exp(cumulative)[..., None], 0.0)
    output = jnp.einsum("bhij,bhjv->bihv", scores, u)
    output += jnp.einsum("bihk,bhkv->bihv", decayed_queries, state)

    total = cumulative[:, -1]  # [B, H]
    in_last_segment = (segment == segment[:, -1:])[..., None, None]
    # Other keys' exponents pair two segments' sums: masked, as they may be positive.
    to_end = jnp.where(in_last_segment[..., 0], total[:, None] - cumulative, -jnp.inf)
    to_end = k * jnp.exp(to_end)[..., None]
    keeps_state = (segment[:, -1] == 0)[:, None, None, None]
    state = jnp.where(keeps_state, jnp.exp(total)[..., None, None] * state, 0.0)
    state += jnp.einsum("bjhk,bhjv->bhkv", to_end, u)
    return output, state


def generalized_delta_rule(
    q: Array,
    k: Array,
    v: Array,
    removal_key: Array,
    removal_direction: Array,
    *,
    log_decay: Array | None = None,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    implementation: str | None = None,
    sequence_split: SequenceSplit | None = None,
    debug_checks: bool = False,
) -> tuple[Array, Array]:
    """The diagonal-plus-rank-one delta rule: a decay per key, a removal along any direction.

        S_t = diag(exp(log_decay_t)) S_{t-1} - d_t (e_tᵀ S_{t-1}) + k_t v_tᵀ      S_t: [K, V]
        o_t = scale · S_tᵀ q_t

    with removal key e = ``removal_key`` and removal direction d = ``removal_direction``.

    Parametrizations:
      - the gated delta rule (``delta_rule``): e = k, d = exp(g) β k, values β v, scalar
        log_decay g;
      - RWKV-7 (Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution"),
        whose state is [V, K]: S'_t = S'_{t-1} (diag(w_t) - κ̂_tᵀ (a_t ⊙ κ̂_t)) + v_tᵀ k̃_t
        with row vectors, o_t = S'_t r_t. Transposed (S = S'ᵀ), that is the recurrence above
        with q = r, k = k̃, e = κ̂, d = a ⊙ κ̂, log_decay = log w (per key), scale 1. In the
        arguments (w, r, k, v, a, b) of RWKV's kernels, a = -κ̂ and b = κ̂ ⊙ a, so e = -a and
        d = b.

    Implementations: "reference" and "chunked". The chunked form writes each
    step as a gated linear-attention step with two key/value pairs, (k_t, v_t) and
    (-d_t, u_t) with u_t = S_{t-1}ᵀ e_t. Inside a chunk with inclusive cumulative log decay
    b_i (per key), exclusive b_{i-1} = b_i - log_decay_i, and entering state S₀, the u's
    solve the unit lower-triangular system

        u_i + Σ_{j<i} A_ij u_j = S₀ᵀ (e_i ⊙ exp(b_{i-1})) + Σ_{j<i} B_ij v_j,
        A_ij = Σ_k e_ik d_jk exp(b_{i-1,k} - b_jk),   B_ij = Σ_k e_ik k_jk exp(b_{i-1,k} - b_jk),

    (inverted by block doubling in matmuls, ``_unit_lower_triangular_inverse``), after which
    outputs and the leaving state are those of gated linear attention with both pairs. Every
    decay factor is formed with no positive exponent (seqjax.ops.decayed_scores).

    Args:
      q, k, removal_key, removal_direction: [B, T, H, K].  v: [B, T, H, V].
      log_decay: None (no decay), [B, T, H] or [B, T, H, K]; values <= 0.
      initial_state: [B, H, K, V] (zeros if None).
      segment_starts: bool [B, T]; the state is reset to zero before each true position.
      scale: multiplies the output; default 1.
      chunk_size: C of the chunked form.
      implementation: one of IMPLEMENTATIONS, or None for the best available.
      sequence_split: run sequence-parallel over this mesh axis (seqjax.ops.sequence_parallel).
      debug_checks: check the domain of traced log decays with checkify (seqjax.ops.checks).

    Returns:
      o [B, T, H, V] in v's dtype, and the final state [B, H, K, V] in float32.
    """
    op = "generalized_delta_rule"
    removal = {"removal_key": removal_key, "removal_direction": removal_direction}
    batch, length, heads, _, _ = checks.head_inputs(
        op, q, k, v, like_q=removal, log_decay=log_decay, initial_state=initial_state
    )
    segment_starts = checks.segment_starts(op, segment_starts, batch, length)
    checks.at_least_one(op, "chunk_size", chunk_size)
    checks.in_range(op, "log_decay", log_decay, high=0.0, debug_checks=debug_checks)
    implementation = implementations.select(
        op, implementation, IMPLEMENTATIONS, preferred=("chunked",),
        cannot_run={"pallas": "there are no Pallas kernels for generalized_delta_rule yet"},
    )  # fmt: skip
    split = sequence_parallel.active_split(op, sequence_split)

    def local(v, q, k, removal_key, removal_direction, log_decay, starts, state):
        return generalized_delta_rule(
            q, k, v, removal_key, removal_direction, log_decay=log_decay, initial_state=state,
            segment_starts=None if segment_starts is None else starts, scale=scale,
            chunk_size=chunk_size, implementation=implementation,
        )  # fmt: skip

    # Decays become [B, T, H, K] or [B, T, H, 1] (a decay per head broadcasts over K).
    if log_decay is None:
        log_decay = jnp.zeros((batch, length, heads, 1), jnp.float32)
    elif jnp.ndim(log_decay) == 3:
        log_decay = jnp.asarray(log_decay)[..., None]
    return _run_delta_rule(
        op, _generalized_recurrent, _generalized_chunk, implementation, split, local,
        (q, k, v, removal_key, removal_direction, log_decay), initial_state, segment_starts,
        scale=scale, chunk_size=chunk_size,
    )  # fmt: skip


def _generalized_recurrent(q, k, v, removal_key, removal_direction, log_decay, state, starts):
    """The reference: one step at a time, time-major."""

    def step(state, inputs):
        q_t, k_t, v_t, e_t, d_t, log_decay_t, start_t = inputs
        state = jnp.where(start_t[:, None, None, None], 0.0, state)
        removed = jnp.einsum("bhk,bhkv->bhv", e_t, state)  # u_t = S_{t-1}ᵀ e_t
        state = (
            jnp.exp(log_decay_t)[..., None] * state
            - d_t[..., :, None] * removed[..., None, :]
            + k_t[..., :, None] * v_t[..., None, :]
        )
        return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

    arrays = (q, k, v, removal_key, removal_direction, log_decay, starts)
    final_state, output = jax.lax.scan(step, state, [jnp.swapaxes(t, 0, 1) for t in arrays])
    return jnp.swapaxes(output, 0, 1), final_state


def _generalized_chunk(state, q, k, v, removal_key, removal_direction, log_decay, starts):
    """One chunk of the generalized UT-transform form; arrays [B, C, H, ·], state [B, H, K, V]."""
    chunk_size = q.shape[1]
    segment = jnp.cumsum(starts, axis=1)  # 0 = the segment carried into the chunk
    inclusive = cumulative_sum(log_decay, segment)  # b_i [B, C, H, K|1], per segment
    exclusive = inclusive - log_decay  # b_{i-1}
    positions = jnp.arange(chunk_size)
    same_segment = segment[:, :, None] == segment[:, None, :]  # [B, Ci, Cj]
    strictly_lower = (positions[:, None] > positions[None, :]) & same_segment
    lower = (positions[:, None] >= positions[None, :]) & same_segment
    carried = (segment == 0)[..., None, None]  # [B, C, 1, 1]

    # The four score matrices in one call, stacked along heads, the chunk as one block
    # (seqjax.ops.decayed_scores): Σ_k x_ik y_jk exp(c_ik - b_jk) for (x, c, y) =
    # (e, b_{i-1}, d), (e, b_{i-1}, k) with j < i and (q, b_i, k), (q, b_i, d) with j <= i.
    heads = q.shape[2]

    def stack(arrays):  # four [B, C, H, ·] -> [B, 1, C, 4H, ·]
        return jnp.concatenate(arrays, axis=2)[:, None]

    mask = jnp.repeat(jnp.stack([strictly_lower, lower], axis=-1), 2 * heads, axis=-1)
    all_scores = decayed_scores(
        stack([removal_key, removal_key, q, q]),
        stack([exclusive, exclusive, inclusive, inclusive]),
        stack([removal_direction, k, k, removal_direction]),
        stack([inclusive] * 4),
        mask[:, None],
    )[:, 0]
    removal_scores, key_scores, query_key_scores, query_removal_scores = jnp.split(
        all_scores, 4, axis=-1
    )

    # The corrected values u_i = S_{i-1}ᵀ e_i: (I + A) U = E S₀ + B V, per batch and head.
    decayed_removal_keys = jnp.where(carried, removal_key * jnp.exp(exclusive), 0.0)
    right = jnp.einsum("bijh,bjhv->bihv", key_scores, v)
    right += jnp.einsum("bihk,bhkv->bihv", decayed_removal_keys, state)
    inverse = _unit_lower_triangular_inverse(jnp.moveaxis(removal_scores, 3, 1))  # [B, H, C, C]
    u = jnp.einsum("bhij,bjhv->bihv", inverse, right)  # [B, C, H, V]

    # Outputs: gated linear attention with the pairs (k, v) and (-d, u).
    output = jnp.einsum("bijh,bjhv->bihv", query_key_scores, v)
    output -= jnp.einsum("bijh,bjhv->bihv", query_removal_scores, u)
    decayed_queries = jnp.where(carried, q * jnp.exp(inclusive), 0.0)
    output += jnp.einsum("bihk,bhkv->bihv", decayed_queries, state)

    # The leaving state: both pairs of the chunk's last segment, decayed to its end.
    total = inclusive[:, -1]  # [B, H, K|1]
    in_last_segment = (segment == segment[:, -1:])[..., None, None]
    to_end = jnp.exp(jnp.where(in_last_segment, total[:, None] - inclusive, -jnp.inf))
    keeps_state = (segment[:, -1] == 0)[:, None, None, None]
    state = jnp.where(keeps_state, jnp.exp(total)[..., None] * state, 0.0)
    state += jnp.einsum("bjhk,bjhv->bhkv", k * to_end, v)
    state -= jnp.einsum("bjhk,bjhv->bhkv", removal_direction * to_end, u)
    return output, state


def _unit_lower_triangular_inverse(strictly_lower: Array) -> Array:
    """(I + A)⁻¹ for strictly lower-triangular A [..., C, C], in matmuls only.

    Recursive doubling of the diagonal blocks, from 1 x 1 up to the whole (zero-padded to a
    power of two) matrix:

        [[L₁, 0], [M, L₂]]⁻¹ = [[L₁⁻¹, 0], [-L₂⁻¹ M L₁⁻¹, L₂⁻¹]]

    (block triangular inversion, stable for triangular matrices: Du Croz & Higham 1992).
    It replaces ``solve_triangular``, whose LAPACK call on CPU splits its batch over the
    intra-op thread pool and can deadlock when two of them run at once on few cores.
    """
    size = strictly_lower.shape[-1]
    padded = 1 << (size - 1).bit_length()
    batch = strictly_lower.shape[:-2]
    a = jnp.pad(strictly_lower, [(0, 0)] * len(batch) + [(0, padded - size)] * 2)
    inverse = jnp.ones((*batch, padded, 1, 1), a.dtype)  # the inverted diagonal blocks
    block = 1
    while block < padded:
        count = padded // (2 * block)
        blocks = a.reshape(*batch, count, 2 * block, count, 2 * block)
        blocks = jnp.moveaxis(jnp.diagonal(blocks, axis1=-4, axis2=-2), -1, -3)
        pairs = inverse.reshape(*batch, count, 2, block, block)
        first, second = pairs[..., 0, :, :], pairs[..., 1, :, :]
        corner = -second @ blocks[..., block:, :block] @ first
        top = jnp.concatenate([first, jnp.zeros_like(corner)], axis=-1)
        inverse = jnp.concatenate([top, jnp.concatenate([corner, second], axis=-1)], axis=-2)
        block *= 2
    return inverse[..., 0, :size, :size]
