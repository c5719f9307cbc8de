"""Pallas kernels for seqjax.ops.linear_attention.gated_linear_attention:
S_t = diag(exp(log_decay_t)) S_{t-1} + k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

``tpu.chunked_gla`` (Mosaic) and ``gpu.chunked_gla`` (Triton) take the op's arguments and
return ``(o, final_state)``, with scalar or per-key decays, initial and final states and the
chunk size as a parameter; both differentiate through one custom VJP (``vjp``) with kernels
for the state gradients and for dq, dk, dv.
"""

import jax

from kernels_pallas.chunked_gla import gpu, tpu
from kernels_pallas.common import platform_unsupported

PLATFORMS = {"tpu": tpu.chunked_gla, "gpu": gpu.chunked_gla}


def unsupported_reason(platform: str, *, segment_starts, chunk_size: int) -> str | None:
    """Why the kernels cannot run on ``platform`` for these arguments, or None."""
    if (reason := platform_unsupported(platform, "chunked_gla")) is not None:
        return reason
    if segment_starts is not None:
        return "the kernels take no segment_starts (packed sequences run in 'chunked')"
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        return f"the kernels need a chunk_size that is a power of two >= 16, not {chunk_size}"
    return None


def chunked_gla(q: jax.Array, k: jax.Array, v: jax.Array, *, platform: str, **options):
    """The kernel for ``platform`` ("tpu" or "gpu") with the op's arguments."""
    return PLATFORMS[platform](q, k, v, **options)
