"""Pallas kernels for seqjax.ops.delta_rule.delta_rule:
S_t = exp(log_decay_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = scale · S_tᵀ q_t.

``chunked_delta_rule`` takes the op's arguments and returns ``(o, final_state)`` with the
kernels of a platform: ``tpu.kernels`` (Mosaic) or ``gpu.kernels`` (Triton), the UT transform
per chunk (``chunk``), with an optional scalar decay per head, β in [0, 2], initial and final
states and the chunk size as a parameter; both differentiate through one custom VJP
(``vjp``) whose backward kernel recomputes each chunk from the state saved at its start.
"""

import functools

import jax

from kernels_pallas.chunked_delta_rule import gpu, tpu, vjp
from kernels_pallas.common import chunked_unsupported

BACKENDS = {"tpu": tpu, "gpu": gpu}
# Why the kernels cannot run: unsupported_reason(platform, segment_starts=, chunk_size=).
unsupported_reason = functools.partial(chunked_unsupported, kernels="chunked_delta_rule")


def chunked_delta_rule(
    q: jax.Array, k: jax.Array, v: jax.Array, beta: jax.Array, *, platform: str,
    log_decay: jax.Array | None = None, initial_state: jax.Array | None = None,
    scale: float | None = None, chunk_size: int | None = None, **kernel_options,
) -> tuple[jax.Array, jax.Array]:  # fmt: skip
    """S_t = exp(log_decay_t)(I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = scale S_tᵀ q_t with
    the kernels of ``platform`` ("tpu" or "gpu"); arguments and results as in
    seqjax.ops.delta_rule.delta_rule (which takes segment_starts, these kernels do not).

    Args:
      chunk_size: C, a power of two >= 16 (None: the platform's DEFAULT_CHUNK_SIZE).
      kernel_options: the options and ``interpret`` of ``tpu.kernels`` or ``gpu.kernels``.
    """
    backend = BACKENDS[platform]
    chunk_size = backend.DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    kernels = backend.kernels(**kernel_options)
    return vjp.delta_rule(kernels, q, k, v, beta, log_decay, initial_state, scale, chunk_size)
