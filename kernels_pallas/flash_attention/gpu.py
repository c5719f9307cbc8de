"""softmax_attention on GPU (Triton): FlashAttention-2 with one program per block.

The forward and dq kernels run one program per (sequence, query head, query block) and
loop over the key blocks of the key/value head h // (H / G); the dk/dv kernel one program
per (sequence, query head, key block), looping over the query blocks (the heads of a group
are summed outside). Default positions with a causal mask narrow the loops to the block
pairs that can hold an allowed key. Triton needs power-of-two tiles of at least 16, so
blocks are powers of two and K and V are zero-padded to one.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.flash_attention import block, vjp

DEFAULT_QUERY_BLOCK = 64
DEFAULT_KEY_BLOCK = 64


def kernels(
    *,
    query_block: int = DEFAULT_QUERY_BLOCK,
    key_block: int = DEFAULT_KEY_BLOCK,
    num_warps: int = 4,
    num_stages: int = 2,
    interpret: bool = False,
) -> vjp.Kernels:
    """The GPU kernels.

    Args:
      query_block, key_block: rows per query and key block, powers of two >= 16.
      num_warps, num_stages: Triton warps per program and software-pipelining stages.
      interpret: run the kernels in the Pallas interpreter (on any platform).
    """
    for name, size in (("query_block", query_block), ("key_block", key_block)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"flash_attention: {name} must be a power of two >= 16, not {size}")

    def block_sizes(query_length, key_length):
        return (
            min(query_block, max(16, pl.next_power_of_2(query_length))),
            min(key_block, max(16, pl.next_power_of_2(key_length))),
        )

    options = dict(
        params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
        interpret=interpret,
    )
    return vjp.Kernels(
        forward=functools.partial(_forward, **options),
        query_gradients=functools.partial(_query_gradients, **options),
        key_gradients=functools.partial(_key_gradients, **options),
        block_sizes=block_sizes,
        padded_size=lambda size: max(16, pl.next_power_of_2(size)),
    )


def _blocks(size, width, head=lambda h: h):
    """Blocks [size, width] of [B, H, T, X], the grid's third axis picking the T block."""
    return pl.BlockSpec((None, None, size, width), lambda b, h, n: (b, head(h), n, 0))


def _whole(x, head=lambda h: h):
    """All of T of [B, H, T, X], for the head of the grid's second axis."""
    return pl.BlockSpec((None, None, *x.shape[2:]), lambda b, h, n: (b, head(h), 0, 0))


def _line_specs(lines: block.Lines, size, rows: bool):
    """Rows ([B, T, 1], [B, H, T, 1]) or columns ([B, 1, T], [B, H, 1, T]) in blocks of
    ``size`` along the grid's third axis, or whole (size None)."""

    def spec(x):
        length = x.shape[-2] if rows else x.shape[-1]
        shape = (size or length, 1) if rows else (1, size or length)

        def position(n):  # the block of (T, 1) or (1, T) at grid step n
            n = n if size else 0
            return (n, 0) if rows else (0, n)

        if x.ndim == 3:
            return pl.BlockSpec((None, *shape), lambda b, h, n: (b, *position(n)))
        return pl.BlockSpec((None, None, *shape), lambda b, h, n: (b, h, *position(n)))

    return jax.tree.map(spec, lines)


def _group_of(settings):
    return lambda h: jax.lax.div(h, settings.heads_per_group)


def _call(kernel, grid, inputs, in_specs, out_shape, out_specs, name, params, interpret):
    return vjp.pallas_call_tree(
        kernel, inputs, in_specs, out_shape, out_specs, grid=grid, compiler_params=params,
        interpret=interpret, name=name,
    )  # fmt: skip


