"""delta_rule on GPU (Triton): chunked kernels with the state in registers.

Both kernels run one program per (sequence, head), walking the chunks in a loop (the
backward one last to first) with the [K, V] float32 state or its gradient in registers;
inside a chunk, the UT transform is tensor-core matmuls (see chunk.py). Triton needs
power-of-two tiles of at least 16, so K and V are zero-padded to one.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.chunked_delta_rule import chunk as chunk_math
from kernels_pallas.chunked_delta_rule import vjp

DEFAULT_CHUNK_SIZE = 32


def kernels(*, num_warps: int = 4, interpret: bool = False) -> vjp.Kernels:
    """The GPU kernels.

    Args:
      num_warps: Triton warps per program.
      interpret: run the kernels in the Pallas interpreter (on any platform).
    """
    options = dict(params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1))
    options.update(interpret=interpret)
    return vjp.Kernels(
        forward=functools.partial(_forward, **options),
        backward=functools.partial(_backward, **options),
        padded_size=lambda size: max(16, pl.next_power_of_2(size)),
    )


def _whole(x):
    """All of [B, H, ...] for one (sequence, head)."""
    return pl.BlockSpec((None, None, *x.shape[2:]), lambda b, h: (b, h) + (0,) * (x.ndim - 2))


def _read_chunk(refs, n, chunk):
    """Chunk n: rows [nC, nC + C) of [T, X] refs, entry n of [N, 1, C] (columns) ones."""
    return [ref[n] if ref.ndim == 3 else ref[pl.ds(n * chunk, chunk), :] for ref in refs]


def _forward(q, k, v, beta, b_rows, b_columns, initial, *, chunk, scale, params, interpret):
    batch, heads, length, key_size = q.shape
    value_size = v.shape[-1]
    num_chunks = length // chunk
    inputs = (q, k, v, beta, b_rows, b_columns, initial)
    entering_shape = (batch, heads, num_chunks, key_size, value_size)

    def kernel(*refs):
        input_refs, initial_ref, (o_ref, final_ref, entering_ref) = refs[:6], refs[6], refs[7:]

        def visit(n, state):
            entering_ref[n] = state
            output, state = chunk_math.forward(
                *_read_chunk(input_refs, n, chunk), state, scale=scale
            )
            o_ref[pl.ds(n * chunk, chunk), :] = output
            return state

        final_ref[...] = jax.lax.fori_loop(0, num_chunks, visit, initial_ref[...])

    out_shape = [
        jax.ShapeDtypeStruct(v.shape, jnp.float32),
        jax.ShapeDtypeStruct(initial.shape, jnp.float32),
        jax.ShapeDtypeStruct(entering_shape, jnp.float32),
    ]
    return _per_head(kernel, inputs, out_shape, "chunked_delta_rule_forward", params, interpret)


def _backward(q, k, v, beta, b_rows, b_columns, entering, do, final_grad, *, chunk, scale,
              params, interpret):  # fmt: skip
    batch, heads, length, key_size = q.shape
    num_chunks = length // chunk
    inputs = (q, k, v, beta, b_rows, b_columns, entering, do, final_grad)

    def kernel(*refs):
        input_refs, (entering_ref, do_ref, final_ref) = refs[:6], refs[6:9]
        grad_refs, initial_grad_ref = refs[9:15], refs[15]

        def visit(i, state_grad):
            n = num_chunks - 1 - i
            rows = pl.ds(n * chunk, chunk)
            input_grads, state_grad = chunk_math.backward(
                _read_chunk(input_refs, n, chunk), entering_ref[n], do_ref[rows, :],
                state_grad, scale=scale,
            )  # fmt: skip
            for ref, grad in zip(grad_refs, input_grads, strict=True):
                if ref.ndim == 3:
                    ref[n] = grad
                else:
                    ref[rows, :] = grad
            return state_grad

        initial_grad_ref[...] = jax.lax.fori_loop(0, num_chunks, visit, final_ref[...])

    out_shape = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (*inputs[:6], final_grad)]
    return _per_head(kernel, inputs, out_shape, "chunked_delta_rule_backward", params, interpret)


def _per_head(kernel, inputs, out_shape, name, params, interpret):
    """One program per (sequence, head), each with all of its inputs and outputs."""
    batch, heads = inputs[0].shape[:2]
    return pl.pallas_call(
        kernel,
        grid=(batch, heads),
        in_specs=[_whole(x) for x in inputs],
        out_specs=[_whole(x) for x in out_shape],
        out_shape=out_shape,
        compiler_params=params,
        interpret=interpret,
        name=name,
    )(*inputs)
