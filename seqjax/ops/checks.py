"""The argument checks every op runs at its edge; each error names the op, the argument and
what was expected.

- Shapes: the [B, T, ...] layouts of the ops (``head_inputs`` for the matrix-state ops,
  ``shape`` for the rest), ``segment_starts`` [B, T], sizes such as ``chunk_size`` >= 1.
- Sizes: B = 0 or T = 0 is refused (``nonempty``): there is no sequence to run.
- Dtypes: an argument meant to be floating point (or complex, where the op allows it) that
  holds integers or booleans is refused, never cast (``floating``): an integer input is
  almost always a bug upstream (token ids fed where embeddings were meant), and a cast would
  hide it. ``segment_starts`` must be boolean or integer.
- Domains (``in_range``): values outside an op's domain, such as a positive log decay, are
  refused when the op is called on concrete arrays. Under a transformation (jit, grad,
  vmap) the values are not known when the op is traced; with ``debug_checks=True`` the op
  emits ``jax.experimental.checkify`` checks instead, which report through
  ``checkify.checkify(jax.jit(f))``. With ``debug_checks=False`` (the default) a traced op
  holds no trace of them. NaN is not a domain error (it is no value at all); ±inf is.
"""

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from seqjax.typing import Array


def floating(op: str, name: str, x, *, complex_allowed: bool = False) -> None:
    """Refuses ``x`` unless it is floating point (or complex, with ``complex_allowed``)."""
    if x is None:
        return
    dtype = jnp.result_type(x)
    kind = jnp.inexact if complex_allowed else jnp.floating
    if not jnp.issubdtype(dtype, kind):
        expected = "floating point or complex" if complex_allowed else "floating point"
        raise ValueError(f"{op}: {name} must be {expected}, got {dtype}")


def nonempty(op: str, name: str, x) -> None:
    """Refuses a [B, T, ...] argument with no sequence (B = 0) or no step (T = 0)."""
    batch, length = jnp.shape(x)[:2]
    if batch == 0 or length == 0:
        raise ValueError(
            f"{op}: {name} must hold at least one sequence and one step, got B = {batch}, "
            f"T = {length} (shape {jnp.shape(x)})"
        )


def shape(op: str, name: str, x, expected: Sequence[int], layout: str) -> None:
    """Refuses ``x`` unless its shape is ``expected``, written ``layout`` (e.g. [B, T, H])."""
    if x is not None and jnp.shape(x) != tuple(expected):
        raise ValueError(
            f"{op}: {name} must be {layout} = {tuple(expected)}, got shape {jnp.shape(x)}"
        )


def at_least_one(op: str, name: str, size: int) -> None:
    if size < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {size}")


def segment_starts(op: str, starts, batch: int, length: int) -> Array | None:
    """``starts`` as a bool [B, T] array (None stays None)."""
    if starts is None:
        return None
    shape(op, "segment_starts", starts, (batch, length), "[B, T]")
    dtype = jnp.result_type(starts)
    if not (dtype == jnp.bool_ or jnp.issubdtype(dtype, jnp.integer)):
        raise ValueError(f"{op}: segment_starts must be boolean, got {dtype}")
    return jnp.asarray(starts).astype(bool)


def head_inputs(
    op: str,
    q,
    k,
    v,
    *,
    like_q: Mapping[str, object] | None = None,
    per_head: Mapping[str, object] | None = None,
    log_decay=None,
    per_key_decay: bool = True,
    initial_state=None,
) -> tuple[int, int, int, int, int]:
    """The checks of the matrix-state ops: q, k and ``like_q`` [B, T, H, K], v [B, T, H, V],
    ``per_head`` [B, T, H], ``log_decay`` [B, T, H] (or [B, T, H, K] with ``per_key_decay``)
    and ``initial_state`` [B, H, K, V], all floating point, B and T at least 1.
    Returns (B, T, H, K, V)."""
    like_q = {"k": k, **(like_q or {})}
    per_head = per_head or {}
    if len(jnp.shape(q)) != 4:
        raise ValueError(f"{op}: q must be [B, T, H, K], got shape {jnp.shape(q)}")
    for name, x in like_q.items():
        if jnp.shape(x) != jnp.shape(q):
            raise ValueError(
                f"{op}: {name} must have q's shape [B, T, H, K] = {jnp.shape(q)}, got "
                f"{jnp.shape(x)}"
            )
    batch, length, heads, key_size = jnp.shape(q)
    if len(jnp.shape(v)) != 4 or jnp.shape(v)[:3] != (batch, length, heads):
        raise ValueError(
            f"{op}: v must be [B, T, H, V] with [B, T, H] = {(batch, length, heads)}, got "
            f"{jnp.shape(v)}"
        )
    value_size = jnp.shape(v)[3]
    for name, x in per_head.items():
        shape(op, name, x, (batch, length, heads), "[B, T, H]")
    if per_key_decay:
        if log_decay is not None and jnp.shape(log_decay) not in (
            (batch, length, heads),
            (batch, length, heads, key_size),
        ):
            raise ValueError(
                f"{op}: log_decay must be [B, T, H] = {(batch, length, heads)} or "
                f"[B, T, H, K] = {jnp.shape(q)}, got {jnp.shape(log_decay)}"
            )
    else:
        shape(op, "log_decay", log_decay, (batch, length, heads), "[B, T, H]")
    state = (batch, heads, key_size, value_size)
    shape(op, "initial_state", initial_state, state, "[B, H, K, V]")
    arrays = {"q": q, **like_q, "v": v, **per_head, "log_decay": log_decay}
    for name, x in {**arrays, "initial_state": initial_state}.items():
        floating(op, name, x)
    nonempty(op, "q", q)
    return batch, length, heads, key_size, value_size


def in_range(
    op: str,
    name: str,
    x: Array | None,
    *,
    low: float | None = None,
    high: float | None = None,
    debug_checks: bool = False,
) -> None:
    """Refuses values of ``x`` below ``low`` or above ``high``: at once for a concrete array,
    by a checkify check for a traced one when ``debug_checks`` (see the module docstring)."""
    if x is None:
        return
    if low is None:
        expected = f"<= {high:g}"
    elif high is None:
        expected = f">= {low:g}"
    else:
        expected = f"in [{low:g}, {high:g}]"
    message = f"{op}: {name} must be {expected}, got values in [{{smallest}}, {{largest}}]"

    def inside(xp, x):
        below = xp.any(x < low) if low is not None else False
        above = xp.any(x > high) if high is not None else False
        return ~(below | above), dict(smallest=xp.nanmin(x), largest=xp.nanmax(x))

    if not isinstance(x, jax.core.Tracer):
        # NumPy, so a concrete array stays concrete inside a function being traced.
        ok, extremes = inside(np, np.asarray(x))
        if not bool(ok):
            raise ValueError(message.format(**{n: float(e) for n, e in extremes.items()}))
    elif debug_checks:
        ok, extremes = inside(jnp, x)
        checkify.check(ok, message, **extremes)
