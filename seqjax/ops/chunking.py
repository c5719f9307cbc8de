"""The chunk loop shared by the chunked ops (GLA, the delta rule, mLSTM, the selective scan).

The sequence is cut into chunks of C steps; a loop carries the state from chunk to chunk,
reading each chunk in place from the [B, T, ...] inputs and writing its outputs in place. The
backward pass runs the loop in reverse and recomputes each chunk's forward from the state that
entered it, so only those states ([T/C, B, H, K, V]) are kept and never a [T, T] or [T, K, V]
buffer, and no input, output or gradient is transposed into a chunk-major layout.

The chunks see no non-finite input (seqjax.ops.finite): a chunk mixes its positions in
matmuls, where the zeros of a causal mask would carry a later NaN into every earlier output.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from seqjax.ops import finite
from seqjax.typing import Array, PyTree


def scan_over_chunks(
    chunk_fn: Callable[..., tuple[Array, PyTree]],
    initial_state: PyTree,
    arrays: Sequence[Array],
    *,
    chunk_size: int,
    shared: Sequence[Array] = (),
) -> tuple[Array, PyTree]:
    """Runs ``chunk_fn(state, *chunk_arrays, *shared) -> (chunk_output, state)`` over chunks.

    ``arrays`` are [B, T, ...]; each is zero-padded (False for booleans) to a multiple of
    ``chunk_size``, so padded steps must leave the state unchanged for zero inputs (zero
    keys and values, log decay 0, beta 0). Non-finite entries of the floating-point arrays
    are replaced by 0, and the outputs from each row's first non-finite position on and that
    row's final state are NaN (the rule of ``finite.nan_from_first``). Gradients flow to the
    floating-point (or complex) arrays, the initial state and the ``shared`` arrays (the
    same whole arrays in every chunk, e.g. a layer's parameters; their gradients are summed
    over the chunks). Returns the outputs [B, T, ...] and final state.
    """
    length = arrays[0].shape[1]
    chunk_size = min(chunk_size, length)
    padding = -length % chunk_size
    floating = [t for t in arrays if jnp.issubdtype(t.dtype, jnp.inexact)]
    # Replaced and set chunk by chunk, so no copy of the inputs or the outputs is made.
    after = finite.since_first(finite.nonfinite_positions(*floating))
    arrays = [jnp.pad(t, [(0, 0), (0, padding)] + [(0, 0)] * (t.ndim - 2)) for t in arrays]
    arrays.append(jnp.pad(after, [(0, 0), (0, padding)]))
    differentiable = tuple(jnp.issubdtype(t.dtype, jnp.inexact) for t in arrays)
    inputs = [t for t, d in zip(arrays, differentiable, strict=True) if d]
    fixed = [t for t, d in zip(arrays, differentiable, strict=True) if not d]
    outputs, final_state = _chunk_loop(
        functools.partial(_finite_chunk, chunk_fn, len(shared)), chunk_size, differentiable,
        initial_state, inputs, fixed, tuple(shared),
    )  # fmt: skip
    final_state = jax.tree.map(lambda s: finite.nan_where(after[:, -1], s), final_state)
    return outputs[:, :length], final_state


def _finite_chunk(chunk_fn, num_shared, state, *arrays):
    """``chunk_fn`` on a chunk with its non-finite entries replaced by 0; its outputs are NaN
    where the last chunk array (bool [B, C]) holds. ``arrays`` end with ``num_shared``
    shared arrays."""
    shared = arrays[len(arrays) - num_shared :]
    *arrays, after = arrays[: len(arrays) - num_shared]
    arrays = [finite.finite_part(t) if jnp.issubdtype(t.dtype, jnp.inexact) else t for t in arrays]
    output, state = chunk_fn(state, *arrays, *shared)
    return finite.nan_where(after, output), state


def _merge(differentiable, inputs, fixed):
    inputs, fixed = iter(inputs), iter(fixed)
    return [next(inputs) if d else next(fixed) for d in differentiable]


def _chunk_of(t: Array, index, chunk_size: int) -> Array:
    return jax.lax.dynamic_slice_in_dim(t, index * chunk_size, chunk_size, axis=1)


def _run_chunks(chunk_fn, chunk_size, differentiable, initial_state, inputs, fixed, shared):
    """The forward loop: outputs [B, T, ...], the final state and the state entering each
    chunk (stacked on a leading axis)."""
    arrays = _merge(differentiable, inputs, fixed)
    num_chunks = arrays[0].shape[1] // chunk_size
    first = [_chunk_of(t, 0, chunk_size) for t in arrays]
    out_shape = jax.eval_shape(chunk_fn, initial_state, *first, *shared)[0]
    outputs = jnp.zeros(
        (out_shape.shape[0], num_chunks * chunk_size, *out_shape.shape[2:]), out_shape.dtype
    )
    entering = jax.tree.map(lambda s: jnp.zeros((num_chunks, *s.shape), s.dtype), initial_state)

    def body(index, carry):
        state, outputs, entering = carry
        entering = jax.tree.map(lambda e, s: e.at[index].set(s), entering, state)
        chunk = [_chunk_of(t, index, chunk_size) for t in arrays]
        output, state = chunk_fn(state, *chunk, *shared)
        outputs = jax.lax.dynamic_update_slice_in_dim(outputs, output, index * chunk_size, 1)
        return state, outputs, entering

    state, outputs, entering = jax.lax.fori_loop(
        0, num_chunks, body, (initial_state, outputs, entering)
    )
    return outputs, state, entering


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _chunk_loop(chunk_fn, chunk_size, differentiable, initial_state, inputs, fixed, shared):
    outputs, state, _ = _run_chunks(
        chunk_fn, chunk_size, differentiable, initial_state, inputs, fixed, shared
    )
    return outputs, state


def _chunk_loop_forward(chunk_fn, chunk_size, differentiable, initial_state, inputs, fixed, shared):
    outputs, state, entering = _run_chunks(
        chunk_fn, chunk_size, differentiable, initial_state, inputs, fixed, shared
    )
    return (outputs, state), (inputs, fixed, shared, entering)


def _chunk_loop_backward(chunk_fn, chunk_size, differentiable, residuals, cotangents):
    """The chunks in reverse: each chunk's forward is recomputed from the state that entered
    it, its pullback maps (output, state) cotangents to those of its inputs and of that
    state, and the input gradients are written in place."""
    inputs, fixed, shared, entering = residuals
    output_cotangent, state_cotangent = cotangents
    num_chunks = inputs[0].shape[1] // chunk_size

    def body(step, carry):
        state_cotangent, gradients, shared_gradients = carry
        index = num_chunks - 1 - step
        state = jax.tree.map(lambda e: e[index], entering)
        fixed_chunk = [_chunk_of(t, index, chunk_size) for t in fixed]

        def chunk(state, input_chunk, shared):
            return chunk_fn(state, *_merge(differentiable, input_chunk, fixed_chunk), *shared)

        input_chunk = [_chunk_of(t, index, chunk_size) for t in inputs]
        _, pullback = jax.vjp(chunk, state, input_chunk, shared)
        state_cotangent, input_cotangents, shared_cotangents = pullback(
            (_chunk_of(output_cotangent, index, chunk_size), state_cotangent)
        )
        gradients = [
            jax.lax.dynamic_update_slice_in_dim(g, c.astype(g.dtype), index * chunk_size, 1)
            for g, c in zip(gradients, input_cotangents, strict=True)
        ]
        shared_gradients = jax.tree.map(jnp.add, shared_gradients, shared_cotangents)
        return state_cotangent, gradients, shared_gradients

    state_cotangent, gradients, shared_gradients = jax.lax.fori_loop(
        0,
        num_chunks,
        body,
        (
            state_cotangent,
            [jnp.zeros_like(t) for t in inputs],
            jax.tree.map(jnp.zeros_like, shared),
        ),
    )
    return state_cotangent, gradients, [None] * len(fixed), shared_gradients


_chunk_loop.defvjp(_chunk_loop_forward, _chunk_loop_backward)


def cumulative_sum(x: Array, segment: Array | None = None) -> Array:
    """Σ_{s <= i} x_s along axis 1 (a chunk's steps), as a matmul with a lower-triangular
    matrix of ones: XLA on CPU lowers ``jnp.cumsum`` to a reduce-window, which took about a
    tenth of all op time in a profile of chunked gated linear attention's forward+backward.
    Its zeros multiply later steps, so x must be finite (as it is in ``scan_over_chunks``).

    With ``segment`` [B, C] (each step's segment index) the sum restarts at every segment,
    Σ_{s <= i, segment_s = segment_i} x_s, so it reads nothing of another segment. A sum
    over the whole chunk would give the same differences b_i - b_j of two steps of one
    segment only up to rounding, by cancelling the earlier segments' terms: their strong
    decays would cost a later segment its precision, and their gradients would not be zero.
    """
    size = x.shape[1]
    lower = jnp.tril(jnp.ones((size, size), bool))
    if segment is None:
        return jnp.einsum(
            "ij,bj...->bi...", lower.astype(x.dtype), x, precision=jax.lax.Precision.HIGHEST
        )
    lower = lower & (segment[:, :, None] == segment[:, None, :])  # [B, Ci, Cj]
    return jnp.einsum(
        "bij,bj...->bi...", lower.astype(x.dtype), x, precision=jax.lax.Precision.HIGHEST
    )
