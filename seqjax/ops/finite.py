"""Non-finite inputs in the forms that mix positions in matmuls and FFTs.

A chunked or blocked form (the chunked matrix-state ops, mLSTM's parallel form, softmax
attention, S4's FFT convolution, and their Pallas kernels) forms each output from every
position of its chunk, block or sequence and relies on zeros, from a causal mask, a triangular
matrix or the FFT's cancellations, to drop the later ones. A zero does not drop a NaN or an
inf: 0 · NaN and 0 · inf are NaN, so one non-finite input reached every earlier output, which a
recurrence never does. Selecting the scores with ``where`` is not enough: a score P_ij = 0
still multiplies v_j inside P V, and a cumulative sum taken as a triangular matmul, a
triangular inverse by block doubling or an FFT mix every position too.

So those forms run on their inputs with each non-finite entry replaced by 0
(``zero_nonfinite``), which changes no output before the first such position, and put NaN back
into every output that may depend on one: for a recurrence, every output of a batch row from
its first non-finite position on and that row's final state (``nan_from_first``); for softmax
attention, every query that is non-finite or that its mask lets see a non-finite key. NaN, +inf
and -inf all count, also in log-space inputs (a log decay or gate of -inf, a factor of exactly
0, is NaN from there on; a reset is ``segment_starts``). The recurrent reference forms need
neither: a step reads only earlier steps.

Gradients. Outputs set to NaN are constants of the inputs, with one rule for their cotangent:
where it is 0 (a loss that masks them out with ``where``) they pass no gradient, so the
gradient is exactly that of the finite prefix run alone; where it is not (a loss that reads
them, and is then NaN itself) the gradient is NaN, so a non-finite loss never comes with a
finite gradient (optax's ``apply_if_finite`` checks the gradient). The replaced entries pass
their cotangent through unchanged.
"""

import jax
import jax.numpy as jnp

from seqjax.typing import Array, PyTree


def zero_nonfinite(*sequences: Array | None) -> tuple[list[Array | None], Array]:
    """The [B, T, ...] ``sequences`` (None stays None) with every non-finite entry replaced
    by 0 (``finite_part``), and ``nonfinite_positions`` of them."""
    zeroed = [None if x is None else finite_part(x) for x in sequences]
    return zeroed, nonfinite_positions(*sequences)


def nonfinite_positions(*sequences: Array | None) -> Array:
    """bool [B, T]: true at the positions where any of the [B, T, ...] ``sequences`` (None
    is skipped) holds a non-finite entry."""
    sequences = [x for x in sequences if x is not None]
    nonfinite = jnp.zeros(sequences[0].shape[:2], bool)
    for x in sequences:
        # The largest |x| of a position is non-finite iff one entry is (max passes NaN on).
        nonfinite |= ~jnp.isfinite(jnp.max(jnp.abs(x), axis=tuple(range(2, x.ndim))))
    return nonfinite


def since_first(nonfinite: Array) -> Array:
    """bool [B, T]: true at and after the first true position of each row of ``nonfinite``."""
    length = nonfinite.shape[1]
    positions = jnp.arange(length)
    first = jnp.min(jnp.where(nonfinite, positions, length), axis=1)
    return positions >= first[:, None]


def nan_from_first(nonfinite: Array, outputs: Array, final_state: PyTree = None):
    """``outputs`` [B, T, ...] set to NaN at and after the first non-finite position of each
    row (``nonfinite`` [B, T], from ``zero_nonfinite``) and, when given, every leaf [B, ...]
    of ``final_state`` set to NaN in the rows that have one. Returns outputs, or
    (outputs, final_state)."""
    after = since_first(nonfinite)
    outputs = nan_where(after, outputs)
    if final_state is None:
        return outputs
    return outputs, jax.tree.map(lambda s: nan_where(after[:, -1], s), final_state)


def nan_where(mask: Array, x: Array) -> Array:
    """NaN where ``mask`` (whose shape is a leading part of x's), x elsewhere; the cotangent
    is that of ``where`` but NaN where it is non-zero on a masked entry (module docstring)."""
    return _nan_where(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x)


@jax.custom_vjp
def finite_part(x: Array) -> Array:
    """x with every non-finite entry replaced by 0; the cotangent passes through unchanged."""
    return jnp.where(jnp.isfinite(x), x, 0)


def _finite_part_forward(x):
    return finite_part(x), None


def _finite_part_backward(_, cotangent):
    return (cotangent,)


finite_part.defvjp(_finite_part_forward, _finite_part_backward)


@jax.custom_vjp
def _nan_where(mask: Array, x: Array) -> Array:
    return jnp.where(mask, jnp.nan, x)


def _nan_where_forward(mask, x):
    return _nan_where(mask, x), mask


def _nan_where_backward(mask, cotangent):
    read = jnp.where(cotangent == 0, 0.0, jnp.nan).astype(cotangent.dtype)
    return None, jnp.where(mask, read, cotangent)


_nan_where.defvjp(_nan_where_forward, _nan_where_backward)
