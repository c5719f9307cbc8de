"""gated_linear_attention on TPU: chunked kernels with the state in VMEM.

Forward and state-gradient kernels run over the grid (B, H, chunks) with the chunk axis
sequential and the [V, K] float32 state in a VMEM scratch buffer; the input-gradient kernel
treats every chunk independently, from the states the forward pass saved at chunk starts.
Inside a chunk, scores and state updates are matmuls on the MXU (see chunk.py).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.chunked_gla import chunk as chunk_math
from kernels_pallas.chunked_gla import vjp

DEFAULT_CHUNK_SIZE = 64
DEFAULT_SUB_CHUNK = 16


def kernels(*, sub_chunk: int = DEFAULT_SUB_CHUNK, interpret: bool = False) -> vjp.Kernels:
    """The TPU kernels.

    Args:
      sub_chunk: rows per sub-chunk of the stable per-key scores; divides the chunk size.
      interpret: run the kernels in the Pallas interpreter (on any platform).
    """
    options = dict(sub=sub_chunk, interpret=interpret)
    return vjp.Kernels(
        forward=functools.partial(_forward, **options),
        state_gradients=functools.partial(_state_gradients, interpret=interpret),
        input_gradients=functools.partial(
            vjp.input_gradients, params=_sequential("parallel", "parallel", "parallel"), **options
        ),
        padded_size=lambda size: size,
        sub_chunk=sub_chunk,
    )


def _sequential(*semantics):
    return pltpu.CompilerParams(dimension_semantics=semantics)


def _chunk_spec(chunk, size, reverse_chunks=None):
    def index(b, h, n):
        return (b, h, n if reverse_chunks is None else reverse_chunks - 1 - n, 0)

    return pl.BlockSpec((None, None, chunk, size), index)


def _state_spec(value_size, key_size):
    return pl.BlockSpec((None, None, value_size, key_size), lambda b, h, n: (b, h, 0, 0))


def _per_chunk_state_spec(value_size, key_size, reverse_chunks=None):
    def index(b, h, n):
        return (b, h, n if reverse_chunks is None else reverse_chunks - 1 - n, 0, 0)

    return pl.BlockSpec((None, None, None, value_size, key_size), index)


def _forward(q, k, v, b, initial, *, chunk, sub, interpret):
    batch, heads, length, key_size = q.shape
    value_size = v.shape[-1]
    num_chunks = length // chunk

    def kernel(q_ref, k_ref, v_ref, b_ref, initial_ref, o_ref, final_ref, entering_ref, state):
        @pl.when(pl.program_id(2) == 0)
        def _():
            state[...] = initial_ref[...]

        entering_ref[...] = state[...]
        state[...] = chunk_math.forward(
            q_ref, k_ref, v_ref, b_ref, o_ref, 0, state[...], chunk=chunk, sub=sub
        )

        @pl.when(pl.program_id(2) == num_chunks - 1)
        def _():
            final_ref[...] = state[...]

    key_spec, value_spec = _chunk_spec(chunk, key_size), _chunk_spec(chunk, value_size)
    state_spec = _state_spec(value_size, key_size)
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, num_chunks),
        in_specs=[key_spec, key_spec, value_spec, key_spec, state_spec],
        out_specs=[value_spec, state_spec, _per_chunk_state_spec(value_size, key_size)],
        out_shape=[
            jax.ShapeDtypeStruct(v.shape, v.dtype),
            jax.ShapeDtypeStruct(initial.shape, jnp.float32),
            jax.ShapeDtypeStruct((batch, heads, num_chunks, value_size, key_size), jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((value_size, key_size), jnp.float32)],
        compiler_params=_sequential("parallel", "parallel", "arbitrary"),
        interpret=interpret,
        name="chunked_gla_forward",
    )(q, k, v, b, initial)


def _state_gradients(q, b, do, final_grad, *, chunk, interpret):
    """Runs the chunks last to first; writes each chunk's leaving-state gradient."""
    batch, heads, length, key_size = q.shape
    value_size = do.shape[-1]
    num_chunks = length // chunk

    def kernel(q_ref, b_ref, do_ref, final_ref, leaving_ref, initial_ref, state_grad):
        @pl.when(pl.program_id(2) == 0)
        def _():
            state_grad[...] = final_ref[...]

        leaving_ref[...] = state_grad[...]
        state_grad[...] = chunk_math.state_gradient(
            q_ref, do_ref, b_ref, 0, state_grad[...], chunk=chunk
        )

        @pl.when(pl.program_id(2) == num_chunks - 1)
        def _():
            initial_ref[...] = state_grad[...]

    key_spec = _chunk_spec(chunk, key_size, reverse_chunks=num_chunks)
    value_spec = _chunk_spec(chunk, value_size, reverse_chunks=num_chunks)
    state_spec = _state_spec(value_size, key_size)
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, num_chunks),
        in_specs=[key_spec, key_spec, value_spec, state_spec],
        out_specs=[
            _per_chunk_state_spec(value_size, key_size, reverse_chunks=num_chunks),
            state_spec,
        ],
        out_shape=[
            jax.ShapeDtypeStruct((batch, heads, num_chunks, value_size, key_size), jnp.float32),
            jax.ShapeDtypeStruct(final_grad.shape, jnp.float32),
        ],
        scratch_shapes=[pltpu.VMEM((value_size, key_size), jnp.float32)],
        compiler_params=_sequential("parallel", "parallel", "arbitrary"),
        interpret=interpret,
        name="chunked_gla_state_gradients",
    )(q, b, do, final_grad)
