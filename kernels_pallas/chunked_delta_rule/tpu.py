"""delta_rule on TPU: chunked kernels with the state in VMEM.

Both kernels run over the grid (B, H, chunks) with the chunk axis sequential and the
[K, V] float32 state (forward) or its gradient (backward, chunks last to first) in a VMEM
scratch buffer; inside a chunk, the UT transform is matmuls on the MXU (see chunk.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.chunked_delta_rule import chunk as chunk_math
from kernels_pallas.chunked_delta_rule import vjp

DEFAULT_CHUNK_SIZE = 64


def kernels(*, interpret: bool = False) -> vjp.Kernels:
    """The TPU kernels; ``interpret`` runs them in the Pallas interpreter (on any platform)."""
    return vjp.Kernels(
        forward=functools.partial(_forward, interpret=interpret),
        backward=functools.partial(_backward, interpret=interpret),
        padded_size=lambda size: size,
    )


def _chunk_specs(chunk, arrays, reverse_chunks=None):
    """Chunk blocks of [B, H, T, X] rows and [B, H, N, 1, C] columns."""

    def chunk_index(n):
        return n if reverse_chunks is None else reverse_chunks - 1 - n

    def spec(x):
        if x.ndim == 5:
            shape = (None, None, None, 1, chunk)
            return pl.BlockSpec(shape, lambda b, h, n: (b, h, chunk_index(n), 0, 0))
        shape = (None, None, chunk, x.shape[3])
        return pl.BlockSpec(shape, lambda b, h, n: (b, h, chunk_index(n), 0))

    return [spec(x) for x in arrays]


def _state_spec(key_size, value_size):
    return pl.BlockSpec((None, None, key_size, value_size), lambda b, h, n: (b, h, 0, 0))


def _per_chunk_state_spec(key_size, value_size, reverse_chunks=None):
    def index(b, h, n):
        return (b, h, n if reverse_chunks is None else reverse_chunks - 1 - n, 0, 0)

    return pl.BlockSpec((None, None, None, key_size, value_size), index)


def _sequential():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def _forward(q, k, v, beta, b_rows, b_columns, initial, *, chunk, scale, interpret):
    batch, heads, length, key_size = q.shape
    value_size = v.shape[-1]
    num_chunks = length // chunk
    inputs = (q, k, v, beta, b_rows, b_columns)

    def kernel(*refs):
        input_refs, (initial_ref, o_ref, final_ref, entering_ref, state) = refs[:6], refs[6:]

        @pl.when(pl.program_id(2) == 0)
        def _():
            state[...] = initial_ref[...]

        entering_ref[...] = state[...]
        output, state[...] = chunk_math.forward(
            *(ref[...] for ref in input_refs), state[...], scale=scale
        )
        o_ref[...] = output

        @pl.when(pl.program_id(2) == num_chunks - 1)
        def _():
            final_ref[...] = state[...]

    state_spec = _state_spec(key_size, value_size)
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, num_chunks),
        in_specs=[*_chunk_specs(chunk, inputs), state_spec],
        out_specs=[
            _chunk_specs(chunk, [v])[0],
            state_spec,
            _per_chunk_state_spec(key_size, value_size),
        ],
        out_shape=[
            jax.ShapeDtypeStruct(v.shape, jnp.float32),
            jax.ShapeDtypeStruct(initial.shape, jnp.float32),
            jax.ShapeDtypeStruct((batch, heads, num_chunks, key_size, value_size), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((key_size, value_size), jnp.float32)],
        compiler_params=_sequential(),
        interpret=interpret,
        name="chunked_delta_rule_forward",
    )(*inputs, initial)


def _backward(q, k, v, beta, b_rows, b_columns, entering, do, final_grad, *, chunk, scale,
              interpret):  # fmt: skip
    """Runs the chunks last to first, carrying the gradient of the state entering each."""
    batch, heads, length, key_size = q.shape
    value_size = v.shape[-1]
    num_chunks = length // chunk
    inputs = (q, k, v, beta, b_rows, b_columns)

    def kernel(*refs):
        input_refs, (entering_ref, do_ref, final_ref), outputs = refs[:6], refs[6:9], refs[9:]
        grad_refs, (initial_grad_ref, state_grad) = outputs[:6], outputs[6:]

        @pl.when(pl.program_id(2) == 0)
        def _():
            state_grad[...] = final_ref[...]

        input_grads, state_grad[...] = chunk_math.backward(
            [ref[...] for ref in input_refs], entering_ref[...], do_ref[...], state_grad[...],
            scale=scale,
        )  # fmt: skip
        for ref, grad in zip(grad_refs, input_grads, strict=True):
            ref[...] = grad

        @pl.when(pl.program_id(2) == num_chunks - 1)
        def _():
            initial_grad_ref[...] = state_grad[...]

    chunk_specs = _chunk_specs(chunk, inputs, reverse_chunks=num_chunks)
    state_spec = _state_spec(key_size, value_size)
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, num_chunks),
        in_specs=[
            *chunk_specs,
            _per_chunk_state_spec(key_size, value_size, reverse_chunks=num_chunks),
            _chunk_specs(chunk, [do], reverse_chunks=num_chunks)[0],
            state_spec,
        ],
        out_specs=[*chunk_specs, state_spec],
        out_shape=[
            *(jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in inputs),
            jax.ShapeDtypeStruct(final_grad.shape, jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((key_size, value_size), jnp.float32)],
        compiler_params=_sequential(),
        interpret=interpret,
        name="chunked_delta_rule_backward",
    )(*inputs, entering, do, final_grad)
