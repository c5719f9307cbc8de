"""linear_recurrence on GPU (Triton): a scan blocked over features, sequential over time.

Each program owns one sequence and a block of features and walks the time axis with its
float32 carry in registers; a step loads one row of a and x (contiguous features, so the
loads coalesce) and stores one row of h. The grid (B, feature blocks) supplies the
parallelism that the time loop does not; the op is memory-bound, and each element of a, x
and h crosses memory once.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from kernels_pallas.common import pad_axis
from kernels_pallas.linear_scan import recurrence

DEFAULT_FEATURE_BLOCK = 128


def kernel(
    *, feature_block: int = DEFAULT_FEATURE_BLOCK, num_warps: int = 4, interpret: bool = False
):
    """The GPU scan kernel (a ``recurrence.ScanKernel``).

    Args:
      feature_block: features per program, a power of two.
      num_warps: Triton warps per program.
      interpret: run the kernel in the Pallas interpreter (on any platform).
    """
    if feature_block < 1 or feature_block & (feature_block - 1):
        raise ValueError(f"linear_scan: feature_block must be a power of two, got {feature_block}")
    return functools.partial(
        _scan_call, feature_block=feature_block, num_warps=num_warps, interpret=interpret
    )


def _scan_call(a, x, initial, *, reverse, adjoint, out_dtype, feature_block, num_warps, interpret):
    batch, length, features = x[0].shape
    feature_block = min(feature_block, pl.next_power_of_2(features))
    a = [pad_axis(plane, 2, feature_block, 1 if i == 0 else 0) for i, plane in enumerate(a)]
    x = [pad_axis(plane, 2, feature_block) for plane in x]
    initial = [pad_axis(p.astype(jnp.float32), 1, feature_block) for p in initial]
    padded = x[0].shape[2]
    sequence_spec = pl.BlockSpec((None, length, feature_block), lambda b, f: (b, 0, f))
    state_spec = pl.BlockSpec((None, feature_block), lambda b, f: (b, f))
    planes = len(x)
    results = pl.pallas_call(
        functools.partial(_scan_kernel, planes=planes, reverse=reverse, adjoint=adjoint),
        grid=(batch, padded // feature_block),
        in_specs=[sequence_spec] * (2 * planes) + [state_spec] * planes,
        out_specs=[sequence_spec] * planes + [state_spec] * planes,
        out_shape=[jax.ShapeDtypeStruct(x[0].shape, out_dtype)] * planes
        + [jax.ShapeDtypeStruct(initial[0].shape, jnp.float32)] * planes,
        compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
        interpret=interpret,
        name="linear_scan_adjoint" if adjoint else "linear_scan",
    )(*a, *x, *initial)
    out = tuple(o[..., :features] for o in results[:planes])
    final = tuple(f[:, :features] for f in results[planes:])
    return out, final


def _scan_kernel(*refs, planes, reverse, adjoint):
    """One sequence and feature block, all time steps, with the carry in registers."""
    a_refs, x_refs, initial_refs, out_refs, final_refs = (
        refs[i * planes : (i + 1) * planes] for i in range(5)
    )
    length = x_refs[0].shape[0]

    def step(i, carry):
        t = length - 1 - i if reverse else i
        a_t = [ref[t, :].astype(jnp.float32) for ref in a_refs]
        x_t = [ref[t, :].astype(jnp.float32) for ref in x_refs]
        out, carry = recurrence.step(a_t, x_t, carry, adjoint=adjoint)
        for ref, value in zip(out_refs, out, strict=True):
            ref[t, :] = value.astype(ref.dtype)
        return carry

    carry = jax.lax.fori_loop(0, length, step, [ref[...] for ref in initial_refs])
    for final_ref, value in zip(final_refs, carry, strict=True):
        final_ref[...] = value
