"""linear_recurrence on TPU: a sequential scan in VMEM over (rows, 128) feature tiles.

The features are laid out as [B, T, F / 128, 128] so that one time step of up to 8 × 128
features is one (8, 128) float32 tile: the carry lives in vector registers, and each step
is one load of a_t and x_t, a multiply-add and one store. The grid is
(B, feature tiles, time blocks); the time axis is last and sequential, the carry crosses
time blocks in a VMEM scratch tile, and each time block is copied to VMEM whole by the
Pallas pipeline while the previous one is scanned.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.common import pad_axis, round_up
from kernels_pallas.linear_scan import recurrence

LANES = 128
MAX_ROWS = 8  # rows of 128 features per tile: one float32 vector register
DEFAULT_TIME_BLOCK = 128


def kernel(*, time_block: int = DEFAULT_TIME_BLOCK, interpret: bool = False):
    """The TPU scan kernel (a ``recurrence.ScanKernel``).

    Args:
      time_block: time steps per block copied to VMEM.
      interpret: run the kernel in the Pallas interpreter (on any platform).
    """
    if time_block < 1:
        raise ValueError(f"linear_scan: time_block must be >= 1, got {time_block}")
    return functools.partial(_scan_call, time_block=time_block, interpret=interpret)


def _scan_call(a, x, initial, *, reverse, adjoint, out_dtype, time_block, interpret):
    """Pads [B, T, F] planes to whole tiles, runs the kernel, cuts the padding off."""
    batch, length, features = x[0].shape
    rows = round_up(features, LANES) // LANES
    row_block = min(rows, MAX_ROWS)
    rows = round_up(rows, row_block)
    time_block = min(time_block, length)
    num_time_blocks = round_up(length, time_block) // time_block

    def tiles(t, value):  # [B, T, F] -> [B, T', rows, 128]
        t = pad_axis(pad_axis(t, 2, rows * LANES, value), 1, time_block, value)
        return t.reshape(*t.shape[:2], rows, LANES)

    # Padded steps have a = 1 and x = 0: they carry the state through unchanged.
    a = [tiles(plane, 1 if i == 0 else 0) for i, plane in enumerate(a)]
    x = [tiles(plane, 0) for plane in x]
    initial = [
        pad_axis(p.astype(jnp.float32), 1, rows * LANES).reshape(batch, rows, LANES)
        for p in initial
    ]

    def time_index(t):
        return num_time_blocks - 1 - t if reverse else t

    sequence_spec = pl.BlockSpec(
        (None, time_block, row_block, LANES), lambda b, f, t: (b, time_index(t), f, 0)
    )
    state_spec = pl.BlockSpec((None, row_block, LANES), lambda b, f, t: (b, f, 0))
    planes = len(x)
    results = pl.pallas_call(
        functools.partial(_scan_kernel, planes=planes, reverse=reverse, adjoint=adjoint),
        grid=(batch, rows // row_block, num_time_blocks),
        in_specs=[sequence_spec] * (2 * planes) + [state_spec] * planes,
        out_specs=[sequence_spec] * planes + [state_spec] * planes,
        out_shape=[jax.ShapeDtypeStruct(x[0].shape, out_dtype)] * planes
        + [jax.ShapeDtypeStruct(initial[0].shape, jnp.float32)] * planes,
        scratch_shapes=[pltpu.VMEM((row_block, LANES), jnp.float32)] * planes,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=interpret,
        name="linear_scan_adjoint" if adjoint else "linear_scan",
    )(*a, *x, *initial)
    out = tuple(o.reshape(batch, -1, rows * LANES)[:, :length, :features] for o in results[:planes])
    final = tuple(f.reshape(batch, rows * LANES)[:, :features] for f in results[planes:])
    return out, final


def _scan_kernel(*refs, planes, reverse, adjoint):
    """One (feature tile, time block): the carry c enters from the scratch tile (from the
    initial state in the first block) and leaves to it, and to the final state in the last."""
    a_refs, x_refs, initial_refs, out_refs, final_refs, carry_refs = (
        refs[i * planes : (i + 1) * planes] for i in range(6)
    )
    time_block = x_refs[0].shape[0]

    @pl.when(pl.program_id(2) == 0)
    def _():
        for carry_ref, initial_ref in zip(carry_refs, initial_refs, strict=True):
            carry_ref[...] = initial_ref[...]

    def step(i, carry):
        t = time_block - 1 - i if reverse else i
        a_t = [ref[t].astype(jnp.float32) for ref in a_refs]
        x_t = [ref[t].astype(jnp.float32) for ref in x_refs]
        out, carry = recurrence.step(a_t, x_t, carry, adjoint=adjoint)
        for ref, value in zip(out_refs, out, strict=True):
            ref[t] = value.astype(ref.dtype)
        return carry

    carry = jax.lax.fori_loop(
        0, time_block, step, [ref[...] for ref in carry_refs], unroll=min(8, time_block)
    )
    for carry_ref, value in zip(carry_refs, carry, strict=True):
        carry_ref[...] = value

    @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
    def _():
        for final_ref, value in zip(final_refs, carry, strict=True):
            final_ref[...] = value
