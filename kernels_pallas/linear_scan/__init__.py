"""Pallas kernels for seqjax.ops.scan.linear_recurrence: h_t = a_t ⊙ h_{t-1} + x_t.

``linear_scan`` takes the op's arguments and returns ``(h, final_state)`` with the kernel of a
platform: ``tpu.kernel`` (Mosaic) or ``gpu.kernel`` (Triton); both differentiate through one
custom VJP (``recurrence``) whose backward pass is the same kernel run in the other
direction.
"""

import jax
import jax.numpy as jnp

from kernels_pallas.common import platform_unsupported
from kernels_pallas.linear_scan import gpu, recurrence, tpu

BACKENDS = {"tpu": tpu, "gpu": gpu}


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


def linear_scan(
    a: jax.Array,
    x: jax.Array,
    *,
    platform: str,
    initial_state: jax.Array | None = None,
    segment_starts: jax.Array | None = None,
    reverse: bool = False,
    **kernel_options,
) -> tuple[jax.Array, jax.Array]:
    """h_t = a_t ⊙ h_{t-1} + x_t as seqjax.ops.scan.linear_recurrence, with the kernel of
    ``platform`` ("tpu" or "gpu").

    Args:
      a, x, initial_state, segment_starts, reverse: as in linear_recurrence.
      kernel_options: the block sizes and ``interpret`` of ``tpu.kernel`` or ``gpu.kernel``.
    """
    kernel = BACKENDS[platform].kernel(**kernel_options)
    return recurrence.scan(kernel, a, x, initial_state, segment_starts, reverse)
