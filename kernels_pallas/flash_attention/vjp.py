"""The layout and custom VJP shared by the TPU and GPU attention kernels.

A backend supplies three kernels over head-major arrays (q [B, H, Tq, K], k and v
[B, G, Tk, ·], lengths padded to whole blocks), with the mask and gate inputs as
``block.Lines`` of rows ([B, Tq, 1] positions and segments, [B, H, Tq, 1] forget
cumulatives) and columns ([B, 1, Tk], [B, H, 1, Tk]):

    forward(settings, q, k, v, rows, columns)  -> o (float32), logsumexp [B, H, Tq, 1]
    query_gradients(settings, q, k, v, do, logsumexp, row_dot, rows, columns)
        -> dq, dF of the query rows [B, H, Tq, 1]
    key_gradients(same arguments)  -> dk, dv per query head [B, H, Tk, ·], dF [B, H, 1, Tk]

(gradients in float32, the dF None without a forget gate; the dk and dv of the H / G query
heads that share a key/value head are summed here, the gate's cumulative sum by autodiff
outside the custom VJP).

The cumulatives F restart at every change of the key segment id (``cumulative_log_forget``),
so F_i - F_j of an allowed pair sums its own segment's gates only; a pair of two segments may
have any F_i - F_j, which ``block.scores`` replaces by -inf before any exp (so its
probability and its dS are exactly 0, forward and backward).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels_pallas.common import pad_axis, pad_to
from kernels_pallas.flash_attention.block import Lines, Settings


class Kernels(NamedTuple):
    forward: callable
    query_gradients: callable
    key_gradients: callable
    block_sizes: callable  # (Tq, Tk) -> the query and key block lengths
    padded_size: callable  # K and V are zero-padded to padded_size(K), padded_size(V)


def flash_attention(
    kernels, q, k, v, q_positions, kv_positions, q_segment_ids, kv_segment_ids, causal, window,
    log_forget, scale,
):  # fmt: skip
    """seqjax.ops.attention.softmax_attention with ``kernels`` (the arguments of
    kernels_pallas.flash_attention.flash_attention)."""
    if q.ndim != 4 or k.ndim != 4 or v.shape[:3] != k.shape[:3] or q.shape[2] % k.shape[2]:
        raise ValueError(f"flash_attention: q [B, Tq, H, K], k [B, Tk, G, K], v [B, Tk, G, V] "
                         f"with H % G == 0; got {q.shape}, {k.shape}, {v.shape}")  # fmt: skip
    if (q_segment_ids is None) != (kv_segment_ids is None):
        raise ValueError("flash_attention: give both q_segment_ids and kv_segment_ids, or neither")
    if window is not None and not causal:
        raise ValueError("flash_attention: window requires causal=True")
    batch, query_length, heads, key_size = q.shape
    key_length, groups, value_size = k.shape[1], k.shape[2], v.shape[3]
    query_block, key_block = kernels.block_sizes(query_length, key_length)
    default_positions = q_positions is None and kv_positions is None
    if q_positions is None:
        q_positions = jnp.arange(query_length, dtype=jnp.int32) + key_length - query_length
    if kv_positions is None:
        kv_positions = jnp.arange(key_length, dtype=jnp.int32)
    settings = Settings(
        scale=key_size**-0.5 if scale is None else float(scale),
        causal=causal,
        window=window,
        query_block=query_block,
        key_block=key_block,
        heads_per_group=heads // groups,
        position_offset=key_length - query_length if default_positions and causal else None,
    )

    def as_rows(x, pad_value=0):  # [B, Tq] -> [B, Tq', 1]
        x = jnp.broadcast_to(jnp.asarray(x, jnp.int32), (batch, query_length))
        return pad_axis(x, 1, query_block, pad_value)[:, :, None]

    def as_columns(x, pad_value):  # [B, Tk] -> [B, 1, Tk']
        x = jnp.broadcast_to(jnp.asarray(x, jnp.int32), (batch, key_length))
        return pad_axis(x, 1, key_block, pad_value)[:, None, :]

    # Padded keys get position -1, so the mask drops them; padded query rows are cut off.
    rows, columns = Lines(as_rows(q_positions)), Lines(as_columns(kv_positions, -1))
    if q_segment_ids is not None:
        rows = rows._replace(segment=as_rows(q_segment_ids))
        columns = columns._replace(segment=as_columns(kv_segment_ids, 0))
    if log_forget is not None:
        cumulative = jnp.swapaxes(cumulative_log_forget(log_forget, kv_segment_ids), 1, 2)
        query_forget = cumulative[:, :, key_length - query_length :]  # F [B, H, Tq]
        rows = rows._replace(forget=pad_axis(query_forget, 2, query_block)[..., None])
        columns = columns._replace(forget=pad_axis(cumulative, 2, key_block)[:, :, None, :])

    def head_major(x, block, size):  # [B, T, H, X] -> [B, H, T', X']
        return pad_axis(pad_to(jnp.swapaxes(x, 1, 2), 3, size), 2, block)

    padded_key, padded_value = kernels.padded_size(key_size), kernels.padded_size(value_size)
    output = _attention(
        kernels,
        settings,
        head_major(q, query_block, padded_key),
        head_major(k, key_block, padded_key),
        head_major(v.astype(q.dtype), key_block, padded_value),
        rows,
        columns,
    )
    return jnp.swapaxes(output[:, :, :query_length, :value_size], 1, 2)


def cumulative_log_forget(log_forget, kv_segment_ids):
    """F [B, Tk, H] in float32: Σ log f over the keys up to each one, restarting at every key
    whose segment id differs from the one before it, as in seqjax.ops.attention's XLA forms.
    F_i - F_j of two keys of one segment is then a sum of that segment's gates alone; summed
    from the first key, it would cancel the earlier segments' (strong gates there cost a
    later segment its precision, and their gradients are not zero).

    A segmented sum by ``associative_scan`` (the pair (sum, starts a segment), where a
    start drops what came before it): log-depth on the device, where a key-by-key scan would
    be Tk sequential steps, and its gradient is exactly zero across a segment start (the
    ``where`` passes nothing to the unselected sum)."""
    log_forget = log_forget.astype(jnp.float32)
    if kv_segment_ids is None:
        return jnp.cumsum(log_forget, axis=1)
    ids = jnp.broadcast_to(kv_segment_ids, log_forget.shape[:2])
    starts = jnp.concatenate([jnp.ones_like(ids[:, :1], bool), ids[:, 1:] != ids[:, :-1]], axis=1)

    def combine(earlier, later):
        (earlier_sum, earlier_starts), (later_sum, later_starts) = earlier, later
        total = jnp.where(later_starts, later_sum, earlier_sum + later_sum)
        return total, earlier_starts | later_starts

    starts = jnp.broadcast_to(starts[:, :, None], log_forget.shape)
    return jax.lax.associative_scan(combine, (log_forget, starts), axis=1)[0]


def pallas_call_tree(kernel, inputs, in_specs, out_shape, out_specs, **options):
    """pl.pallas_call over pytrees (None leaves drop out): ``kernel(input_refs, output_refs,
    scratch_refs)`` gets the refs in the structure of ``inputs`` and ``out_shape``."""
    flat_inputs, input_tree = jax.tree.flatten(inputs)
    flat_shapes, output_tree = jax.tree.flatten(out_shape)
    num_inputs, num_outputs = len(flat_inputs), len(flat_shapes)

    def flat_kernel(*refs):
        kernel(
            jax.tree.unflatten(input_tree, refs[:num_inputs]),
            jax.tree.unflatten(output_tree, refs[num_inputs : num_inputs + num_outputs]),
            refs[num_inputs + num_outputs :],
        )

    outputs = pl.pallas_call(
        flat_kernel,
        in_specs=jax.tree.leaves(in_specs),
        out_specs=jax.tree.leaves(out_specs),
        out_shape=flat_shapes,
        **options,
    )(*flat_inputs)
    return jax.tree.unflatten(output_tree, outputs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attention(kernels, settings, q, k, v, rows, columns):
    return kernels.forward(settings, q, k, v, rows, columns)[0].astype(q.dtype)


def _attention_forward(kernels, settings, q, k, v, rows, columns):
    output, logsumexp = kernels.forward(settings, q, k, v, rows, columns)
    return output.astype(q.dtype), (q, k, v, rows, columns, output, logsumexp)


def _attention_backward(kernels, settings, residuals, output_grad):
    q, k, v, rows, columns, output, logsumexp = residuals
    output_grad = output_grad.astype(q.dtype)
    row_dot = jnp.sum(
        output_grad.astype(jnp.float32) * output.astype(jnp.float32), axis=3, keepdims=True
    )  # D_i = do_i·o_i [B, H, Tq, 1]
    arguments = (settings, q, k, v, output_grad, logsumexp, row_dot, rows, columns)
    dq, row_forget_grad = kernels.query_gradients(*arguments)
    dk, dv, column_forget_grad = kernels.key_gradients(*arguments)

    def sum_groups(x):  # [B, H, Tk, X] -> [B, G, Tk, X]
        batch, heads, length, size = x.shape
        return jnp.sum(x.reshape(batch, heads // settings.heads_per_group, -1, length, size), 2)

    row_grads = Lines(None, None, row_forget_grad)
    column_grads = Lines(None, None, column_forget_grad)
    return (
        dq.astype(q.dtype),
        sum_groups(dk).astype(k.dtype),
        sum_groups(dv).astype(v.dtype),
        row_grads,
        column_grads,
    )


_attention.defvjp(_attention_forward, _attention_backward)
