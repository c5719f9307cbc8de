"""Softmax attention (Vaswani et al. 2017) with causal, sliding-window and segment masks,
grouped-query heads (GQA, Ainslie et al. 2023), and rotary position embedding.

    o_i = sum_j softmax_j(scale * q_i . k_j, over the keys j that query i may attend to) v_j

With a forget gate (Forgetting Transformer, Lin et al. 2025) the score of key j for query i
gains Σ_{l=j+1..i} log f_l = F_i - F_j, F the cumulative log forget gate of each head, so a
head can learn to fade the past as a recurrent model does:

    o_i = sum_j softmax_j(scale * q_i . k_j + F_i - F_j) v_j

Query head h reads key/value head h // (H // G). Key j is allowed for query i when its
position is non-negative (a negative position marks an empty cache slot) and, when enabled,
kv_pos_j <= q_pos_i (causal), q_pos_i - kv_pos_j < window (sliding window) and the two share a
segment id. Every implementation takes its mask from `_allowed_keys`, so they cannot drift.

Implementations:
  "reference"  materializes the [B, H, Tq, Tk] scores: obviously right, O(Tq * Tk) memory.
  "chunked"    FlashAttention (Dao et al. 2022) / FlashAttention-2 (Dao 2023) in plain XLA:
               an online softmax over key blocks and a custom VJP that recomputes the blocks,
               so neither pass holds more than a [block, block] tile of scores per head.
  "pallas"     the kernels of kernels_pallas/flash_attention (TPU and GPU): the same
               FlashAttention-2 passes with every block pair in on-chip memory.

With implementation=None, "pallas" runs on TPU and GPU; elsewhere "reference" for small
Tq * Tk and "chunked" otherwise.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

import kernels_pallas.flash_attention as flash_attention_kernels
from seqjax.ops import checks, finite, implementations, sequence_parallel
from seqjax.ops.implementations import REFERENCE
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

IMPLEMENTATIONS = (REFERENCE, "chunked", "pallas")

REFERENCE_MAX_SCORES = 512 * 512
"""With implementation=None off TPU and GPU, "reference" runs when Tq * Tk is at most this,
else "chunked"."""
NONFINITE_CHECK_BLOCK = 128
"""Query and key block length of the "pallas" form's check for queries that may attend to a
non-finite key (the kernels' outputs there are replaced by NaN)."""


def rotary_embedding(x: Array, positions: Array, *, base: float = 10000.0) -> Array:
    """Rotary position embedding (RoFormer, Su et al. 2021), rotate-half convention.

    The pair (x[..., i], x[..., i + K/2]) is rotated by the angle p * base ** (-2i / K), so the
    dot product of two rotated vectors depends on their positions only through the difference.

    Args:
      x: [B, T, H, K] with K even.
      positions: [B, T] integer positions.
      base: the wavelength base.

    Returns:
      [B, T, H, K] in x's dtype; the rotation is computed in float32.
    """
    if x.ndim != 4 or x.shape[-1] % 2:
        raise ValueError(f"rotary_embedding: x must be [B, T, H, K] with K even, got {x.shape}")
    checks.floating("rotary_embedding", "x", x)
    if positions.shape != x.shape[:2]:
        raise ValueError(
            f"rotary_embedding: positions must be [B, T] = {x.shape[:2]}, got {positions.shape}"
        )
    half = x.shape[-1] // 2
    angular_frequencies = base ** (-2.0 * jnp.arange(half, dtype=jnp.float32) / x.shape[-1])
    angles = positions.astype(jnp.float32)[:, :, None, None] * angular_frequencies
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
    return rotated.astype(x.dtype)


def softmax_attention(
    q: Array,
    k: Array,
    v: Array,
    *,
    q_positions: Array | None = None,
    kv_positions: Array | None = None,
    q_segment_ids: Array | None = None,
    kv_segment_ids: Array | None = None,
    causal: bool = True,
    window: int | None = None,
    log_forget: Array | None = None,
    scale: float | None = None,
    block_size: int = 128,
    implementation: str | None = None,
    sequence_split: SequenceSplit | None = None,
    debug_checks: bool = False,
) -> Array:
    """Masked softmax attention with grouped-query heads and an optional forget gate.

    Args:
      q: [B, Tq, H, K] queries.
      k: [B, Tk, G, K] keys, H % G == 0.
      v: [B, Tk, G, V] values. q, k and v floating point (seqjax.ops.checks).
      q_positions: [B, Tq] integers; default arange(Tq) + Tk - Tq (queries are the last keys).
      kv_positions: [B, Tk] integers; default arange(Tk). Negative marks an empty slot.
      q_segment_ids, kv_segment_ids: [B, Tq] and [B, Tk] integers, both or neither; a query
        attends only to keys of its own segment.
      causal: allow key j for query i only if kv_pos_j <= q_pos_i.
      window: allow key j only if q_pos_i - kv_pos_j < window (1: the query's own position).
        Requires causal.
      log_forget: [B, Tk, H] log forget gate (<= 0) at each key position for each query
        head; the queries are the last Tq key positions (as in self-attention with a key
        cache). Adds F_i - F_j to the scores, F the cumulative sum over the key axis (over
        each run of keys of one segment id).
      scale: score scale, default K ** -0.5.
      block_size: query and key block length of the chunked form.
      implementation: None (pallas on TPU and GPU; elsewhere reference for small Tq * Tk,
        chunked otherwise), "reference", "chunked" or "pallas".
      sequence_split: run sequence-parallel over this mesh axis (seqjax.ops.sequence_parallel):
        queries split, keys and values gathered, the mask on global positions (so the
        chunked form visits every key block of a shard).
      debug_checks: check the domain of a traced log_forget with checkify (seqjax.ops.checks).

    Returns:
      o: [B, Tq, H, V] in q's dtype, accumulated in float32. A query with no allowed key
      gives 0 (and zero gradients).
    """
    op = "softmax_attention"
    _check_arguments(
        q, k, v, q_positions, kv_positions, q_segment_ids, kv_segment_ids, causal, window
    )
    checks.shape(op, "log_forget", log_forget, (*k.shape[:2], q.shape[2]), "[B, Tk, H]")
    checks.floating(op, "log_forget", log_forget)
    checks.at_least_one(op, "block_size", block_size)
    checks.in_range(op, "log_forget", log_forget, high=0.0, debug_checks=debug_checks)
    batch, query_length, _, head_dim = q.shape
    key_length = k.shape[1]
    platform = jax.default_backend()
    small = query_length * key_length <= REFERENCE_MAX_SCORES
    implementation = implementations.select(
        op, implementation, IMPLEMENTATIONS,
        preferred=("pallas", REFERENCE if small else "chunked"),
        cannot_run={"pallas": flash_attention_kernels.unsupported_reason(platform)},
        kernels="flash_attention",
    )  # fmt: skip
    options = dict(causal=causal, window=window, scale=scale)
    if (split := sequence_parallel.active_split(op, sequence_split)) is not None:
        # With default positions and a causal mask, the keys after a query are masked.
        keys_end_with_queries = (
            log_forget is not None and causal and q_positions is None and kv_positions is None
        )
        if q_positions is None:
            q_positions = _default_positions(batch, query_length, key_length - query_length)
        if kv_positions is None:
            kv_positions = _default_positions(batch, key_length, 0)
        local = functools.partial(
            softmax_attention, **options, block_size=block_size, implementation=implementation
        )
        queries = dict(q=q, q_positions=q_positions, q_segment_ids=q_segment_ids)
        keys = dict(
            k=k, v=v, kv_positions=kv_positions, kv_segment_ids=kv_segment_ids,
            log_forget=log_forget,
        )  # fmt: skip
        return sequence_parallel.split_softmax_attention(
            local, split, {n: x for n, x in queries.items() if x is not None},
            {n: x for n, x in keys.items() if x is not None},
            keys_end_with_queries=keys_end_with_queries and query_length == key_length,
        )  # fmt: skip
    if implementation == "pallas":
        return _pallas_attention(
            q, k, v, platform=platform, q_positions=q_positions, kv_positions=kv_positions,
            q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids,
            log_forget=log_forget, **options,
        )  # fmt: skip

    masking, positions_are_default = _masking(
        q_positions, kv_positions, q_segment_ids, kv_segment_ids, batch, query_length,
        key_length,
    )  # fmt: skip
    scale = head_dim**-0.5 if scale is None else scale
    forget = None
    if log_forget is not None:
        cumulative = _cumulative_log_forget(log_forget.astype(jnp.float32), kv_segment_ids)
        forget = _Forget(query=cumulative[:, key_length - query_length :], key=cumulative)

    if implementation == REFERENCE:
        return _reference_attention(q, k, v, masking, forget, causal, window, scale)
    return _chunked_attention(
        q, k, v, masking, forget, causal, window, scale, block_size, positions_are_default
    )


def _cumulative_log_forget(log_forget: Array, segment_ids: Array | None) -> Array:
    """F [B, Tk, H]: Σ log f over the keys up to each one, restarting at every key whose
    segment id differs from the one before it. F_i - F_j of two keys of one segment is then
    a sum of that segment's gates alone; summed from the first key, it would cancel the
    earlier segments' (up to rounding: strong gates there would cost a later segment its
    precision, and their gradients would not be zero). The sums run left to right, one key
    at a time (as jnp.cumsum's do on CPU), so keys with zero gates in front of the others
    (the sequence split's gathered keys) leave every sum as it was, bit for bit."""
    if segment_ids is None:
        return jnp.cumsum(log_forget, axis=1)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1,
    )

    def step(total, inputs):
        log_forget_t, start_t = inputs  # [B, H], [B]
        total = jnp.where(start_t[:, None], 0.0, total) + log_forget_t
        return total, total

    time_major = (jnp.swapaxes(log_forget, 0, 1), jnp.swapaxes(starts, 0, 1))
    _, cumulative = lax.scan(step, jnp.zeros_like(log_forget[:, 0]), time_major)
    return jnp.swapaxes(cumulative, 0, 1)


