"""Logical axis names of parameters and activations, mapped to mesh axes by rules.

A parameter says what its axes are (``"embed"``: the model width, ``"mlp"``: the MLP's hidden
width, ``"heads"``: a mixer's inner width, heads times head size or any other width the
mixer splits into channels of its own, ``"vocab"``), never how they are split; the training
config maps names to mesh axes, e.g. ``("embed", "fsdp")``. ``None`` marks a dimension that
is never split (conv taps, low ranks, a state size, a head's own size). Where a parameter
has two inner-width dimensions, only its output one is named, so the tensor axis splits
what the parameter produces, the same way as the projection in front of it. Activations are
constrained to logical axes (``"batch"``, ``"sequence"``) inside ``axis_rules``; outside it
``constrain`` does nothing.

Every parameter is created with its names (``param``, ``linear``), one per dimension, kept
as Flax ``out_sharding`` metadata and read back by ``logical_axes``. They are not applied
when the parameter is created (no eager sharding), so a model is built the same way on one
device and on a mesh; training places its parameters (training/sharding.py).
"""

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.typing import Initializer
from jax.sharding import PartitionSpec

from seqjax.typing import Array

EMBED, MLP, HEADS, VOCAB = "embed", "mlp", "heads", "vocab"
BATCH, SEQUENCE = "batch", "sequence"

# (logical name, mesh axis or axes or None), the form of config.mesh.rules.
Rules = Sequence[tuple[str, str | Sequence[str] | None]]

_RULES: contextvars.ContextVar[tuple[Rules, dict[str, int]] | None] = contextvars.ContextVar(
    "axis_rules", default=None
)


def param(value: Array, *axes: str | None) -> nnx.Param:
    """``value`` as a parameter with logical ``axes``, one name (or None) per dimension."""
    if len(axes) != jnp.ndim(value):
        raise ValueError(
            f"{len(axes)} logical axes {axes} for a parameter of shape {jnp.shape(value)}"
        )
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def linear(
    size_in: int,
    size_out: int,
    in_axis: str | None,
    out_axis: str | None,
    *,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    **initializers: Initializer,
) -> nnx.Linear:
    """An ``nnx.Linear`` whose kernel [size_in, size_out] has the logical axes (in_axis,
    out_axis) and whose bias [size_out] has out_axis; ``initializers``: ``kernel_init``,
    ``bias_init``."""
    sharding = dict(eager_sharding=False)
    return nnx.Linear(
        size_in,
        size_out,
        use_bias=use_bias,
        kernel_metadata=dict(out_sharding=(in_axis, out_axis), **sharding),
        bias_metadata=dict(out_sharding=(out_axis,), **sharding),
        rngs=rngs,
        **initializers,
    )


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """A parameter's logical axes, or None if it has none (it is replicated)."""
    return variable.get_metadata().get("out_sharding") or None


def mesh_spec(
    axes: Sequence[str | None], shape: Sequence[int], rules: Rules, mesh_shape: dict[str, int]
) -> PartitionSpec:
    """The PartitionSpec of an array with logical ``axes`` under ``rules``.

    A dimension that its mesh axes do not divide is replicated (a 3-wide conv on 2 devices);
    a mesh axis used by an earlier dimension is not used again.
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match an array of shape {shape}")
    mapping = dict(rules)
    used, spec = set(), []
    for name, size in zip(axes, shape, strict=True):
        if name is not None and name not in mapping:
            raise ValueError(
                f"no rule maps logical axis {name!r}; rules given for: {', '.join(mapping)}"
            )
        target = mapping.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if mesh_shape.get(a, 1) > 1 and a not in used)
        pieces = 1
        for axis in mesh_axes:
            pieces *= mesh_shape[axis]
        if not mesh_axes or size % pieces:
            spec.append(None)
            continue
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


@contextlib.contextmanager
def axis_rules(rules: Rules, mesh_shape: dict[str, int]) -> Iterator[None]:
    """Makes ``constrain`` map logical axes to the mesh of shape ``mesh_shape`` by ``rules``."""
    token = _RULES.set((tuple(rules), dict(mesh_shape)))
    try:
        yield
    finally:
        _RULES.reset(token)


def constrain(x: Array, *axes: str | None) -> Array:
    """x constrained to the sharding of its logical ``axes`` (nothing outside ``axis_rules``)."""
    context = _RULES.get()
    if context is None:
        return x
    rules, mesh_shape = context
    return jax.lax.with_sharding_constraint(x, mesh_spec(axes, x.shape, rules, mesh_shape))
