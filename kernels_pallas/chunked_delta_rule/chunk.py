"""One chunk of the delta rule inside a kernel, shared by the TPU and GPU kernels.

Per head and chunk of C steps, with b the cumulative log decay inside the chunk (b_i =
Σ_{s ≤ i} log_decay_s), Γ_ij = e^{b_i - b_j} for j ≤ i and S₀ [K, V] the state entering
(the UT transform, as in seqjax.ops.delta_rule):

    A_ij = β_i Γ_ij k_i·k_j  (j < i)          U = (I + A)⁻¹ diag(β) (V - diag(e^b) K S₀)
    O = scale ((Γ ⊙ Q Kᵀ) U + diag(e^b) Q S₀)   S_C = e^{b_C} S₀ + (diag(e^{b_C - b}) K)ᵀ U

(I + A)⁻¹ is formed in matmuls by block doubling (``unit_lower_inverse``), so the chunk is a
short chain of matmuls, exps and masks: the backward kernel pulls cotangents back through
it with jax.vjp, recomputing the chunk from its entering state.

Values are float32 2-d arrays: q, k [C, K], v [C, V], beta and b as rows [C, 1], b again as
columns [1, C] (both layouts are loaded, so no transpose is needed in the kernel).
"""

import functools

import jax
import jax.numpy as jnp

from kernels_pallas.common import dot, dot_nt, dot_tn


def _index(size, axis):
    return jax.lax.broadcasted_iota(jnp.int32, (size, size), axis)


def unit_lower_inverse(a):
    """(I + A)⁻¹ for strictly lower-triangular A [C, C], C a power of two.

    With D_s the block-diagonal inverse of I + A on blocks of s rows (D_1 = I), and X_s the
    part of A in the lower-left s x s corner of each diagonal 2s block,
    D_2s = D_s - D_s X_s D_s: the block rule [[L₁, 0], [M, L₂]]⁻¹ = [[L₁⁻¹, 0],
    [-L₂⁻¹ M L₁⁻¹, L₂⁻¹]], stable for triangular matrices (Du Croz & Higham 1992), on all
    blocks of a level at once.
    """
    size = a.shape[0]
    row, column = _index(size, 0), _index(size, 1)
    shift = jax.lax.shift_right_logical
    inverse = jnp.where(row == column, 1.0, 0.0)
    level = 0
    while (1 << level) < size:
        same_pair = shift(row, level + 1) == shift(column, level + 1)
        corner = same_pair & (shift(row, level) & 1 == 1) & (shift(column, level) & 1 == 0)
        inverse = inverse - dot(dot(inverse, jnp.where(corner, a, 0.0)), inverse)
        level += 1
    return inverse


def forward(q, k, v, beta, b_rows, b_columns, state, *, scale):
    """The chunk's outputs O [C, V] and the state S_C [K, V] leaving it."""
    size = q.shape[0]
    row, column = _index(size, 0), _index(size, 1)
    exponent = b_rows - b_columns  # b_i - b_j
    decay = jnp.exp(jnp.where(row >= column, exponent, -jnp.inf))  # Γ, 0 above the diagonal
    a = jnp.where(row > column, beta * decay * dot_nt(k, k), 0.0)
    entering_decay = jnp.exp(b_rows)
    right = beta * (v - entering_decay * dot(k, state))
    u = dot(unit_lower_inverse(a), right)
    output = dot(decay * dot_nt(q, k), u) + entering_decay * dot(q, state)
    last = jax.lax.broadcasted_iota(jnp.int32, (1, size), 1) == size - 1
    total = jnp.sum(jnp.where(last, b_columns, 0.0), axis=1, keepdims=True)  # b_C [1, 1]
    leaving = dot_tn(jnp.exp(total - b_rows) * k, u)
    return scale * output, jnp.exp(total) * state + leaving


def backward(inputs, state, output_grad, state_grad, *, scale):
    """Cotangents of (q, k, v, beta, b_rows, b_columns) and of the entering state, from those
    of the chunk's outputs and leaving state."""
    _, pullback = jax.vjp(functools.partial(forward, scale=scale), *inputs, state)
    *input_grads, entering_grad = pullback((output_grad, state_grad))
    return input_grads, entering_grad
