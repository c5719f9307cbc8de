"""The chunk math of gated linear attention inside a kernel, shared by the TPU and GPU kernels.

Per head, with b the cumulative log decay inside a chunk (b_i = Σ_{s ≤ i} log_decay_s, per
key) and the state kept transposed, Sᵀ [V, K] (so the per-key decay scales columns):

    o_i = Σ_{j ≤ i} (Σ_k q_ik k_jk e^{b_ik - b_jk}) v_j + Sᵀ (q_i ⊙ e^{b_i})
    Sᵀ ← Sᵀ ⊙ e^{b_C} + Σ_j v_j (k_j ⊙ e^{b_C - b_j})ᵀ

The score of every pair (i, j) is formed with no positive exponent (GLA's secondary
chunking): the chunk is cut into sub-chunks of ``sub`` rows; for j before the sub-chunk of i,
which starts at row r, e^{b_i - b_j} = e^{b_i - b_r} e^{b_r - b_j}, both factors ≤ 1, so the
sum over k is a matmul; inside a sub-chunk each key column is formed directly. The backward
pass uses the same split with the pivot at the last row of the key's sub-chunk.

Functions read rows [start, start + n) of refs laid out [rows, K | V], so the same code
runs on a chunk-sized block (TPU, start 0) and on a whole sequence (GPU, start n·C).
"""

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels_pallas.common import dot, dot_nt, dot_tn


def rows(ref, start, size):
    return ref[pl.ds(start, size), :].astype(jnp.float32)


def _index(shape, axis):
    return jax.lax.broadcasted_iota(jnp.int32, shape, axis)


def _exp_where(mask, exponent):
    """e^{exponent} where mask, else 0, with no exp of a masked (possibly positive) value."""
    return jnp.exp(jnp.where(mask, exponent, -jnp.inf))


def forward(q_ref, k_ref, v_ref, b_ref, o_ref, start, state, *, chunk, sub):
    """Writes the chunk's outputs to o_ref and returns the state Sᵀ [V, K] leaving it."""
    k, v, b = rows(k_ref, start, chunk), rows(v_ref, start, chunk), rows(b_ref, start, chunk)
    key_row = _index((chunk, 1), 0)
    for first in range(0, chunk, sub):
        q_sub, b_sub = rows(q_ref, start + first, sub), rows(b_ref, start + first, sub)
        pivot = rows(b_ref, start + first, 1)
        earlier = key_row < first
        keys = jnp.where(earlier, k, 0.0) * _exp_where(earlier, pivot - b)
        scores = dot_nt(q_sub * jnp.exp(b_sub - pivot), keys)  # [sub, chunk]
        scores = _add_sub_chunk_scores(k_ref, b_ref, start, first, q_sub, b_sub, scores)
        output = dot(scores, v) + dot_nt(q_sub * jnp.exp(b_sub), state)
        o_ref[pl.ds(start + first, sub), :] = output.astype(o_ref.dtype)
    total = rows(b_ref, start + chunk - 1, 1)
    return state * jnp.exp(total) + dot_tn(v, k * jnp.exp(total - b))


def _add_sub_chunk_scores(k_ref, b_ref, start, first, q_sub, b_sub, scores):
    """Writes the scores of the sub-chunk's queries against its own keys (rows first ...
    first + sub of the chunk), one key column at a time, into ``scores`` [sub, chunk]."""
    sub = q_sub.shape[0]
    query_row, column = _index((sub, 1), 0), _index(scores.shape, 1)

    def key_column(offset, scores):
        k_j, b_j = (rows(ref, start + first + offset, 1) for ref in (k_ref, b_ref))
        allowed = query_row >= offset
        score = jnp.sum(q_sub * k_j * _exp_where(allowed, b_sub - b_j), axis=1, keepdims=True)
        return jnp.where(column == first + offset, score, scores)

    return jax.lax.fori_loop(0, sub, key_column, scores)


def state_gradient(q_ref, do_ref, b_ref, start, state_grad, *, chunk):
    """The gradient of the state entering a chunk from that of the state leaving it, both
    transposed [V, K]: dSᵀ ← dSᵀ ⊙ e^{b_C} + Σ_i do_i (q_i ⊙ e^{b_i})ᵀ."""
    q, do, b = rows(q_ref, start, chunk), rows(do_ref, start, chunk), rows(b_ref, start, chunk)
    total = rows(b_ref, start + chunk - 1, 1)
    return state_grad * jnp.exp(total) + dot_tn(do, q * jnp.exp(b))


