"""The checks at the edges of the layers: options when a module is built, inputs when a mixer
is called. Every error names the argument and what was expected.

Inputs are checked by shape and dtype only, which jit knows when it traces, so the checks
cost nothing in a compiled step; they are the ops' own (seqjax.ops.checks), named after the
mixer. The registry runs the option type checks and the input checks for every registered
mixer (registry.py); a constructor checks its own sizes and the widths its heads divide
with ``check_sizes`` and ``check_divides``.
"""

import types
import typing
from collections.abc import Collection
from typing import Any

import jax.numpy as jnp
import numpy as np

from seqjax.ops import checks
from seqjax.typing import Array


def check_size(name: str, value: Any, *, minimum: int = 1) -> None:
    """Refuses ``value`` unless it is an integer >= ``minimum`` (a bool is not a size)."""
    is_integer = isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)
    if not is_integer or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_sizes(**sizes: Any) -> None:
    """``check_size`` for each of ``sizes`` that is not None (None picks a default size)."""
    for name, value in sizes.items():
        if value is not None:
            check_size(name, value)


def check_number(name: str, value: Any) -> None:
    """Refuses ``value`` unless it is a finite real number > 0 (a bool is not a number)."""
    is_real = isinstance(value, int | float | np.integer | np.floating)
    if isinstance(value, bool | np.bool_) or not is_real or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_divides(divisor_name: str, divisor: int, width_name: str, width: int) -> None:
    """Refuses a ``width`` that ``divisor`` (heads, groups, blocks) does not divide."""
    if width % divisor:
        raise ValueError(f"{divisor_name} ({divisor}) must divide {width_name} ({width})")


def check_choice(name: str, value: Any, choices: Collection[str]) -> None:
    """Refuses a ``value`` that is not one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_type(name: str, value: Any, annotation: Any) -> None:
    """Refuses an option whose ``value`` does not have the type ``annotation`` names: a class
    or a union of classes such as ``int | None``. An integer passes for a float, a bool passes
    for neither. Other annotations are not checked."""
    allowed = _alternatives(annotation)
    if allowed is None or any(_matches(value, alternative) for alternative in allowed):
        return
    expected = " or ".join(_describe(alternative) for alternative in allowed)
    raise ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")


def _alternatives(annotation: Any) -> tuple[type, ...] | None:
    """The classes an annotation allows, or None if it is not checked."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [_alternatives(part) for part in typing.get_args(annotation)]
        return None if None in parts else sum(parts, ())
    return (annotation,) if isinstance(annotation, type) else None


def _matches(value: Any, alternative: type) -> bool:
    if isinstance(value, bool | np.bool_):
        return alternative is bool
    if alternative is float:
        return isinstance(value, int | float | np.integer | np.floating)
    if alternative is int:
        return isinstance(value, int | np.integer)
    return isinstance(value, alternative)


def _describe(alternative: type) -> str:
    return "None" if alternative is type(None) else alternative.__name__


def check_mixer_inputs(mixer: str, x: Array, segment_starts: Array | None, d_model: int) -> None:
    """Refuses mixer inputs other than a floating-point x [B, T, D] with B, T >= 1 and
    D = ``d_model``, and a boolean ``segment_starts`` [B, T] (or None); the checks of
    ``seqjax.ops.checks``, named after the mixer."""
    where = f"mixer {mixer!r}"
    checks.floating(where, "x", x)
    if jnp.ndim(x) != 3:
        raise ValueError(f"{where}: x must be [B, T, D], got shape {jnp.shape(x)}")
    batch, length, _ = jnp.shape(x)
    checks.shape(where, "x", x, (batch, length, d_model), f"[B, T, D] with D = d_model ({d_model})")
    checks.nonempty(where, "x", x)
    if segment_starts is not None:
        checks.shape(where, "segment_starts", segment_starts, (batch, length), "[B, T]")
        if jnp.result_type(segment_starts) != jnp.bool_:
            raise ValueError(
                f"{where}: segment_starts must be boolean, got {jnp.result_type(segment_starts)}"
            )
