"""The custom VJP shared by the TPU and GPU scan kernels.

A scan kernel runs, over the time axis of [B, T, F] arrays given as planes (see
kernels_pallas.common.to_planes), with a float32 carry c started from ``initial``:

    forward:  c ← a_t c + x_t,        out_t = c
    adjoint:  out_t = x_t + c,        c ← a_t out_t

and returns ``(out, c at the end)``. The adjoint mode is the backward pass of the forward
one, run in the other direction: with x the cotangent of h it gives
δ_t = ∂L/∂h_t + a_{t+1} δ_{t+1} = ∂L/∂x_t, and its final carry a_0 δ_0 = ∂L/∂h_{-1}; then
∂L/∂a_t = δ_t h_{t-1} is one elementwise product outside the kernel.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kernels_pallas.common import from_planes, multiply_planes, to_planes

ScanKernel = Callable[..., tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]]
"""``kernel(a, x, initial, *, reverse, adjoint, out_dtype) -> (out, final)`` over planes."""


def scan(
    kernel: ScanKernel,
    a: jax.Array,
    x: jax.Array,
    initial_state: jax.Array | None,
    segment_starts: jax.Array | None,
    reverse: bool,
) -> tuple[jax.Array, jax.Array]:
    """h_t = a_t ⊙ h_{t-1} + x_t with ``kernel``; arguments and results as in
    seqjax.ops.scan.linear_recurrence."""
    x = jnp.asarray(x)
    a = jnp.broadcast_to(jnp.asarray(a), x.shape)
    if not jnp.issubdtype(jnp.result_type(a, x), jnp.inexact):
        raise ValueError(f"linear_scan: a and x must be floating or complex, got {a.dtype}")
    state_dtype = jnp.result_type(a.dtype, x.dtype, jnp.float32)
    if state_dtype not in (jnp.float32, jnp.complex64):
        raise ValueError(
            f"linear_scan: the kernels carry float32 or complex64 states, not {state_dtype}"
        )
    # One input dtype (complex if either is), so the cotangents of a and x share h's dtype.
    input_dtype = jnp.result_type(a.dtype, x.dtype)
    if jnp.issubdtype(state_dtype, jnp.complexfloating):
        input_dtype = state_dtype
    a, x = a.astype(input_dtype), x.astype(input_dtype)
    batch, length = x.shape[:2]
    if initial_state is None:
        initial_state = jnp.zeros((batch, *x.shape[2:]), state_dtype)
    if segment_starts is not None:
        reset = segment_starts.astype(bool)
        if reverse:  # the state carried from p into p - 1 is dropped when p starts
            reset = jnp.concatenate([reset[:, 1:], jnp.zeros_like(reset[:, :1])], axis=1)
        a = jnp.where(reset.reshape(reset.shape + (1,) * (x.ndim - 2)), 0, a)
    return _scan(kernel, reverse, a, x, initial_state.astype(state_dtype))


def step(a_t: list, x_t: list, carry: list, *, adjoint: bool) -> tuple[list, list]:
    """One step of a scan kernel on planes: the output and the next carry (module docstring)."""
    if adjoint:
        out = [x + c for x, c in zip(x_t, carry, strict=True)]
        return out, multiply_planes(a_t, out)
    carry = [p + x for p, x in zip(multiply_planes(a_t, carry), x_t, strict=True)]
    return carry, carry


def _run(kernel, a, x, initial, reverse, adjoint, out_dtype):
    """Flattens the feature axes to one, runs the kernel on planes, restores the shapes."""
    shape = x.shape

    def flat(t):
        return to_planes(t.reshape(*t.shape[:2], -1))

    out, final = kernel(
        flat(a),
        flat(x),
        to_planes(initial.reshape(initial.shape[0], -1)),
        reverse=reverse,
        adjoint=adjoint,
        out_dtype=jnp.finfo(out_dtype).dtype,  # float32 planes for complex64
    )
    return from_planes(out).reshape(shape), from_planes(final).reshape(initial.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scan(kernel, reverse, a, x, initial_state):
    return _run(kernel, a, x, initial_state, reverse, False, x.dtype)


def _scan_forward(kernel, reverse, a, x, initial_state):
    h, final_state = _scan(kernel, reverse, a, x, initial_state)
    return (h, final_state), (a, h, initial_state)


def _scan_backward(kernel, reverse, residuals, cotangents):
    a, h, initial_state = residuals
    h_cotangent, final_cotangent = cotangents
    delta, initial_grad = _run(
        kernel, a, h_cotangent.astype(h.dtype), final_cotangent, not reverse, True, h.dtype
    )
    if reverse:
        previous_h = jnp.concatenate([h[:, 1:], initial_state[:, None].astype(h.dtype)], axis=1)
    else:
        previous_h = jnp.concatenate([initial_state[:, None].astype(h.dtype), h[:, :-1]], axis=1)
    a_grad = delta.astype(initial_state.dtype) * previous_h
    return a_grad.astype(a.dtype), delta, initial_grad


_scan.defvjp(_scan_forward, _scan_backward)
