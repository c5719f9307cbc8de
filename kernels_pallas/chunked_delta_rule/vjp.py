"""The layout and custom VJP shared by the TPU and GPU delta-rule kernels.

A backend supplies two kernels over head-major arrays ([B, H, T, ·], T a multiple of the
chunk size C; beta and b as rows [B, H, T, 1], b also as columns [B, H, N, 1, C]; states
[B, H, K, V]), each running the chunks of a sequence in order with the state on chip:

    forward(q, k, v, beta, b_rows, b_columns, initial)  -> o, final, entering [B, H, N, K, V]
    backward(q, k, v, beta, b_rows, b_columns, entering, do, final_grad)
        -> dq, dk, dv, dbeta, db_rows, db_columns, initial_grad       (last chunk first)

with b the log decay summed inside each chunk; the gradient of the log decay follows from
that of b by autodiff of the cumulative sum outside the custom VJP.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels_pallas.common import chunk_size_unsupported, pad_axis, pad_to


class Kernels(NamedTuple):
    forward: callable
    backward: callable
    padded_size: callable  # K and V are zero-padded to padded_size(K), padded_size(V)


def delta_rule(kernels, q, k, v, beta, log_decay, initial_state, scale, chunk_size):
    """seqjax.ops.delta_rule.delta_rule with ``kernels`` (the arguments of
    kernels_pallas.chunked_delta_rule.chunked_delta_rule)."""
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or beta.shape != q.shape[:3]:
        raise ValueError(f"chunked_delta_rule: q, k [B, T, H, K], v [B, T, H, V], beta [B, T, H]; "
                         f"got {q.shape}, {k.shape}, {v.shape}, {beta.shape}")  # fmt: skip
    if (reason := chunk_size_unsupported(chunk_size)) is not None:
        raise ValueError(f"chunked_delta_rule: {reason}")
    batch, length, heads, key_size = q.shape
    value_size = v.shape[-1]
    if initial_state is None:
        initial_state = jnp.zeros((batch, heads, key_size, value_size), jnp.float32)
    if log_decay is None:
        log_decay = jnp.zeros((batch, length, heads), jnp.float32)

    def head_major(t, size=1):  # [B, T, H(, X)] -> [B, H, T', X'] in whole chunks and tiles
        t = jnp.swapaxes(t.astype(jnp.float32), 1, 2)
        t = t[..., None] if t.ndim == 3 else t
        return pad_axis(pad_to(t, 3, size), 2, chunk_size)

    # b: the log decay summed from the start of each chunk (padded steps: log decay 0, beta 0).
    chunks = head_major(log_decay)
    b_rows = jnp.cumsum(chunks.reshape(batch, heads, -1, chunk_size), axis=3).reshape(chunks.shape)
    padded_key, padded_value = kernels.padded_size(key_size), kernels.padded_size(value_size)
    state = pad_to(pad_to(initial_state.astype(jnp.float32), 2, padded_key), 3, padded_value)
    output, final_state = _delta_rule(
        kernels,
        1.0 if scale is None else float(scale),
        chunk_size,
        head_major(q, padded_key),
        head_major(k, padded_key),
        head_major(v, padded_value),
        head_major(beta),
        b_rows,
        b_rows.reshape(batch, heads, -1, 1, chunk_size),
        state,
    )
    output = jnp.swapaxes(output[:, :, :length, :value_size], 1, 2).astype(v.dtype)
    return output, final_state[:, :, :key_size, :value_size]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _delta_rule(kernels, scale, chunk_size, q, k, v, beta, b_rows, b_columns, initial):
    output, final, _ = kernels.forward(
        q, k, v, beta, b_rows, b_columns, initial, chunk=chunk_size, scale=scale
    )
    return output, final


def _delta_rule_forward(kernels, scale, chunk_size, *inputs):
    output, final, entering = kernels.forward(*inputs, chunk=chunk_size, scale=scale)
    return (output, final), (inputs[:-1], entering)


def _delta_rule_backward(kernels, scale, chunk_size, residuals, cotangents):
    inputs, entering = residuals
    output_grad, final_grad = cotangents
    return kernels.backward(
        *inputs, entering, output_grad.astype(jnp.float32), final_grad, chunk=chunk_size,
        scale=scale,
    )  # fmt: skip


_delta_rule.defvjp(_delta_rule_forward, _delta_rule_backward)