class _Masking(NamedTuple):
    """The integer inputs of the mask, [B, T] each; segment ids may be None."""

    q_positions: Array
    kv_positions: Array
    q_segment_ids: Array | None
    kv_segment_ids: Array | None


class _Forget(NamedTuple):
    """Cumulative log forget gates F of the queries [B, Tq, H] and keys [B, Tk, H]."""

    query: Array
    key: Array


def _allowed_keys(masking: _Masking, causal: bool, window: int | None) -> Array:
    """The mask rule, in one place: [B, Tq] and [B, Tk] inputs -> bool [B, Tq, Tk]."""
    query_position = masking.q_positions[:, :, None]
    key_position = masking.kv_positions[:, None, :]
    allowed = key_position >= 0
    if causal:
        allowed &= key_position <= query_position
    if window is not None:
        allowed &= query_position - key_position < window
    if masking.q_segment_ids is not None:
        allowed &= masking.q_segment_ids[:, :, None] == masking.kv_segment_ids[:, None, :]
    return allowed


def _masking(
    q_positions, kv_positions, q_segment_ids, kv_segment_ids, batch, query_length, key_length
):
    """The mask inputs with positions at their defaults where None, and whether both were."""
    positions_are_default = q_positions is None and kv_positions is None
    if q_positions is None:
        q_positions = _default_positions(batch, query_length, key_length - query_length)
    if kv_positions is None:
        kv_positions = _default_positions(batch, key_length, 0)
    masking = _Masking(q_positions, kv_positions, q_segment_ids, kv_segment_ids)
    return masking, positions_are_default


