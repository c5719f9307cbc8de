"""Pallas kernels for seqjax.ops.scan.linear_recurrence: h_t = a_t ⊙ h_{t-1} + x_t.

``tpu.linear_scan`` (Mosaic) and ``gpu.linear_scan`` (Triton) take the op's arguments and
return ``(h, final_state)``; both differentiate through one custom VJP (``recurrence``)
whose backward pass is the same kernel run in the other direction.
"""

import jax
import jax.numpy as jnp

from kernels_pallas.common import platform_unsupported
from kernels_pallas.linear_scan import gpu, tpu

PLATFORMS = {"tpu": tpu.linear_scan, "gpu": gpu.linear_scan}


def unsupported_reason(platform: str, dtype) -> str | None:
    """Why the kernels cannot run on ``platform`` for inputs of ``dtype``, or None."""
    if (reason := platform_unsupported(platform, "linear_scan")) is not None:
        return reason
    state_dtype = jnp.result_type(dtype, jnp.float32)
    if state_dtype not in (jnp.float32, jnp.complex64):
        return (
            f"the kernels carry float32 or complex64 states; inputs of {dtype} need {state_dtype}"
        )
    return None


def linear_scan(a: jax.Array, x: jax.Array, *, platform: str, **options):
    """The kernel for ``platform`` ("tpu" or "gpu") with the op's arguments."""
    return PLATFORMS[platform](a, x, **options)
