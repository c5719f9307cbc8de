"""Pallas kernels for seqjax.ops.attention.softmax_attention (FlashAttention-2, Dao 2023):

    o_i = Σ_j softmax_j(scale · q_i·k_j + F_i - F_j, over the keys j that query i may see) v_j

``flash_attention`` takes the op's arguments, with the kernels of a platform: ``tpu.kernels``
(Mosaic) or ``gpu.kernels`` (Triton): causal and sliding-window masks over any query and key
positions (a KV cache included), segment ids, the forget gate F (its cumulative sum
restarting at each key segment, as in the op's XLA forms), grouped-query heads. Both
differentiate through one custom VJP (``vjp``) with a dq kernel and a dk/dv kernel that
recompute the probabilities from the forward pass's logsumexp (the math of one block pair:
``block``).
"""

import jax

from kernels_pallas.common import platform_unsupported
from kernels_pallas.flash_attention import gpu, tpu, vjp

BACKENDS = {"tpu": tpu, "gpu": gpu}


def unsupported_reason(platform: str) -> str | None:
    """Why the kernels cannot run on ``platform``, or None (they take every mask, position
    and head layout of the op)."""
    return platform_unsupported(platform, "flash_attention")


def flash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, platform: str,
    q_positions: jax.Array | None = None, kv_positions: jax.Array | None = None,
    q_segment_ids: jax.Array | None = None, kv_segment_ids: jax.Array | None = None,
    causal: bool = True, window: int | None = None, log_forget: jax.Array | None = None,
    scale: float | None = None, **kernel_options,
) -> jax.Array:  # fmt: skip
    """o_i = Σ_j softmax_j(scale · q_i·k_j + F_i - F_j over allowed j) v_j with the kernels of
    ``platform`` ("tpu" or "gpu"); arguments and result as in
    seqjax.ops.attention.softmax_attention.

    Args:
      kernel_options: the block sizes and ``interpret`` of ``tpu.kernels`` or ``gpu.kernels``.
    """
    masking = (q_positions, kv_positions, q_segment_ids, kv_segment_ids, causal, window)
    kernels = BACKENDS[platform].kernels(**kernel_options)
    return vjp.flash_attention(kernels, q, k, v, *masking, log_forget, scale)
