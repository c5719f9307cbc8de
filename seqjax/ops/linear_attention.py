"""Gated linear attention: a matrix state per head with a diagonal decay.

    S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ          S_t: [K, V]
    o_t = scale · S_tᵀ q_t

With no decay this is linear attention (Katharopoulos et al. 2020); a scalar decay per head
gives RetNet, Mamba-2 (SSD) and mLSTM's forget gate; a decay per key dimension gives GLA
("Gated Linear Attention Transformers with Hardware-Efficient Training", Yang et al. 2024),
HGRN-2 and RWKV-6.

    "reference"  the recurrence above, one step at a time
    "chunked"    chunks of C steps: inside a chunk, attention-like matmuls with the decays
                 as a causal mask; across chunks, the state recurrence. Cost O(T·C·K + T·K·V).
    "pallas"     the kernels of kernels_pallas/chunked_gla (TPU and GPU; no segment_starts)

Decays stay in log space: inside a chunk every factor is exp(b_i - b_j) with j ≤ i for the
cumulative log decay b, so no exponent is positive and nothing overflows however small the
decays. Packed sequences (``segment_starts``) are masks, not decays of -inf, so no
-inf - -inf appears either; b restarts at each segment start, so b_i - b_j sums the decays
of i's segment alone (not those of an earlier segment, cancelled up to rounding), and an
exponent that pairs steps of two segments is masked before its exp.
"""

import functools

import jax
import jax.numpy as jnp

import kernels_pallas.chunked_gla as chunked_gla_kernels
from seqjax.ops import checks, finite, implementations, sequence_parallel
from seqjax.ops.chunking import cumulative_sum, scan_over_chunks
from seqjax.ops.decayed_scores import decayed_scores
from seqjax.ops.implementations import REFERENCE
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

IMPLEMENTATIONS = (REFERENCE, "chunked", "pallas")
# Steps per sub-chunk of the chunked form with a decay per key.
PER_KEY_SUB_CHUNK = 16


