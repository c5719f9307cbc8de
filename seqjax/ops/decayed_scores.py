"""Decayed attention-like scores inside a chunk, shared by the chunked gated linear attention
and the chunked delta rules:

    A_ij = Σ_k q_ik k_jk exp(c_ik - b_jk)      where a mask holds, else 0

with b_j the cumulative log decay of the key (inclusive: Σ_{s <= j} log_decay_s) and c_i that
of the query: the inclusive b_i (gated linear attention's outputs, j <= i) or the exclusive
b_{i-1} (the delta rules' corrections, j < i). The mask may hold only where c_i - b_j <= 0.
Packed sequences restart the sums at each segment start and mask pairs of two segments, so
c_i - b_j may be positive off the mask, and every exponent is masked before its exp.

A decay per head factors out of the sum over k: one matmul, then the decay. A decay per key
does not, and exp(c_i - b_j) split as exp(c_i) exp(-b_j) would overflow for strong decays, so
every factor is formed with no positive exponent by halving (``_halved_scores``): across the
two halves of a block, every pair has j < m <= i (m the first step of the second half), and
exp(c_i - b_j) = exp(c_i - b_{m-1}) · exp(b_{m-1} - b_j), both exponents <= 0 (c_i is b_i
or b_{i-1} with i >= m, and j <= m - 1), so that quarter is a matmul of rescaled queries and
keys (a query or key with no pair on the mask in that quarter is zeroed instead: with
packed sequences m - 1 may lie in another segment); each half recurses, down to blocks of
at most ``PER_KEY_LEAF`` steps formed one product per key, masked before the exp. A block
of 16 steps takes 96 exponentials per key dimension where forming it directly takes 256.
"""

import jax
import jax.numpy as jnp

from seqjax.typing import Array

# Blocks of at most this many steps form their per-key scores one product per key; larger
# blocks are halved.
PER_KEY_LEAF = 4


def decayed_scores(
    queries: Array, query_cumulative: Array, keys: Array, key_cumulative: Array, mask: Array
) -> Array:
    """A_ij of the module docstring within blocks: [B, S, ci, cj, H].

    Args:
      queries, keys: [B, S, c, H, K], S blocks of c steps.
      query_cumulative, key_cumulative: c and b [B, S, c, H, K], or [B, S, c, H, 1] for a
        decay per head.
      mask: bool [B, S, ci, cj, H] or [B, S, ci, cj, 1]; true only where c_i - b_j <= 0.
    """
    if query_cumulative.shape[-1] == 1:
        exponent = query_cumulative[:, :, :, None, :, 0] - key_cumulative[:, :, None, :, :, 0]
        decay = jnp.exp(jnp.where(mask, exponent, -jnp.inf))  # 0 off the mask
        # The chunked forms see finite inputs only (seqjax.ops.finite), so a zero decay
        # drops its product; a select here would cost a pass over the scores.
        return jnp.einsum("bsihk,bsjhk->bsijh", queries, keys) * decay
    return _halved_scores(queries, query_cumulative, keys, key_cumulative, mask)


def _halved_scores(q, c, k, b, mask):
    """``decayed_scores`` with a decay per key, by halving (module docstring), one level at
    a time for all blocks at once: the leaves (blocks of at most ``PER_KEY_LEAF`` steps, or
    of the odd factor of the block length), then pairs of blocks joined by their across
    quarter, up to the whole block."""
    batch, num_blocks, size = q.shape[:3]
    leaf = size
    while leaf > PER_KEY_LEAF and leaf % 2 == 0:
        leaf //= 2

    def blocks(t, n):  # [B, S, c, ...] -> [B, S·c/n, n, ...]
        return t.reshape(batch, num_blocks * (size // n), n, *t.shape[3:])

    def diagonal_blocks(n):  # the mask's [n, n] blocks on the diagonal: [B, S·c/n, n, n, ·]
        grid = mask.reshape(batch, num_blocks, size // n, n, size // n, n, mask.shape[-1])
        grid = jnp.moveaxis(jnp.diagonal(grid, axis1=2, axis2=4), -1, 2)
        return grid.reshape(batch, num_blocks * (size // n), n, n, mask.shape[-1])

    scores = _per_key_scores(*(blocks(t, leaf) for t in (q, c, k, b)), diagonal_blocks(leaf))
    half = leaf
    while half < size:
        q_n, c_n, k_n, b_n = (blocks(t, 2 * half) for t in (q, c, k, b))
        # b_{m-1} cancels in every product, so no gradient flows through it.
        boundary = jax.lax.stop_gradient(b_n[:, :, half - 1 : half])
        quarter = diagonal_blocks(2 * half)[:, :, half:, :half]  # [B, N, i, j, H|1]
        # A pair (i, j) on the mask puts m - 1 in the segment of both.
        query_exponent = jnp.where(
            jnp.any(quarter, axis=3)[..., None], c_n[:, :, half:] - boundary, -jnp.inf
        )
        key_exponent = jnp.where(
            jnp.any(quarter, axis=2)[..., None], boundary - b_n[:, :, :half], -jnp.inf
        )
        query = q_n[:, :, half:] * jnp.exp(query_exponent)
        key = k_n[:, :, :half] * jnp.exp(key_exponent)
        across = jnp.where(quarter, jnp.einsum("bsihk,bsjhk->bsijh", query, key), 0.0)
        pairs = scores.reshape(batch, -1, 2, *scores.shape[2:])
        top = jnp.concatenate([pairs[:, :, 0], jnp.zeros_like(across)], axis=3)
        bottom = jnp.concatenate([across, pairs[:, :, 1]], axis=3)
        scores = jnp.concatenate([top, bottom], axis=2)
        half *= 2
    return scores.reshape(batch, num_blocks, size, size, -1)


def _masked_decays(c, b, mask):
    """D_ijk = exp(c_ik - b_jk) where ``mask`` holds, else 0 (masked before the exp, so no
    exponent is positive): [B, S, ci, cj, H, K]."""
    exponent = c[:, :, :, None] - b[:, :, None, :]
    return jnp.exp(jnp.where(mask[..., None], exponent, -jnp.inf))


@jax.custom_vjp
def _per_key_scores(q, c, k, b, mask):
    """A_ij = Σ_k q_ik k_jk D_ijk (``_masked_decays``) where ``mask`` holds, else 0, as one
    product and sum (as an einsum XLA transposes the 6-d factor): [B, S, ci, cj, H]."""
    products = q[:, :, :, None] * k[:, :, None, :] * _masked_decays(c, b, mask)
    return jnp.where(mask, jnp.sum(products, -1), 0.0)


def _per_key_scores_forward(q, c, k, b, mask):
    decay = _masked_decays(c, b, mask)
    scores = jnp.where(mask, jnp.sum(q[:, :, :, None] * k[:, :, None, :] * decay, -1), 0.0)
    return scores, (q, k, decay)


def _per_key_scores_backward(residuals, scores_cotangent):
    """With P_ijk = dA_ij D_ijk: dq_ik = Σ_j P_ijk k_jk and dk_jk = Σ_i P_ijk q_ik, and as
    D_ijk = exp(c_ik - b_jk), dc = q ⊙ dq and db = -k ⊙ dk: two reductions of the 6-d
    product where autodiff takes four."""
    q, k, decay = residuals
    weighted = scores_cotangent[..., None] * decay
    dq = jnp.sum(weighted * k[:, :, None, :], axis=3)
    dk = jnp.sum(weighted * q[:, :, :, None], axis=2)
    return dq, q * dq, dk, -k * dk, None


_per_key_scores.defvjp(_per_key_scores_forward, _per_key_scores_backward)
