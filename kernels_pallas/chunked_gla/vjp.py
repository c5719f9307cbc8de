"""The layout and custom VJP shared by the TPU and GPU gated-linear-attention kernels.

A backend supplies three kernels over head-major arrays ([B, H, T, ·], T a multiple of the
chunk size C, states transposed [V, K]):

    forward(q, k, v, b, initial, chunk=C)  -> o, final, entering   (entering [B, H, N, V, K])
    state_gradients(q, b, do, final_grad, chunk=C)  -> leaving_grads, initial_grad
    input_gradients(q, k, v, b, do, entering, leaving_grads, chunk=C)  -> dq, dk, dv (float32)

with b the log decay summed inside each chunk. The gradient of the log decay needs no
kernel: with B the cumulative log decay over the whole sequence, L depends on B_t through
q_t (every term of S_t carries e^{B_t}) and k_t (e^{-B_t}), so
∂L/∂B_t = q_t ⊙ dq_t - k_t ⊙ dk_t, plus the final state's Σ_v dS_final ⊙ S_final at the last
step, and ∂L/∂log_decay_t = Σ_{s ≥ t} ∂L/∂B_s.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels_pallas.chunked_gla import chunk as chunk_math
from kernels_pallas.common import chunk_size_unsupported, pad_axis, pad_to


class Kernels(NamedTuple):
    forward: callable
    state_gradients: callable
    input_gradients: callable
    padded_size: callable  # K and V are zero-padded to padded_size(K), padded_size(V)
    sub_chunk: int  # rows per sub-chunk of the per-key scores; divides the chunk size


def gated_linear_attention(kernels, q, k, v, log_decay, initial_state, scale, chunk_size):
    """seqjax.ops.linear_attention.gated_linear_attention with ``kernels`` (the arguments of
    kernels_pallas.chunked_gla.chunked_gla)."""
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"chunked_gla: q, k [B, T, H, K], v [B, T, H, V]; got {q.shape}, "
                         f"{k.shape}, {v.shape}")  # fmt: skip
    if (reason := chunk_size_unsupported(chunk_size)) is not None:
        raise ValueError(f"chunked_gla: {reason}")
    if chunk_size % kernels.sub_chunk:
        raise ValueError(
            f"chunked_gla: sub_chunk {kernels.sub_chunk} must divide chunk_size {chunk_size}"
        )
    batch, length, heads, key_size = q.shape
    value_size = v.shape[-1]
    if initial_state is None:
        initial_state = jnp.zeros((batch, heads, key_size, value_size), jnp.float32)
    if log_decay is None:
        log_decay = jnp.zeros((batch, length, heads, key_size), jnp.float32)
    elif log_decay.ndim == 3:  # one decay per head, applied to every key dimension
        log_decay = log_decay[..., None]
    log_decay = jnp.broadcast_to(log_decay, q.shape)
    if scale is not None:
        q = q.astype(jnp.float32) * scale

    padded_key, padded_value = kernels.padded_size(key_size), kernels.padded_size(value_size)

    def head_major(t, size):  # [B, T, H, X] -> [B, H, T', X'] in whole chunks and tiles
        return pad_axis(pad_to(jnp.swapaxes(t, 1, 2), 3, size), 2, chunk_size)

    state = jnp.swapaxes(initial_state.astype(jnp.float32), 2, 3)  # [B, H, V, K]
    state = pad_to(pad_to(state, 2, padded_value), 3, padded_key)
    output, final_state = _attention(
        kernels,
        chunk_size,
        head_major(q, padded_key),
        head_major(k, padded_key),
        head_major(v, padded_value),
        head_major(log_decay.astype(jnp.float32), padded_key),
        state,
    )
    output = jnp.swapaxes(output[:, :, :length, :value_size], 1, 2).astype(v.dtype)
    final_state = jnp.swapaxes(final_state[:, :, :value_size, :key_size], 2, 3)
    return output, final_state


def input_gradients(q, k, v, b, do, entering, leaving_grads, *, chunk, sub, params, interpret):
    """The input-gradient kernel of both backends: every chunk on its own over the grid
    (B, H, chunks), from the states saved at the chunk starts and the gradients of the
    states leaving them; ``params`` are the backend's compiler parameters."""
    batch, heads, length, key_size = q.shape
    value_size = v.shape[-1]

    def kernel(q_ref, k_ref, v_ref, b_ref, do_ref, state_ref, state_grad_ref, *out_refs):
        refs = (q_ref, k_ref, v_ref, b_ref, do_ref, *out_refs)
        chunk_math.input_gradients(refs, state_ref[...], state_grad_ref[...], chunk=chunk, sub=sub)

    def chunk_spec(size):
        return pl.BlockSpec((None, None, chunk, size), lambda b, h, n: (b, h, n, 0))

    state_spec = pl.BlockSpec(
        (None, None, None, value_size, key_size), lambda b, h, n: (b, h, n, 0, 0)
    )
    key_spec, value_spec = chunk_spec(key_size), chunk_spec(value_size)
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, length // chunk),
        in_specs=[key_spec, key_spec, value_spec, key_spec, value_spec, state_spec, state_spec],
        out_specs=[key_spec, key_spec, value_spec],
        out_shape=[jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (q, k, v)],
        compiler_params=params,
        interpret=interpret,
        name="chunked_gla_input_gradients",
    )(q, k, v, b, do, entering, leaving_grads)


def _within_chunks(log_decay, chunk_size):
    """b: the log decay summed from the start of each chunk, [B, H, T, K]."""
    batch, heads, length, key_size = log_decay.shape
    chunks = log_decay.reshape(batch, heads, length // chunk_size, chunk_size, key_size)
    return jnp.cumsum(chunks, axis=3).reshape(log_decay.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attention(kernels, chunk_size, q, k, v, log_decay, initial):
    output, final, _ = kernels.forward(
        q, k, v, _within_chunks(log_decay, chunk_size), initial, chunk=chunk_size
    )
    return output, final


def _attention_forward(kernels, chunk_size, q, k, v, log_decay, initial):
    b = _within_chunks(log_decay, chunk_size)
    output, final, entering = kernels.forward(q, k, v, b, initial, chunk=chunk_size)
    return (output, final), (q, k, v, b, entering, final)


def _attention_backward(kernels, chunk_size, residuals, cotangents):
    q, k, v, b, entering, final = residuals
    output_grad, final_grad = cotangents
    output_grad = output_grad.astype(v.dtype)
    leaving_grads, initial_grad = kernels.state_gradients(
        q, b, output_grad, final_grad, chunk=chunk_size
    )
    dq, dk, dv = kernels.input_gradients(
        q, k, v, b, output_grad, entering, leaving_grads, chunk=chunk_size
    )
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    cumulative_grad = f32(q) * dq - f32(k) * dk  # ∂L/∂B_t
    cumulative_grad = cumulative_grad.at[:, :, -1].add(jnp.sum(final_grad * final, axis=2))
    log_decay_grad = jnp.flip(jnp.cumsum(jnp.flip(cumulative_grad, 2), axis=2), 2)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), log_decay_grad, initial_grad


_attention.defvjp(_attention_forward, _attention_backward)