def gated_linear_attention(
    q: Array,
    k: Array,
    v: Array,
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
    """Runs S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

    Args:
      q, k: [B, T, H, K].  v: [B, T, H, V].  All floating point (seqjax.ops.checks).
      log_decay: None (no decay), [B, T, H] (one decay per head) or [B, T, H, K] (one per
        key dimension); values <= 0.
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
    op = "gated_linear_attention"
    batch, length, heads, key_size, value_size = checks.head_inputs(
        op, q, k, v, log_decay=log_decay, initial_state=initial_state
    )
    segment_starts = checks.segment_starts(op, segment_starts, batch, length)
    checks.at_least_one(op, "chunk_size", chunk_size)
    checks.in_range(op, "log_decay", log_decay, high=0.0, debug_checks=debug_checks)
    implementation = implementations.select_chunked(
        op, implementation, IMPLEMENTATIONS, chunked_gla_kernels,
        segment_starts=segment_starts, chunk_size=chunk_size,
    )  # fmt: skip
    scale = 1.0 if scale is None else scale
    if initial_state is None:
        initial_state = jnp.zeros((batch, heads, key_size, value_size), jnp.float32)
    if log_decay is None:
        log_decay = jnp.zeros((batch, length, heads), jnp.float32)
    starts = jnp.zeros((batch, length), bool) if segment_starts is None else segment_starts
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    if (split := sequence_parallel.active_split(op, sequence_split)) is not None:

        def local(q, k, v, log_decay, starts):
            return gated_linear_attention(
                q, k, v, log_decay=log_decay, scale=scale, chunk_size=chunk_size,
                segment_starts=None if segment_starts is None else starts,
                implementation=implementation,
            )  # fmt: skip

        output, final_state = sequence_parallel.split_gated_linear_attention(
            local, split, f32(q), f32(k), f32(v), f32(log_decay), starts, f32(initial_state),
            scale=scale,
        )  # fmt: skip
        return output.astype(v.dtype), final_state
    if implementation == "pallas":
        return _pallas(q, k, v, log_decay, initial_state, scale, chunk_size)
    # Decays become [B, T, H, K] or [B, T, H, 1] (a decay per head broadcasts over K).
    log_decay = log_decay if log_decay.ndim == 4 else log_decay[..., None]
    run = _recurrent if implementation == REFERENCE else _chunked
    output, final_state = run(
        f32(q), f32(k), f32(v), f32(log_decay), f32(initial_state), starts, chunk_size
    )
    return (output * scale).astype(v.dtype), final_state


def _recurrent(q, k, v, log_decay, initial_state, starts, chunk_size):
    """The reference: one step at a time, time-major."""
    del chunk_size

    def step(state, inputs):
        q_t, k_t, v_t, log_decay_t, start_t = inputs  # [B, H, K], [B, H, V], [B, H, K|1], [B]
        state = jnp.where(start_t[:, None, None, None], 0.0, state)
        state = jnp.exp(log_decay_t)[..., None] * state + k_t[..., :, None] * v_t[..., None, :]
        return state, jnp.einsum("bhk,bhkv->bhv", q_t, state)

    time_major = [jnp.swapaxes(t, 0, 1) for t in (q, k, v, log_decay, starts)]
    final_state, output = jax.lax.scan(step, initial_state, time_major)
    return jnp.swapaxes(output, 0, 1), final_state


def _pallas(q, k, v, log_decay, initial_state, scale, chunk_size):
    """The kernels of kernels_pallas.chunked_gla on the inputs with non-finite entries
    replaced by 0, NaN from each row's first one on (seqjax.ops.finite)."""
    (q, k, v, log_decay), nonfinite = finite.zero_nonfinite(q, k, v, log_decay)
    output, final_state = chunked_gla_kernels.chunked_gla(
        q, k, v, platform=jax.default_backend(), log_decay=log_decay,
        initial_state=initial_state, scale=scale, chunk_size=chunk_size,
    )  # fmt: skip
    return finite.nan_from_first(nonfinite, output, final_state)


def _chunked(q, k, v, log_decay, initial_state, starts, chunk_size):
    return scan_over_chunks(
        _chunk, initial_state, (q, k, v, log_decay, starts), chunk_size=chunk_size
    )


def _chunk(state, q, k, v, log_decay, starts):
    """One chunk, as [B, C, H, ·] arrays, with the state [B, H, K, V] entering it.
    Returns the chunk's outputs [B, C, H, V] and the state leaving it.

    A scalar decay factors out of the sum over k, so the whole chunk is one block of
    attention-like scores. A decay per key does not: the chunk is cut into sub-chunks of at
    most ``PER_KEY_SUB_CHUNK`` steps (GLA's secondary chunking), scores are formed inside
    each sub-chunk (``decayed_scores``), and the state is carried from sub-chunk to
    sub-chunk, so no tensor larger than [C, c, K] or [C / c, K, V] appears and no exponent
    is positive.
    """
    batch, chunk_size, heads, key_size = q.shape
    per_key = log_decay.shape[-1] > 1
    sub = _largest_divisor(chunk_size, PER_KEY_SUB_CHUNK) if per_key else chunk_size
    num_sub = chunk_size // sub

    def split(t):  # [B, C, ...] -> [B, S, c, ...]
        return t.reshape(batch, num_sub, sub, *t.shape[2:])

    q, k, v, log_decay, starts = map(split, (q, k, v, log_decay, starts))
    # The segment index within the sub-chunk (0 = carried in), and
    # b_i = Σ_{s ≤ i in the sub-chunk and in i's segment} log_decay_s.
    segment = jnp.cumsum(starts, axis=2)
    cumulative = cumulative_sum(
        log_decay.reshape(batch * num_sub, *log_decay.shape[2:]),
        segment.reshape(batch * num_sub, sub),
    ).reshape(log_decay.shape)
    output = _intra_chunk(q, k, v, cumulative, segment)

    # Positions still in the carried-in segment read the state entering their sub-chunk.
    carried = (segment == 0)[..., None, None]
    query_decayed = jnp.where(carried, q * jnp.exp(cumulative), 0.0)
    # What each sub-chunk adds to the state: keys of its last segment, decayed to its end
    # (other keys' exponents pair two segments' sums: masked, as they may be positive).
    total = cumulative[:, :, -1]  # [B, S, H, K|1]
    in_last_segment = (segment == segment[:, :, -1:])[..., None, None]
    to_end = jnp.where(in_last_segment, total[:, :, None] - cumulative, -jnp.inf)
    key_decayed = k * jnp.exp(to_end)
    added = jnp.einsum("bsjhk,bsjhv->bshkv", key_decayed, v)
    keeps_state = segment[:, :, -1] == 0  # [B, S]
    entering = []
    for index in range(num_sub):
        entering.append(state)
        state = jnp.where(
            keeps_state[:, index, None, None, None],
            jnp.exp(total[:, index])[..., None] * state,
            0.0,
        )
        state += added[:, index]
    entering = jnp.stack(entering, axis=1)  # [B, S, H, K, V]
    output += jnp.einsum("bsihk,bshkv->bsihv", query_decayed, entering)
    return output.reshape(batch, chunk_size, heads, -1), state


def _largest_divisor(size: int, bound: int) -> int:
    return max(d for d in range(1, min(bound, size) + 1) if size % d == 0)


def _intra_chunk(q, k, v, cumulative, segment):
    """o_i = Σ_{j ≤ i, same segment} (Σ_k q_ik k_jk exp(b_ik - b_jk)) v_j within each
    block of [B, S, c, H, ·] arrays (seqjax.ops.decayed_scores)."""
    size = q.shape[2]
    positions = jnp.arange(size)
    causal = positions[:, None] >= positions[None, :]
    mask = causal & (segment[..., :, None] == segment[..., None, :])  # [B, S, ci, cj]
    scores = decayed_scores(q, cumulative, k, cumulative, mask[..., None])
    return jnp.einsum("bsijh,bsjhv->bsihv", scores, v)
