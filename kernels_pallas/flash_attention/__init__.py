"""Pallas kernels for seqjax.ops.attention.softmax_attention (FlashAttention-2, Dao 2023):

    o_i = Σ_j softmax_j(scale · q_i·k_j + F_i - F_j, over the keys j that query i may see) v_j

``tpu.flash_attention`` (Mosaic) and ``gpu.flash_attention`` (Triton) take the op's
arguments: causal and sliding-window masks over any query and key positions (a KV cache
included), segment ids, the forget gate F, grouped-query heads. Both differentiate through
one custom VJP (``vjp``) with a dq kernel and a dk/dv kernel that recompute the
probabilities from the forward pass's logsumexp (the math of one block pair: ``block``).
"""

import jax

from kernels_pallas.common import platform_unsupported
from kernels_pallas.flash_attention import gpu, tpu

PLATFORMS = {"tpu": tpu.flash_attention, "gpu": gpu.flash_attention}


def unsupported_reason(platform: str) -> str | None:
    """Why the kernels cannot run on ``platform``, or None (they take every mask, position
    and head layout of the op)."""
    return platform_unsupported(platform, "flash_attention")


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, platform: str, **options):
    """The kernel for ``platform`` ("tpu" or "gpu") with the op's arguments."""
    return PLATFORMS[platform](q, k, v, **options)
