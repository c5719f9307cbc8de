"""The chunk loop shared by the chunked matrix-state ops (gated linear attention, delta rule).

The sequence is cut into chunks of C steps; a scan carries the state from chunk to chunk and
each chunk's body is rematerialized in the backward pass, so autodiff keeps only the states
entering the chunks ([T/C, B, H, K, V]) and never a [T, T] or [T, K, V] buffer.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from seqjax.typing import Array, PyTree


def scan_over_chunks(
    chunk_fn: Callable[..., tuple[Array, PyTree]],
    initial_state: PyTree,
    arrays: Sequence[Array],
    *,
    chunk_size: int,
) -> tuple[Array, PyTree]:
    """Runs ``chunk_fn(state, *chunk_arrays) -> (chunk_output, state)`` over chunks.

    ``arrays`` are [B, T, ...]; each is zero-padded (False for booleans) to a multiple of
    ``chunk_size``, so padded steps must leave the state unchanged for zero inputs (zero
    keys and values, log decay 0, beta 0). Returns the outputs [B, T, ...] and final state.
    """
    batch, length = arrays[0].shape[:2]
    chunk_size = min(chunk_size, length)
    padding = -length % chunk_size
    num_chunks = (length + padding) // chunk_size

    def chunks(t):  # [B, T, ...] -> [N, B, C, ...]
        t = jnp.pad(t, [(0, 0), (0, padding)] + [(0, 0)] * (t.ndim - 2))
        return jnp.swapaxes(t.reshape(batch, num_chunks, chunk_size, *t.shape[2:]), 0, 1)

    @jax.checkpoint
    def step(state, chunk_arrays):
        output, state = chunk_fn(state, *chunk_arrays)
        return state, output

    final_state, outputs = jax.lax.scan(step, initial_state, [chunks(t) for t in arrays])
    outputs = jnp.swapaxes(outputs, 0, 1)
    outputs = outputs.reshape(batch, num_chunks * chunk_size, *outputs.shape[3:])
    return outputs[:, :length], final_state


def cumulative_sum(x: Array) -> Array:
    """Σ_{s <= i} x_s along axis 1 (a chunk's steps), as a matmul with a lower-triangular
    matrix of ones: XLA on CPU lowers ``jnp.cumsum`` to a reduce-window, which took about a
    tenth of all op time in a profile of chunked gated linear attention's forward+backward."""
    size = x.shape[1]
    lower = jnp.tril(jnp.ones((size, size), x.dtype))
    return jnp.einsum("ij,bj...->bi...", lower, x, precision=jax.lax.Precision.HIGHEST)


def check_implementation(
    op: str,
    implementation: str | None,
    names: Sequence[str],
    pallas_unavailable: str | None = "is not available yet",
) -> str:
    """The implementation to run. None picks 'pallas' where its kernels can run
    (``pallas_unavailable`` is None) and else ``names[1]``, the chunked form; a name must be
    known, and 'pallas' by name raises with ``pallas_unavailable`` when it cannot run."""
    if implementation is None:
        return "pallas" if pallas_unavailable is None else names[1]
    if implementation not in names:
        raise ValueError(f"unknown implementation {implementation!r}; expected one of {names}")
    if implementation == "pallas" and pallas_unavailable is not None:
        raise ValueError(
            f"{op}: implementation='pallas' {pallas_unavailable}; use "
            + " or ".join(repr(n) for n in names if n != "pallas")
        )
    return implementation