def input_gradients(refs, state, state_grad, *, chunk, sub):
    """Writes dq, dk, dv of one chunk, from the state Sᵀ entering it and the gradient dSᵀ of
    the state leaving it (both [V, K]), with dA_ij = do_i · v_j for j ≤ i:

        dq_i = Σ_{j ≤ i} dA_ij e^{b_i - b_j} ⊙ k_j + e^{b_i} ⊙ (S do_i)
        dk_j = Σ_{i ≥ j} dA_ij e^{b_i - b_j} ⊙ q_i + e^{b_C - b_j} ⊙ (dS v_j)
        dv_j = Σ_{i ≥ j} A_ij do_i + dSᵀ (k_j ⊙ e^{b_C - b_j})

    ``refs``: q, k, v, b, do (read) and dq, dk, dv (written), chunk-sized blocks.
    """
    q_ref, k_ref, v_ref, b_ref, do_ref, dq_ref, dk_ref, dv_ref = refs
    q, k, v = rows(q_ref, 0, chunk), rows(k_ref, 0, chunk), rows(v_ref, 0, chunk)
    b, do = rows(b_ref, 0, chunk), rows(do_ref, 0, chunk)
    total = rows(b_ref, chunk - 1, 1)
    position = _index((chunk, 1), 0)
    for first in range(0, chunk, sub):
        q_sub, k_sub, v_sub = (rows(ref, first, sub) for ref in (q_ref, k_ref, v_ref))
        do_sub, b_sub = rows(do_ref, first, sub), rows(b_ref, first, sub)
        # Queries of this sub-chunk against the keys before it (pivot: its first row) ...
        pivot = rows(b_ref, first, 1)
        earlier = position < first
        keys = jnp.where(earlier, k, 0.0) * _exp_where(earlier, pivot - b)
        dq_sub = jnp.exp(b_sub - pivot) * dot(dot_nt(do_sub, v), keys)
        dq_sub += jnp.exp(b_sub) * dot(do_sub, state)
        # ... and keys of this sub-chunk against the queries after it (pivot: its last row).
        pivot = rows(b_ref, first + sub - 1, 1)
        later = position >= first + sub
        queries = jnp.where(later, q, 0.0) * _exp_where(later, b - pivot)
        key_decay = jnp.exp(pivot - b_sub)
        dk_sub = key_decay * dot(dot_nt(v_sub, do), queries)
        dv_sub = dot(dot_nt(k_sub * key_decay, queries), do)
        leaving = jnp.exp(total - b_sub)
        dk_sub += leaving * dot(v_sub, state_grad)
        dv_sub += dot_nt(k_sub * leaving, state_grad)
        dq_sub, dk_sub, dv_sub = _add_sub_chunk_gradients(
            refs[:5], first, (q_sub, k_sub, v_sub, b_sub, do_sub), (dq_sub, dk_sub, dv_sub)
        )
        for ref, value in ((dq_ref, dq_sub), (dk_ref, dk_sub), (dv_ref, dv_sub)):
            ref[pl.ds(first, sub), :] = value.astype(ref.dtype)


def _add_sub_chunk_gradients(refs, first, subs, grads):
    """Adds the gradients from the pairs inside one sub-chunk, one row at a time: the row as
    key j against the queries i ≥ j, and as query i against the keys j ≤ i."""
    q_sub, k_sub, v_sub, b_sub, do_sub = subs
    local = _index((q_sub.shape[0], 1), 0)

    def pair_row(offset, grads):
        dq_sub, dk_sub, dv_sub = grads
        q_i, k_j, v_j, b_row, do_i = (rows(ref, first + offset, 1) for ref in refs)
        after = local >= offset
        weight = jnp.where(after, jnp.sum(do_sub * v_j, axis=1, keepdims=True), 0.0)
        dq_sub += weight * _exp_where(after, b_sub - b_row) * k_j
        before = local <= offset
        decay = _exp_where(before, b_row - b_sub)
        weight = jnp.where(before, jnp.sum(v_sub * do_i, axis=1, keepdims=True), 0.0)
        dk_sub += weight * decay * q_i
        dv_sub += jnp.sum(k_sub * q_i * decay, axis=1, keepdims=True) * do_i
        return dq_sub, dk_sub, dv_sub

    return jax.lax.fori_loop(0, q_sub.shape[0], pair_row, grads)