def _default_positions(batch: int, length: int, offset: int) -> Array:
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32) + offset, (batch, length))


def _zero_nonfinite(q, k, v, forget):
    """q, k, v and the forget cumulatives with non-finite entries replaced by 0
    (seqjax.ops.finite), and which queries [B, Tq] and keys [B, Tk] held one. A non-finite
    log forget gate makes F non-finite from its position on, for queries and keys alike."""
    if forget is None:
        (q,), query_nonfinite = finite.zero_nonfinite(q)
        (k, v), key_nonfinite = finite.zero_nonfinite(k, v)
        return q, k, v, None, query_nonfinite, key_nonfinite
    (q, forget_query), query_nonfinite = finite.zero_nonfinite(q, forget.query)
    (k, v, forget_key), key_nonfinite = finite.zero_nonfinite(k, v, forget.key)
    return q, k, v, _Forget(forget_query, forget_key), query_nonfinite, key_nonfinite


def _reference_attention(q, k, v, masking, forget, causal, window, scale):
    """Materialized masked softmax over [B, H, Tq, Tk] scores, all in float32. A query that
    is non-finite or may attend to a non-finite key gives NaN (seqjax.ops.finite)."""
    q, k, v, forget, query_nonfinite, key_nonfinite = _zero_nonfinite(q, k, v, forget)
    heads_per_group = q.shape[2] // k.shape[2]
    k = jnp.repeat(k.astype(jnp.float32), heads_per_group, axis=2)
    v = jnp.repeat(v.astype(jnp.float32), heads_per_group, axis=2)
    scores = scale * jnp.einsum("bqhk,bshk->bhqs", q.astype(jnp.float32), k)
    if forget is not None:
        scores += jnp.einsum("bqh->bhq", forget.query)[..., None]
        scores -= jnp.einsum("bsh->bhs", forget.key)[:, :, None]
    allowed = _allowed_keys(masking, causal, window)
    scores = jnp.where(allowed[:, None], scores, -jnp.inf)
    # A row with no allowed key has max -inf; shifting it by 0 instead keeps exp at exactly 0.
    # The shift cancels in the softmax, so it carries no gradient.
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_shift = lax.stop_gradient(jnp.where(row_max == -jnp.inf, 0.0, row_max))
    weights = jnp.exp(scores - row_shift)
    row_sum = jnp.sum(weights, axis=-1, keepdims=True)
    probabilities = weights / jnp.where(row_sum > 0, row_sum, 1.0)
    o = jnp.einsum("bhqs,bshv->bqhv", probabilities, v).astype(q.dtype)
    reads_nonfinite = query_nonfinite | jnp.any(allowed & key_nonfinite[:, None], axis=-1)
    return finite.nan_where(reads_nonfinite, o)


