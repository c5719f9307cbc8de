"""gated_linear_attention on GPU (Triton): chunked kernels with the state in registers.

The forward and state-gradient kernels run one program per (sequence, head, block of
values), walking the chunks in a loop with the [V-block, K] float32 state in registers (a
value block's state columns are independent of the others'); the input-gradient kernel runs
one program per chunk, from the states the forward pass saved at chunk starts. Inside a
chunk, scores and state updates are tensor-core matmuls (see chunk.py). Triton needs
power-of-two tiles of at least 16, so K and V are zero-padded to one.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.chunked_gla import chunk as chunk_math
from kernels_pallas.chunked_gla import vjp

DEFAULT_CHUNK_SIZE = 64
DEFAULT_SUB_CHUNK = 16
DEFAULT_VALUE_BLOCK = 64


def kernels(
    *,
    sub_chunk: int = DEFAULT_SUB_CHUNK,
    value_block: int = DEFAULT_VALUE_BLOCK,
    num_warps: int = 4,
    interpret: bool = False,
) -> vjp.Kernels:
    """The GPU kernels.

    Args:
      sub_chunk: rows per sub-chunk of the stable per-key scores; divides the chunk size,
        >= 16 on a GPU.
      value_block: value columns per program of the sequential kernels, a power of two.
      num_warps: Triton warps per program.
      interpret: run the kernels in the Pallas interpreter (on any platform).
    """
    options = dict(params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1))
    options.update(interpret=interpret)
    return vjp.Kernels(
        forward=functools.partial(_forward, sub=sub_chunk, value_block=value_block, **options),
        state_gradients=functools.partial(_state_gradients, value_block=value_block, **options),
        input_gradients=functools.partial(vjp.input_gradients, sub=sub_chunk, **options),
        padded_size=lambda size: max(16, pl.next_power_of_2(size)),
        sub_chunk=sub_chunk,
    )


def _sequence_spec(length, size):
    return pl.BlockSpec((None, None, length, size), lambda b, h, j: (b, h, 0, 0))


def _value_block_spec(length, value_block):
    return pl.BlockSpec((None, None, length, value_block), lambda b, h, j: (b, h, 0, j))


def _state_spec(value_block, key_size):
    return pl.BlockSpec((None, None, value_block, key_size), lambda b, h, j: (b, h, j, 0))


def _states_spec(num_chunks, value_block, key_size):
    return pl.BlockSpec(
        (None, None, num_chunks, value_block, key_size), lambda b, h, j: (b, h, 0, j, 0)
    )


def _forward(q, k, v, b, initial, *, chunk, sub, value_block, params, interpret):
    batch, heads, length, key_size = q.shape
    value_size = v.shape[-1]
    value_block = min(value_block, value_size)
    num_chunks = length // chunk

    def kernel(q_ref, k_ref, v_ref, b_ref, initial_ref, o_ref, final_ref, entering_ref):
        def visit(n, state):
            entering_ref[n] = state
            return chunk_math.forward(
                q_ref, k_ref, v_ref, b_ref, o_ref, n * chunk, state, chunk=chunk, sub=sub
            )

        final_ref[...] = jax.lax.fori_loop(0, num_chunks, visit, initial_ref[...])

    key_spec = _sequence_spec(length, key_size)
    value_spec = _value_block_spec(length, value_block)
    state_spec = _state_spec(value_block, key_size)
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, value_size // value_block),
        in_specs=[key_spec, key_spec, value_spec, key_spec, state_spec],
        out_specs=[value_spec, state_spec, _states_spec(num_chunks, value_block, key_size)],
        out_shape=[
            jax.ShapeDtypeStruct(v.shape, v.dtype),
            jax.ShapeDtypeStruct(initial.shape, jnp.float32),
            jax.ShapeDtypeStruct((batch, heads, num_chunks, value_size, key_size), jnp.float32),
        ],
        compiler_params=params,
        interpret=interpret,
        name="chunked_gla_forward",
    )(q, k, v, b, initial)


def _state_gradients(q, b, do, final_grad, *, chunk, value_block, params, interpret):
    batch, heads, length, key_size = q.shape
    value_size = do.shape[-1]
    value_block = min(value_block, value_size)
    num_chunks = length // chunk

    def kernel(q_ref, b_ref, do_ref, final_ref, leaving_ref, initial_ref):
        def visit(i, state_grad):
            n = num_chunks - 1 - i
            leaving_ref[n] = state_grad
            return chunk_math.state_gradient(
                q_ref, do_ref, b_ref, n * chunk, state_grad, chunk=chunk
            )

        initial_ref[...] = jax.lax.fori_loop(0, num_chunks, visit, final_ref[...])

    key_spec = _sequence_spec(length, key_size)
    state_spec = _state_spec(value_block, key_size)
    return pl.pallas_call(
        kernel,
        grid=(batch, heads, value_size // value_block),
        in_specs=[key_spec, key_spec, _value_block_spec(length, value_block), state_spec],
        out_specs=[_states_spec(num_chunks, value_block, key_size), state_spec],
        out_shape=[
            jax.ShapeDtypeStruct((batch, heads, num_chunks, value_size, key_size), jnp.float32),
            jax.ShapeDtypeStruct(final_grad.shape, jnp.float32),
        ],
        compiler_params=params,
        interpret=interpret,
        name="chunked_gla_state_gradients",
    )(q, b, do, final_grad)
