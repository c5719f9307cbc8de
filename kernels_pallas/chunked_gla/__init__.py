"""Pallas kernels for seqjax.ops.linear_attention.gated_linear_attention:
S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

``chunked_gla`` takes the op's arguments and returns ``(o, final_state)`` with the kernels of
a platform: ``tpu.kernels`` (Mosaic) or ``gpu.kernels`` (Triton), with scalar or per-key
decays, initial and final states and the chunk size as a parameter; both differentiate
through one custom VJP (``vjp``) with kernels for the state gradients and for dq, dk, dv.
"""

import functools

import jax

from kernels_pallas.chunked_gla import gpu, tpu, vjp
from kernels_pallas.common import chunked_unsupported

BACKENDS = {"tpu": tpu, "gpu": gpu}
# Why the kernels cannot run: unsupported_reason(platform, segment_starts=, chunk_size=).
unsupported_reason = functools.partial(chunked_unsupported, kernels="chunked_gla")


def chunked_gla(
    q: jax.Array, k: jax.Array, v: jax.Array, *, platform: str, log_decay: jax.Array | None = None,
    initial_state: jax.Array | None = None, scale: float | None = None,
    chunk_size: int | None = None, **kernel_options,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t with the kernels
    of ``platform`` ("tpu" or "gpu"); arguments and results as in
    seqjax.ops.linear_attention.gated_linear_attention (which takes segment_starts, these
    kernels do not).

    Args:
      chunk_size: C, a power of two >= 16 (None: the platform's DEFAULT_CHUNK_SIZE).
      kernel_options: the tile sizes and ``interpret`` of ``tpu.kernels`` or ``gpu.kernels``.
    """
    backend = BACKENDS[platform]
    chunk_size = backend.DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    return vjp.gated_linear_attention(
        backend.kernels(**kernel_options), q, k, v, log_decay, initial_state, scale, chunk_size
    )
