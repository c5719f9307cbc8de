"""Pallas kernels for seqjax.ops.delta_rule.delta_rule:
S_t = exp(log_decay_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

``tpu.chunked_delta_rule`` (Mosaic) and ``gpu.chunked_delta_rule`` (Triton) take the op's
arguments and return ``(o, final_state)``: the UT transform per chunk (``chunk``), with an
optional scalar decay per head, β in [0, 2], initial and final states and the chunk size
as a parameter; both differentiate through one custom VJP (``vjp``) whose backward kernel
recomputes each chunk from the state saved at its start.
"""

from kernels_pallas.chunked_delta_rule import gpu, tpu
from kernels_pallas.common import platform_unsupported

PLATFORMS = {"tpu": tpu.chunked_delta_rule, "gpu": gpu.chunked_delta_rule}


def unsupported_reason(platform: str, *, segment_starts, chunk_size: int) -> str | None:
    """Why the kernels cannot run on ``platform`` for these arguments, or None."""
    if (reason := platform_unsupported(platform, "chunked_delta_rule")) is not None:
        return reason
    if segment_starts is not None:
        return "the kernels take no segment_starts (packed sequences run in 'chunked')"
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        return f"the kernels need a chunk_size that is a power of two >= 16, not {chunk_size}"
    return None


def chunked_delta_rule(q, k, v, beta, *, platform: str, **options):
    """The kernel for ``platform`` ("tpu" or "gpu") with the op's arguments."""
    return PLATFORMS[platform](q, k, v, beta, **options)