class _ChunkedConfig(NamedTuple):
    """Static settings of the chunked form (hashable: a nondiff argument of the custom VJP)."""

    causal: bool
    window: int | None
    scale: float
    query_block: int
    key_block: int
    # Tk - Tq when the caller left the positions at their defaults (query row i has position
    # i + offset, key row j position j), so the block pairs that can hold an allowed key are
    # known from block indices alone; None when positions are arbitrary.
    default_position_offset: int | None


def _chunked_attention(
    q, k, v, masking, forget, causal, window, scale, block_size, positions_are_default
):
    """Pads to whole blocks, lays blocks out head-major, runs the custom-VJP core. A query
    that is non-finite or may attend to a non-finite key gives NaN (seqjax.ops.finite)."""
    q, k, v, forget, query_nonfinite, key_nonfinite = _zero_nonfinite(q, k, v, forget)
    batch, query_length, heads, _ = q.shape
    key_length, groups = k.shape[1], k.shape[2]
    config, blocked_masking = _blocked(
        masking, causal, window, scale, block_size, query_length, key_length,
        positions_are_default,
    )  # fmt: skip
    query_block, key_block = config.query_block, config.key_block
    grouped_q = q.reshape(batch, query_length, groups, heads // groups, q.shape[-1])
    # [n, B, block, G, (R,) K] -> [n, B, G, (R,) block, K]: each block is a batched matmul.
    q_blocks = jnp.moveaxis(_split_blocks(grouped_q, query_block, pad_value=0), 2, 4)
    k_blocks = jnp.moveaxis(_split_blocks(k, key_block, pad_value=0), 2, 3)
    v_blocks = jnp.moveaxis(_split_blocks(v, key_block, pad_value=0), 2, 3)
    forget_blocks = None
    if forget is not None:
        # [B, T, H] -> [n, B, G, R, block], laid out like the score rows and columns.
        def split_heads(cumulative, block):
            grouped = cumulative.reshape(*cumulative.shape[:2], groups, heads // groups)
            return jnp.moveaxis(_split_blocks(grouped, block, pad_value=0), 2, 4)

        forget_blocks = _Forget(
            query=split_heads(forget.query, query_block), key=split_heads(forget.key, key_block)
        )
    o_blocks = _chunked_core(config, q_blocks, k_blocks, v_blocks, blocked_masking, forget_blocks)
    o = jnp.moveaxis(jnp.moveaxis(o_blocks, 4, 2), 0, 1)  # [B, nq, bq, G, R, V]
    o = o.reshape(batch, -1, heads, v.shape[-1])[:, :query_length]
    reads = _reads_nonfinite_keys(config, blocked_masking, key_nonfinite, query_length)
    return finite.nan_where(query_nonfinite | reads, o)


def _blocked(
    masking, causal, window, scale, block_size, query_length, key_length, positions_are_default
):
    """The chunked form's settings and its mask inputs split into blocks."""
    query_block = min(block_size, query_length)
    key_block = min(block_size, key_length)
    config = _ChunkedConfig(
        causal=causal,
        window=window,
        scale=scale,
        query_block=query_block,
        key_block=key_block,
        default_position_offset=(
            key_length - query_length if positions_are_default and causal else None
        ),
    )
    # Padded keys get position -1 so the mask drops them; padded query rows are cut off.
    blocked_masking = _Masking(
        q_positions=_split_blocks(masking.q_positions, query_block, pad_value=0),
        kv_positions=_split_blocks(masking.kv_positions, key_block, pad_value=-1),
        q_segment_ids=_split_blocks(masking.q_segment_ids, query_block, pad_value=0),
        kv_segment_ids=_split_blocks(masking.kv_segment_ids, key_block, pad_value=0),
    )
    return config, blocked_masking


def _reads_nonfinite_keys(config, masking, key_nonfinite, query_length):
    """Whether each query may attend to a key marked in ``key_nonfinite`` [B, Tk], over the
    key blocks the chunked forward visits (none when no key is marked): bool [B, Tq]."""
    key_nonfinite_blocks = _split_blocks(key_nonfinite, config.key_block, pad_value=False)
    num_query_blocks, batch, query_block = masking.q_positions.shape

    def query_block_reads(query_block_index):
        def key_block(key_block_index, reads):
            block_masking = _block_masking(masking, query_block_index, key_block_index)
            allowed = _allowed_keys(block_masking, config.causal, config.window)
            marked = key_nonfinite_blocks[key_block_index][:, None]
            return reads | jnp.any(allowed & marked, axis=-1)

        first, end = _key_block_range(config, query_block_index, key_nonfinite_blocks.shape[0])
        return lax.fori_loop(first, end, key_block, jnp.zeros((batch, query_block), bool))

    reads = lax.cond(
        jnp.any(key_nonfinite),
        lambda: lax.map(query_block_reads, jnp.arange(num_query_blocks)),
        lambda: jnp.zeros((num_query_blocks, batch, query_block), bool),
    )  # [nq, B, bq]
    return jnp.moveaxis(reads, 0, 1).reshape(batch, -1)[:, :query_length]


def _pallas_attention(
    q, k, v, *, platform, q_positions, kv_positions, q_segment_ids, kv_segment_ids,
    log_forget, causal, window, scale,
):  # fmt: skip
    """The kernels of kernels_pallas.flash_attention on q, k, v and log_forget with
    non-finite entries replaced by 0, NaN where a query is non-finite or may attend to a
    non-finite key (seqjax.ops.finite). A non-finite log forget gate makes F non-finite from
    its position to the end of its run of one key segment id (where F restarts), for queries
    and keys alike, as in the XLA forms."""
    batch, query_length = q.shape[:2]
    key_length = k.shape[1]
    (q,), query_nonfinite = finite.zero_nonfinite(q)
    (k, v), key_nonfinite = finite.zero_nonfinite(k, v)
    if log_forget is not None:
        (log_forget,), forget_nonfinite = finite.zero_nonfinite(log_forget)
        forget_nonfinite = _since_first_in_segment(forget_nonfinite, kv_segment_ids)
        key_nonfinite |= forget_nonfinite
        query_nonfinite |= forget_nonfinite[:, key_length - query_length :]
    o = flash_attention_kernels.flash_attention(
        q, k, v, platform=platform, q_positions=q_positions, kv_positions=kv_positions,
        q_segment_ids=q_segment_ids, kv_segment_ids=kv_segment_ids, log_forget=log_forget,
        causal=causal, window=window, scale=scale,
    )  # fmt: skip
    masking, positions_are_default = _masking(
        q_positions, kv_positions, q_segment_ids, kv_segment_ids, batch, query_length,
        key_length,
    )  # fmt: skip
    config, blocked_masking = _blocked(
        masking, causal, window, scale, NONFINITE_CHECK_BLOCK, query_length, key_length,
        positions_are_default,
    )  # fmt: skip
    reads = _reads_nonfinite_keys(config, blocked_masking, key_nonfinite, query_length)
    return finite.nan_where(query_nonfinite | reads, o)


def _since_first_in_segment(nonfinite: Array, segment_ids: Array | None) -> Array:
    """bool [B, Tk]: true from each true position of ``nonfinite`` [B, Tk] to the end of its
    run of keys of one segment id (the next change of id, where ``_cumulative_log_forget``
    restarts F)."""
    if segment_ids is None:
        return finite.since_first(nonfinite)
    positions = jnp.broadcast_to(jnp.arange(nonfinite.shape[1]), nonfinite.shape)
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
        axis=1,
    )
    run_start = lax.cummax(jnp.where(starts, positions, 0), axis=1)
    last_nonfinite = lax.cummax(jnp.where(nonfinite, positions, -1), axis=1)
    return last_nonfinite >= run_start


def _split_blocks(x, block, pad_value):
    """[B, T, ...] -> [ceil(T / block), B, block, ...], padding T with pad_value."""
    if x is None:
        return None
    length = x.shape[1]
    padded_length = -(-length // block) * block
    padding = [(0, 0)] * x.ndim
    padding[1] = (0, padded_length - length)
    x = jnp.pad(x, padding, constant_values=pad_value)
    x = x.reshape(x.shape[0], padded_length // block, block, *x.shape[2:])
    return jnp.moveaxis(x, 1, 0)


def _block_masking(masking: _Masking, query_block_index, key_block_index) -> _Masking:
    def pick(blocks, index):
        return None if blocks is None else blocks[index]

    return _Masking(
        q_positions=masking.q_positions[query_block_index],
        kv_positions=masking.kv_positions[key_block_index],
        q_segment_ids=pick(masking.q_segment_ids, query_block_index),
        kv_segment_ids=pick(masking.kv_segment_ids, key_block_index),
    )


def _block_scores(config, q_block, k_block, masking, forget, query_block_index, key_block_index):
    """Scaled float32 scores [B, G, R, bq, bk] of one block pair (plus the forget-gate bias
    F_i - F_j), -inf where not allowed."""
    scores = config.scale * jnp.einsum(
        "bgrqk,bgsk->bgrqs", q_block.astype(jnp.float32), k_block.astype(jnp.float32)
    )
    if forget is not None:
        scores += forget.query[query_block_index][..., :, None]
        scores -= forget.key[key_block_index][..., None, :]
    block_masking = _block_masking(masking, query_block_index, key_block_index)
    allowed = _allowed_keys(block_masking, config.causal, config.window)
    return jnp.where(allowed[:, None, None], scores, -jnp.inf)


def _key_block_range(config, query_block_index, num_key_blocks):
    """Key blocks [first, end) that can hold an allowed key for this query block."""
    offset = config.default_position_offset
    if offset is None:
        return 0, num_key_blocks
    first_query_position = query_block_index * config.query_block + offset
    last_query_position = first_query_position + config.query_block - 1
    end = jnp.minimum(last_query_position // config.key_block + 1, num_key_blocks)
    if config.window is None:
        return 0, end
    first = jnp.maximum((first_query_position - config.window + 1) // config.key_block, 0)
    return first, end


def _query_block_range(config, key_block_index, num_query_blocks):
    """Query blocks [first, end) that can hold a query allowed to see this key block."""
    offset = config.default_position_offset
    if offset is None:
        return 0, num_query_blocks
    first_key_position = key_block_index * config.key_block
    last_key_position = first_key_position + config.key_block - 1
    first = jnp.maximum((first_key_position - offset) // config.query_block, 0)
    if config.window is None:
        return first, num_query_blocks
    last_query_row = last_key_position + config.window - 1 - offset
    return first, jnp.minimum(last_query_row // config.query_block + 1, num_query_blocks)


def _chunked_forward(config, q, k, v, masking, forget):
    """Online softmax, one query block at a time.

    Args: q [nq, B, G, R, bq, K], k [nk, B, G, bk, K], v [nk, B, G, bk, V], blocked masking,
      blocked forget-gate cumulatives ([nq, B, G, R, bq] and [nk, B, G, R, bk]) or None.
    Returns: o [nq, B, G, R, bq, V] in q's dtype and the row logsumexp [nq, B, G, R, bq].
    """
    num_key_blocks = k.shape[0]

    def attend_query_block(query_block_index):
        q_block = q[query_block_index]

        def visit_key_block(key_block_index, carry):
            running_max, running_sum, accumulator = carry
            scores = _block_scores(
                config,
                q_block,
                k[key_block_index],
                masking,
                forget,
                query_block_index,
                key_block_index,
            )
            new_max = jnp.maximum(running_max, jnp.max(scores, axis=-1))
            # Rows with no allowed key so far keep max -inf; shift them by 0 so exp gives 0.
            shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
            weights = jnp.exp(scores - shift[..., None])
            rescale = jnp.exp(running_max - shift)
            running_sum = rescale * running_sum + jnp.sum(weights, axis=-1)
            accumulator = rescale[..., None] * accumulator + jnp.einsum(
                "bgrqs,bgsv->bgrqv", weights, v[key_block_index].astype(jnp.float32)
            )
            return new_max, running_sum, accumulator

        row_shape = q_block.shape[:-1]
        initial = (
            jnp.full(row_shape, -jnp.inf, jnp.float32),
            jnp.zeros(row_shape, jnp.float32),
            jnp.zeros((*row_shape, v.shape[-1]), jnp.float32),
        )
        first, end = _key_block_range(config, query_block_index, num_key_blocks)
        row_max, row_sum, accumulator = lax.fori_loop(first, end, visit_key_block, initial)
        has_keys = row_sum > 0
        o_block = accumulator / jnp.where(has_keys, row_sum, 1.0)[..., None]
        # An empty row's scores are all -inf, so any finite logsumexp gives it zero weights.
        logsumexp = jnp.where(has_keys, row_max + jnp.log(row_sum), 0.0)
        return o_block.astype(q.dtype), logsumexp

    return lax.map(attend_query_block, jnp.arange(q.shape[0]))


def _chunked_backward(config, q, k, v, masking, forget, o, logsumexp, do):
    """FlashAttention-2 backward: recompute each block's probabilities from the logsumexp.

    With P = softmax(S) and D = rowsum(dO * O) = rowsum(P * dP):
        dV = P^T dO,   dP = dO V^T,   dS = P * (dP - D),   dQ = scale dS K,   dK = scale dS^T Q.
    One pass over key blocks (dK, dV accumulate over query blocks); dQ accumulates across it.
    The forget-gate bias F_i - F_j gets dF_i = Σ_j dS_ij and dF_j = -Σ_i dS_ij.
    """
    num_query_blocks = q.shape[0]
    row_dot = jnp.sum(do.astype(jnp.float32) * o.astype(jnp.float32), axis=-1)

    def visit_key_block(carry, key_block_index):
        dq, dforget_query = carry
        k_block = k[key_block_index].astype(jnp.float32)
        v_block = v[key_block_index].astype(jnp.float32)

        def visit_query_block(query_block_index, carry):
            dq, dforget_query, dk_block, dv_block, dforget_key_block = carry
            q_block = q[query_block_index].astype(jnp.float32)
            do_block = do[query_block_index].astype(jnp.float32)
            scores = _block_scores(
                config, q_block, k_block, masking, forget, query_block_index, key_block_index
            )
            probabilities = jnp.exp(scores - logsumexp[query_block_index][..., None])
            dv_block += jnp.einsum("bgrqs,bgrqv->bgsv", probabilities, do_block)
            dprobabilities = jnp.einsum("bgrqv,bgsv->bgrqs", do_block, v_block)
            dscores = probabilities * (dprobabilities - row_dot[query_block_index][..., None])
            dq = dq.at[query_block_index].add(
                config.scale * jnp.einsum("bgrqs,bgsk->bgrqk", dscores, k_block)
            )
            dk_block += config.scale * jnp.einsum("bgrqs,bgrqk->bgsk", dscores, q_block)
            if forget is not None:
                dforget_query = dforget_query.at[query_block_index].add(jnp.sum(dscores, -1))
                dforget_key_block -= jnp.sum(dscores, axis=-2)
            return dq, dforget_query, dk_block, dv_block, dforget_key_block

        initial = (
            dq,
            dforget_query,
            jnp.zeros(k_block.shape, jnp.float32),
            jnp.zeros(v_block.shape, jnp.float32),
            jnp.zeros(q.shape[1:4] + (k.shape[3],), jnp.float32),  # [B, G, R, bk]
        )
        first, end = _query_block_range(config, key_block_index, num_query_blocks)
        dq, dforget_query, dk_block, dv_block, dforget_key_block = lax.fori_loop(
            first, end, visit_query_block, initial
        )
        return (dq, dforget_query), (dk_block, dv_block, dforget_key_block)

    initial = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(q.shape[:-1], jnp.float32))
    (dq, dforget_query), (dk, dv, dforget_key) = lax.scan(
        visit_key_block, initial, jnp.arange(k.shape[0])
    )
    dforget = None if forget is None else _Forget(query=dforget_query, key=dforget_key)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), dforget


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked_core(config, q, k, v, masking, forget):
    o, _ = _chunked_forward(config, q, k, v, masking, forget)
    return o


def _chunked_core_forward(config, q, k, v, masking, forget):
    o, logsumexp = _chunked_forward(config, q, k, v, masking, forget)
    return o, (q, k, v, masking, forget, o, logsumexp)


def _chunked_core_backward(config, residuals, do):
    q, k, v, masking, forget, o, logsumexp = residuals
    dq, dk, dv, dforget = _chunked_backward(config, q, k, v, masking, forget, o, logsumexp, do)
    return dq, dk, dv, None, dforget  # positions and segment ids are integers: no gradient


_chunked_core.defvjp(_chunked_core_forward, _chunked_core_backward)


def _check_arguments(
    q, k, v, q_positions, kv_positions, q_segment_ids, kv_segment_ids, causal, window
):
    """Static checks of shapes, dtypes and options, with the expected shape in every message."""
    op = "softmax_attention"
    for name, x, expected in (
        ("q", q, "[B, Tq, H, K]"),
        ("k", k, "[B, Tk, G, K]"),
        ("v", v, "[B, Tk, G, V]"),
    ):
        if x.ndim != 4:
            raise ValueError(f"{op}: {name} must be {expected}, got shape {x.shape}")
        checks.floating(op, name, x)
        checks.nonempty(op, name, x)
    batch, query_length, heads, head_dim = q.shape
    _, key_length, groups, _ = k.shape
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(
            f"{op}: q, k and v must share the batch size B, got q {q.shape}, k {k.shape}, "
            f"v {v.shape}"
        )
    if k.shape[-1] != head_dim:
        raise ValueError(f"{op}: k must be [B, Tk, G, K] with q's K = {head_dim}, got {k.shape}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(
            f"{op}: v must be [B, Tk, G, V] with k's B, Tk, G = {k.shape[:3]}, got {v.shape}"
        )
    if heads % groups:
        raise ValueError(
            f"{op}: query heads H = {heads} must be a multiple of key/value heads G = {groups} "
            f"(q {q.shape}, k {k.shape})"
        )
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError(f"{op}: give both q_segment_ids and kv_segment_ids, or neither")
    for name, x, expected in (
        ("q_positions", q_positions, (batch, query_length)),
        ("kv_positions", kv_positions, (batch, key_length)),
        ("q_segment_ids", q_segment_ids, (batch, query_length)),
        ("kv_segment_ids", kv_segment_ids, (batch, key_length)),
    ):
        checks.shape(op, name, x, expected, "[B, T]")
        if x is not None and not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"{op}: {name} must be integers, got {x.dtype}")
    if window is not None:
        if not causal:
            raise ValueError(f"{op}: window requires causal=True")
        checks.at_least_one(op, "window", window)
