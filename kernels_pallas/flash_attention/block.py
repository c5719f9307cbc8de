"""The math of one (query block, key block) pair, shared by the TPU and GPU kernels.

Scores of query row i and key column j, with the forget-gate cumulatives F (zero without a
gate) and the mask rule of seqjax.ops.attention (``allowed``):

    s_ij = scale · q_i·k_j + F_i - F_j      where allowed, -inf elsewhere

Forward (FlashAttention-2): a running row max m, row sum l and float32 accumulator over key
blocks; the logsumexp m + log l is kept for the backward pass, which recomputes
P = exp(s - logsumexp) block by block. With D_i = do_i·o_i:

    dV = Pᵀ dO,   dS = P ⊙ (dO Vᵀ - D),   dQ = scale dS K,   dK = scale dSᵀ Q,
    dF_i = Σ_j dS_ij (query side),   dF_j = -Σ_i dS_ij (key side)

The query side is zero in exact arithmetic (a softmax row does not change when all its
scores shift), but with bfloat16 probabilities it is not, and only when both sides come from
the same dS do their rounding errors cancel in the gate's cumulative sum.

Rows are [bq, 1] and columns [1, bk] arrays (``Lines``), so masks and gate biases broadcast.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Settings(NamedTuple):
    """Static settings of the kernels (hashable: a nondiff argument of the custom VJP)."""

    scale: float
    causal: bool
    window: int | None
    query_block: int
    key_block: int
    heads_per_group: int
    # Tk - Tq when query row i has position i + offset and key row j position j (the op's
    # default positions, causal), so the block pairs that hold an allowed key are known
    # from block indices; None when positions are arbitrary (every pair is visited).
    position_offset: int | None


class Lines(NamedTuple):
    """Per-row ([bq, 1]) or per-column ([1, bk]) inputs of the mask and the gate; segment and
    forget are None when absent (so they drop out of the kernel's pytree of refs)."""

    position: jax.Array
    segment: jax.Array | None = None
    forget: jax.Array | None = None


def read_lines(refs: Lines, index) -> Lines:
    return Lines(*(None if ref is None else ref[index] for ref in refs))


def _dot(a, b, dims):
    precision = jax.lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return jax.lax.dot_general(
        a, b, (dims, ((), ())), precision=precision, preferred_element_type=jnp.float32
    )


def dot(a, b):  # a @ b
    return _dot(a, b, ((1,), (0,)))


def dot_nt(a, b):  # a @ bᵀ
    return _dot(a, b, ((1,), (1,)))


def dot_tn(a, b):  # aᵀ @ b
    return _dot(a, b, ((0,), (0,)))


def scores(settings: Settings, q, k, rows: Lines, columns: Lines):
    """s [bq, bk] in float32: scale · q kᵀ plus F_i - F_j, -inf where not allowed."""
    result = settings.scale * dot_nt(q, k)
    if rows.forget is not None:
        result += rows.forget - columns.forget
    allowed = columns.position >= 0
    if settings.causal:
        allowed &= columns.position <= rows.position
    if settings.window is not None:
        allowed &= rows.position - columns.position < settings.window
    if rows.segment is not None:
        allowed &= rows.segment == columns.segment
    return jnp.where(allowed, result, -jnp.inf)


def initial_carry(query_block: int, value_size: int):
    return (
        jnp.full((query_block, 1), -jnp.inf, jnp.float32),
        jnp.zeros((query_block, 1), jnp.float32),
        jnp.zeros((query_block, value_size), jnp.float32),
    )


def forward_step(settings: Settings, carry, q, k, v, rows: Lines, columns: Lines):
    """Folds one key block into the running max, sum and accumulator of the online softmax."""
    running_max, running_sum, accumulator = carry
    s = scores(settings, q, k, rows, columns)
    new_max = jnp.maximum(running_max, jnp.max(s, axis=1, keepdims=True))
    # Rows with no allowed key so far keep max -inf; shift them by 0 so exp gives 0.
    shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
    weights = jnp.exp(s - shift)
    rescale = jnp.exp(running_max - shift)
    running_sum = rescale * running_sum + jnp.sum(weights, axis=1, keepdims=True)
    accumulator = rescale * accumulator + dot(weights.astype(v.dtype), v)
    return new_max, running_sum, accumulator


def finish(carry):
    """Outputs [bq, V] and logsumexp [bq, 1]; a row with no allowed key gives 0 and 0 (its
    scores are all -inf, so any finite logsumexp gives it zero probabilities)."""
    running_max, running_sum, accumulator = carry
    has_keys = running_sum > 0
    safe_sum = jnp.where(has_keys, running_sum, 1.0)
    logsumexp = jnp.where(has_keys, running_max + jnp.log(safe_sum), 0.0)
    return accumulator / safe_sum, logsumexp


def score_gradients(settings: Settings, q, k, v, do, logsumexp, row_dot, rows, columns):
    """P and dS [bq, bk] of one block pair, recomputed from the logsumexp."""
    probabilities = jnp.exp(scores(settings, q, k, rows, columns) - logsumexp)
    return probabilities, probabilities * (dot_nt(do, v) - row_dot)


def floor_divide(x, divisor: int):
    """⌊x / divisor⌋ for a positive divisor with truncating divisions only (Mosaic lowers jnp's
    floor division through sign, which needs a TPU at hand to lower)."""
    x = jnp.asarray(x, jnp.int32)
    return jnp.where(x >= 0, jax.lax.div(x, divisor), -jax.lax.div(divisor - 1 - x, divisor))


def key_block_range(settings: Settings, query_block_index, num_key_blocks):
    """Key blocks [first, end) that can hold an allowed key for this query block."""
    offset = settings.position_offset
    if offset is None:
        return 0, num_key_blocks
    first_position = query_block_index * settings.query_block + offset
    last_position = first_position + settings.query_block - 1
    end = jnp.clip(floor_divide(last_position, settings.key_block) + 1, 0, num_key_blocks)
    if settings.window is None:
        return 0, end
    first = jnp.maximum(floor_divide(first_position - settings.window + 1, settings.key_block), 0)
    return first, end


def query_block_range(settings: Settings, key_block_index, num_query_blocks):
    """Query blocks [first, end) that can hold a query allowed to see this key block."""
    offset = settings.position_offset
    if offset is None:
        return 0, num_query_blocks
    first_position = key_block_index * settings.key_block
    first = jnp.clip(
        floor_divide(first_position - offset, settings.query_block), 0, num_query_blocks
    )
    if settings.window is None:
        return first, num_query_blocks
    last_query = first_position + settings.key_block - 1 + settings.window - 1 - offset
    return first, jnp.clip(floor_divide(last_query, settings.query_block) + 1, 0, num_query_blocks)