def _forward(settings, q, k, v, rows, columns, *, params, interpret):
    batch, heads, query_length, key_size = q.shape
    value_size = v.shape[3]
    query_block, key_block = settings.query_block, settings.key_block
    num_key_blocks = k.shape[2] // key_block

    def kernel(inputs, outputs, scratch):
        q_ref, k_ref, v_ref, row_refs, column_refs = inputs
        o_ref, logsumexp_ref = outputs
        q, query_rows = q_ref[...], block.read_lines(row_refs, ...)

        def visit(key_block_index, carry):
            keys = pl.ds(key_block_index * key_block, key_block)
            return block.forward_step(
                settings, carry, q, k_ref[keys, :], v_ref[keys, :], query_rows,
                block.read_lines(column_refs, (slice(None), keys)),
            )  # fmt: skip

        first, end = block.key_block_range(settings, pl.program_id(2), num_key_blocks)
        carry = jax.lax.fori_loop(first, end, visit, block.initial_carry(query_block, value_size))
        output, logsumexp = block.finish(carry)
        o_ref[...] = output.astype(o_ref.dtype)
        logsumexp_ref[...] = logsumexp

    group = _group_of(settings)
    in_specs = (
        _blocks(query_block, key_size),
        _whole(k, group),
        _whole(v, group),
        _line_specs(rows, query_block, rows=True),
        _line_specs(columns, None, rows=False),
    )
    return _call(
        kernel,
        (batch, heads, query_length // query_block),
        (q, k, v, rows, columns),
        in_specs,
        (
            jax.ShapeDtypeStruct((batch, heads, query_length, value_size), jnp.float32),
            jax.ShapeDtypeStruct((batch, heads, query_length, 1), jnp.float32),
        ),
        (_blocks(query_block, value_size), _blocks(query_block, 1)),
        "flash_attention_forward",
        params,
        interpret,
    )


def _query_gradients(settings, q, k, v, do, logsumexp, row_dot, rows, columns, *, params,
                     interpret):  # fmt: skip
    """dq [B, H, Tq, K] and the forget gradient of the query rows [B, H, Tq, 1] (None without
    a gate), in float32, one program per query block."""
    has_forget = rows.forget is not None
    batch, heads, query_length, key_size = q.shape
    value_size = v.shape[3]
    query_block, key_block = settings.query_block, settings.key_block
    num_key_blocks = k.shape[2] // key_block

    def kernel(inputs, outputs, scratch):
        q_ref, k_ref, v_ref, do_ref, logsumexp_ref, row_dot_ref, row_refs, column_refs = inputs
        q, do, query_rows = q_ref[...], do_ref[...], block.read_lines(row_refs, ...)
        logsumexp, row_dot = logsumexp_ref[...], row_dot_ref[...]

        def visit(key_block_index, grads):
            dq, forget_grad = grads
            keys = pl.ds(key_block_index * key_block, key_block)
            k = k_ref[keys, :]
            _, score_grads = block.score_gradients(
                settings, q, k, v_ref[keys, :], do, logsumexp, row_dot, query_rows,
                block.read_lines(column_refs, (slice(None), keys)),
            )  # fmt: skip
            dq += block.dot(score_grads.astype(k.dtype), k)
            if has_forget:
                forget_grad += jnp.sum(score_grads, axis=1, keepdims=True)
            return dq, forget_grad

        first, end = block.key_block_range(settings, pl.program_id(2), num_key_blocks)
        initial = (
            jnp.zeros((query_block, key_size), jnp.float32),
            jnp.zeros((query_block, 1), jnp.float32),
        )
        dq, forget_grad = jax.lax.fori_loop(first, end, visit, initial)
        dq_ref, forget_grad_ref = outputs
        dq_ref[...] = settings.scale * dq
        if has_forget:
            forget_grad_ref[...] = forget_grad

    group = _group_of(settings)
    in_specs = (
        _blocks(query_block, key_size),
        _whole(k, group),
        _whole(v, group),
        _blocks(query_block, value_size),
        _blocks(query_block, 1),
        _blocks(query_block, 1),
        _line_specs(rows, query_block, rows=True),
        _line_specs(columns, None, rows=False),
    )
    return _call(
        kernel,
        (batch, heads, query_length // query_block),
        (q, k, v, do, logsumexp, row_dot, rows, columns),
        in_specs,
        (
            jax.ShapeDtypeStruct(q.shape, jnp.float32),
            jax.ShapeDtypeStruct(rows.forget.shape, jnp.float32) if has_forget else None,
        ),
        (_blocks(query_block, key_size), _blocks(query_block, 1) if has_forget else None),
        "flash_attention_query_gradients",
        params,
        interpret,
    )


def _key_gradients(settings, q, k, v, do, logsumexp, row_dot, rows, columns, *, params,
                   interpret):  # fmt: skip
    """dk, dv [B, H, Tk, ·] per query head and the forget gradient of the keys [B, H, 1, Tk]
    (None without a gate), in float32, one program per key block."""
    batch, heads, query_length, key_size = q.shape
    key_length, value_size = k.shape[2], v.shape[3]
    query_block, key_block = settings.query_block, settings.key_block
    num_query_blocks = query_length // query_block
    has_forget = columns.forget is not None

    def kernel(inputs, outputs, scratch):
        q_ref, k_ref, v_ref, do_ref, logsumexp_ref, row_dot_ref, row_refs, column_refs = inputs
        dk_ref, dv_ref, forget_grad_ref = outputs
        k, v, key_columns = k_ref[...], v_ref[...], block.read_lines(column_refs, ...)

        def visit(query_block_index, grads):
            dk, dv, forget_grad = grads
            queries = pl.ds(query_block_index * query_block, query_block)
            q, do = q_ref[queries, :], do_ref[queries, :]
            probabilities, score_grads = block.score_gradients(
                settings, q, k, v, do, logsumexp_ref[queries, :], row_dot_ref[queries, :],
                block.read_lines(row_refs, (queries, slice(None))), key_columns,
            )  # fmt: skip
            dv += block.dot_tn(probabilities.astype(do.dtype), do)
            dk += block.dot_tn(score_grads.astype(q.dtype), q)
            if has_forget:
                forget_grad -= jnp.sum(score_grads, axis=0, keepdims=True)
            return dk, dv, forget_grad

        first, end = block.query_block_range(settings, pl.program_id(2), num_query_blocks)
        initial = (
            jnp.zeros((key_block, key_size), jnp.float32),
            jnp.zeros((key_block, value_size), jnp.float32),
            jnp.zeros((1, key_block), jnp.float32),
        )
        dk, dv, forget_grad = jax.lax.fori_loop(first, end, visit, initial)
        dk_ref[...] = settings.scale * dk
        dv_ref[...] = dv
        if has_forget:
            forget_grad_ref[...] = forget_grad

    group = _group_of(settings)
    in_specs = (
        _whole(q),
        _blocks(key_block, key_size, group),
        _blocks(key_block, value_size, group),
        _whole(do),
        _whole(logsumexp),
        _whole(row_dot),
        _line_specs(rows, None, rows=True),
        _line_specs(columns, key_block, rows=False),
    )
    out_shape = (
        jax.ShapeDtypeStruct((batch, heads, key_length, key_size), jnp.float32),
        jax.ShapeDtypeStruct((batch, heads, key_length, value_size), jnp.float32),
        jax.ShapeDtypeStruct((batch, heads, 1, key_length), jnp.float32) if has_forget else None,
    )
    out_specs = (
        _blocks(key_block, key_size),
        _blocks(key_block, value_size),
        _line_specs(block.Lines(columns.forget), key_block, rows=False).position,
    )
    return _call(
        kernel,
        (batch, heads, key_length // key_block),
        (q, k, v, do, logsumexp, row_dot, rows, columns),
        in_specs,
        out_shape,
        out_specs,
        "flash_attention_key_gradients",
        params,
        interpret,
    )
