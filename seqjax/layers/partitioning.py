"""Logical axis names of parameters and activations, mapped to mesh axes by rules.

A parameter says what its axes are (``"embed"``: the model width, ``"mlp"``: the MLP's hidden
width, ``"heads"``: a mixer's inner width, heads times head size, ``"vocab"``), never how
they are split; the training config maps names to mesh axes, e.g. ``("embed", "fsdp")``.
Parameters without names are replicated. Activations are constrained to logical axes
(``"batch"``, ``"sequence"``) inside ``axis_rules``; outside it ``constrain`` does nothing.

Names are kept as Flax ``out_sharding`` metadata, set after a parameter is created, so a
model is built the same way on one device and on a mesh; training places its parameters
(training/sharding.py).
"""

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
from flax import nnx
from jax.sharding import PartitionSpec

from seqjax.typing import Array

EMBED, MLP, HEADS, VOCAB = "embed", "mlp", "heads", "vocab"
BATCH, SEQUENCE = "batch", "sequence"

# (logical name, mesh axis or axes or None), the form of config.mesh.rules.
Rules = Sequence[tuple[str, str | Sequence[str] | None]]

_RULES: contextvars.ContextVar[tuple[Rules, dict[str, int]] | None] = contextvars.ContextVar(
    "axis_rules", default=None
)


def name_axes(variable: nnx.Variable, *logical_axes: str | None) -> None:
    """Gives a parameter its logical axes, one name (or None) per array axis."""
    if len(logical_axes) != variable.ndim:
        raise ValueError(
            f"{len(logical_axes)} logical axes {logical_axes} for a parameter of shape "
            f"{variable.shape}"
        )
    variable.set_metadata(out_sharding=logical_axes)


def logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """A parameter's logical axes, or None if it has none (it is replicated)."""
    return variable.get_metadata().get("out_sharding") or None


# The mixers' names for a projection back to the model width (it may be square).
OUTPUT_PROJECTIONS = ("output", "out_proj", "output_proj", "down_proj")


def name_projection_axes(module: nnx.Module, d_model: int) -> None:
    """Names the axes of every unnamed ``nnx.Linear`` in ``module``: a projection back to the
    model width is (heads, embed), one from it (embed, heads); biases follow the output.

    The mixers' in and out projections hold most of their parameters; this gives every
    mixer a split of them without a line in its file. Other parameters stay replicated.
    """
    for path, linear in nnx.iter_graph(module):
        if not isinstance(linear, nnx.Linear) or logical_axes(linear.kernel):
            continue
        size_in, size_out = linear.kernel.shape
        is_output = path and path[-1] in OUTPUT_PROJECTIONS
        if size_out == d_model and (is_output or size_in != d_model):
            axes = (HEADS, EMBED)
        elif size_in == d_model:
            axes = (EMBED, HEADS)
        else:
            continue
        name_axes(linear.kernel, *axes)
        if linear.bias is not None:
            name_axes(linear.bias, axes[1])


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
