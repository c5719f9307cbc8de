"""softmax_attention on TPU (Mosaic): FlashAttention-2 over a grid of block pairs.

Forward and dq kernels run over the grid (B, H, query blocks, key blocks) with the key axis
sequential, the online-softmax state (or dq) in VMEM; the dk/dv kernel over
(B, H, key blocks, query blocks) with the query axis sequential, per query head (the heads of
a group are summed outside). A block pair that cannot hold an allowed key (default positions:
causal and window) is skipped, and its index map repeats the last visited block so no DMA is
issued for it. Query head h reads key/value head h // (H / G) in the index maps.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.common import round_up
from kernels_pallas.flash_attention import block, vjp

DEFAULT_QUERY_BLOCK = 128
DEFAULT_KEY_BLOCK = 128


def kernels(
    *,
    query_block: int = DEFAULT_QUERY_BLOCK,
    key_block: int = DEFAULT_KEY_BLOCK,
    interpret: bool = False,
) -> vjp.Kernels:
    """The TPU kernels.

    Args:
      query_block: query rows per block, a multiple of 16.
      key_block: keys per block, a multiple of 128 (the lane width of the key-side mask rows).
      interpret: run the kernels in the Pallas interpreter (on any platform).
    """

    def block_sizes(query_length, key_length):
        # A block shorter than the default spans the whole (padded) axis, which Mosaic allows.
        rounded = round_up(query_length, 16), round_up(key_length, 16)
        return min(query_block, rounded[0]), min(key_block, rounded[1])

    return vjp.Kernels(
        forward=functools.partial(_forward, interpret=interpret),
        query_gradients=functools.partial(_query_gradients, interpret=interpret),
        key_gradients=functools.partial(_key_gradients, interpret=interpret),
        block_sizes=block_sizes,
        padded_size=lambda size: size,
    )


def _visited(first, end, index):
    """The block to fetch at grid step ``index`` when only blocks [first, end) are visited:
    outside the range, the nearest visited one (already in VMEM, so no copy is issued)."""
    return jnp.clip(index, first, jnp.maximum(end - 1, first))


def _group_of(settings):
    """The key/value head read by query head h."""
    return lambda h: jax.lax.div(h, settings.heads_per_group)


def _blocks(size, width, index, head=lambda h: h):
    """Blocks [size, width] of [B, H, T, X], the T block at ``index`` of the grid (b, h, n, m)."""
    return pl.BlockSpec(
        (None, None, size, width), lambda b, h, n, m: (b, head(h), index(b, h, n, m), 0)
    )


def _row_specs(rows: block.Lines, size, index):
    """Blocks of rows: [B, T, 1] (positions, segments) and [B, H, T, 1] (forget)."""

    def spec(x):
        if x.ndim == 3:
            return pl.BlockSpec((None, size, 1), lambda b, h, n, m: (b, index(b, h, n, m), 0))
        return _blocks(size, 1, index)

    return jax.tree.map(spec, rows)


def _column_specs(columns: block.Lines, size, index):
    """Blocks of columns: [B, 1, T] (positions, segments) and [B, H, 1, T] (forget)."""

    def spec(x):
        if x.ndim == 3:
            return pl.BlockSpec((None, 1, size), lambda b, h, n, m: (b, 0, index(b, h, n, m)))
        return pl.BlockSpec((None, None, 1, size), lambda b, h, n, m: (b, h, 0, index(b, h, n, m)))

    return jax.tree.map(spec, columns)


def _call(kernel, grid, inputs, in_specs, out_shape, out_specs, scratch, name, interpret):
    """The last grid axis is sequential (it accumulates); the others are independent."""
    semantics = ("parallel", "parallel", "parallel", "arbitrary")
    return vjp.pallas_call_tree(
        kernel, inputs, in_specs, out_shape, out_specs, grid=grid, scratch_shapes=scratch,
        compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
        interpret=interpret, name=name,
    )  # fmt: skip


def _forward(settings, q, k, v, rows, columns, *, interpret):
    batch, heads, query_length, key_size = q.shape
    value_size = v.shape[3]
    query_block, key_block = settings.query_block, settings.key_block
    num_key_blocks = k.shape[2] // key_block

    def query_index(b, h, i, j):
        return i

    def key_index(b, h, i, j):
        return _visited(*block.key_block_range(settings, i, num_key_blocks), j)

    def kernel(inputs, outputs, carry_refs):
        q_ref, k_ref, v_ref, row_refs, column_refs = inputs
        o_ref, logsumexp_ref = outputs
        query_block_index, key_block_index = pl.program_id(2), pl.program_id(3)

        @pl.when(key_block_index == 0)
        def _():
            for ref, value in zip(
                carry_refs, block.initial_carry(query_block, value_size), strict=True
            ):
                ref[...] = value

        first, end = block.key_block_range(settings, query_block_index, num_key_blocks)

        @pl.when((first <= key_block_index) & (key_block_index < end))
        def _():
            carry = block.forward_step(
                settings, tuple(ref[...] for ref in carry_refs), q_ref[...], k_ref[...],
                v_ref[...], block.read_lines(row_refs, ...), block.read_lines(column_refs, ...),
            )  # fmt: skip
            for ref, value in zip(carry_refs, carry, strict=True):
                ref[...] = value

        @pl.when(key_block_index == num_key_blocks - 1)
        def _():
            output, logsumexp = block.finish(tuple(ref[...] for ref in carry_refs))
            o_ref[...] = output.astype(o_ref.dtype)
            logsumexp_ref[...] = logsumexp

    group = _group_of(settings)
    in_specs = (
        _blocks(query_block, key_size, query_index),
        _blocks(key_block, key_size, key_index, group),
        _blocks(key_block, value_size, key_index, group),
        _row_specs(rows, query_block, query_index),
        _column_specs(columns, key_block, key_index),
    )
    return _call(
        kernel,
        (batch, heads, query_length // query_block, num_key_blocks),
        (q, k, v, rows, columns),
        in_specs,
        (
            jax.ShapeDtypeStruct((batch, heads, query_length, value_size), jnp.float32),
            jax.ShapeDtypeStruct((batch, heads, query_length, 1), jnp.float32),
        ),
        (_blocks(query_block, value_size, query_index), _blocks(query_block, 1, query_index)),
        [
            pltpu.VMEM((query_block, 1), jnp.float32),
            pltpu.VMEM((query_block, 1), jnp.float32),
            pltpu.VMEM((query_block, value_size), jnp.float32),
        ],
        "flash_attention_forward",
        interpret,
    )


def _query_gradients(settings, q, k, v, do, logsumexp, row_dot, rows, columns, *, interpret):
    """dq [B, H, Tq, K] and the forget gradient of the query rows [B, H, Tq, 1] (None without
    a gate), in float32, over the grid (B, H, query blocks, key blocks)."""
    batch, heads, query_length, key_size = q.shape
    value_size = v.shape[3]
    query_block, key_block = settings.query_block, settings.key_block
    num_key_blocks = k.shape[2] // key_block

    def query_index(b, h, i, j):
        return i

    def key_index(b, h, i, j):
        return _visited(*block.key_block_range(settings, i, num_key_blocks), j)

    def kernel(inputs, outputs, scratch):
        q_ref, k_ref, v_ref, do_ref, logsumexp_ref, row_dot_ref, row_refs, column_refs = inputs
        query_block_index, key_block_index = pl.program_id(2), pl.program_id(3)

        @pl.when(key_block_index == 0)
        def _():
            for ref in jax.tree.leaves(outputs):
                ref[...] = jnp.zeros_like(ref)

        first, end = block.key_block_range(settings, query_block_index, num_key_blocks)

        @pl.when((first <= key_block_index) & (key_block_index < end))
        def _():
            dq_ref, forget_grad_ref = outputs
            k = k_ref[...]
            _, score_grads = block.score_gradients(
                settings, q_ref[...], k, v_ref[...], do_ref[...], logsumexp_ref[...],
                row_dot_ref[...], block.read_lines(row_refs, ...),
                block.read_lines(column_refs, ...),
            )  # fmt: skip
            dq_ref[...] += settings.scale * block.dot(score_grads.astype(k.dtype), k)
            if forget_grad_ref is not None:
                forget_grad_ref[...] += jnp.sum(score_grads, axis=1, keepdims=True)

    group = _group_of(settings)
    row_block = _blocks(query_block, 1, query_index)
    in_specs = (
        _blocks(query_block, key_size, query_index),
        _blocks(key_block, key_size, key_index, group),
        _blocks(key_block, value_size, key_index, group),
        _blocks(query_block, value_size, query_index),
        row_block,
        row_block,
        _row_specs(rows, query_block, query_index),
        _column_specs(columns, key_block, key_index),
    )
    return _call(
        kernel,
        (batch, heads, query_length // query_block, num_key_blocks),
        (q, k, v, do, logsumexp, row_dot, rows, columns),
        in_specs,
        (
            jax.ShapeDtypeStruct(q.shape, jnp.float32),
            None if rows.forget is None else jax.ShapeDtypeStruct(rows.forget.shape, jnp.float32),
        ),
        (
            _blocks(query_block, key_size, query_index),
            row_block if rows.forget is not None else None,
        ),
        [],
        "flash_attention_query_gradients",
        interpret,
    )


def _key_gradients(settings, q, k, v, do, logsumexp, row_dot, rows, columns, *, interpret):
    """dk, dv [B, H, Tk, ·] per query head and the forget gradient of the keys [B, H, 1, Tk]
    (None without a gate), in float32, over the grid (B, H, key blocks, query blocks)."""
    batch, heads, query_length, key_size = q.shape
    key_length, value_size = k.shape[2], v.shape[3]
    query_block, key_block = settings.query_block, settings.key_block
    num_query_blocks = query_length // query_block

    def query_index(b, h, j, i):
        return _visited(*block.query_block_range(settings, j, num_query_blocks), i)

    def key_index(b, h, j, i):
        return j

    def kernel(inputs, outputs, scratch):
        q_ref, k_ref, v_ref, do_ref, logsumexp_ref, row_dot_ref, row_refs, column_refs = inputs
        key_block_index, query_block_index = pl.program_id(2), pl.program_id(3)

        @pl.when(query_block_index == 0)
        def _():
            for ref in jax.tree.leaves(outputs):
                ref[...] = jnp.zeros_like(ref)

        first, end = block.query_block_range(settings, key_block_index, num_query_blocks)

        @pl.when((first <= query_block_index) & (query_block_index < end))
        def _():
            dk_ref, dv_ref, forget_grad_ref = outputs
            q, do = q_ref[...], do_ref[...]
            probabilities, score_grads = block.score_gradients(
                settings, q, k_ref[...], v_ref[...], do, logsumexp_ref[...],
                row_dot_ref[...], block.read_lines(row_refs, ...),
                block.read_lines(column_refs, ...),
            )  # fmt: skip
            dv_ref[...] += block.dot_tn(probabilities.astype(do.dtype), do)
            dk_ref[...] += settings.scale * block.dot_tn(score_grads.astype(q.dtype), q)
            if forget_grad_ref is not None:
                forget_grad_ref[...] -= jnp.sum(score_grads, axis=0, keepdims=True)

    group = _group_of(settings)
    row_block = _blocks(query_block, 1, query_index)
    in_specs = (
        _blocks(query_block, key_size, query_index),
        _blocks(key_block, key_size, key_index, group),
        _blocks(key_block, value_size, key_index, group),
        _blocks(query_block, value_size, query_index),
        row_block,
        row_block,
        _row_specs(rows, query_block, query_index),
        _column_specs(columns, key_block, key_index),
    )
    has_forget = columns.forget is not None
    out_shape = (
        jax.ShapeDtypeStruct((batch, heads, key_length, key_size), jnp.float32),
        jax.ShapeDtypeStruct((batch, heads, key_length, value_size), jnp.float32),
        jax.ShapeDtypeStruct((batch, heads, 1, key_length), jnp.float32) if has_forget else None,
    )
    out_specs = (
        _blocks(key_block, key_size, key_index),
        _blocks(key_block, value_size, key_index),
        _column_specs(block.Lines(columns.forget), key_block, key_index).position,
    )
    return _call(
        kernel,
        (batch, heads, key_length // key_block, num_query_blocks),
        (q, k, v, do, logsumexp, row_dot, rows, columns),
        in_specs,
        out_shape,
        out_specs,
        [],
        "flash_attention_key_gradients",
        interpret,
    )
