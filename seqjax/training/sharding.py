"""The device mesh, the logical-axis rules, and where every array of a run lives.

``config.mesh`` names the size of each mesh axis; one may be -1 (the devices left over):

    data      replicas of the model, each on its own slice of the batch
    fsdp      the batch split as for data, and the parameters and optimizer state split too
    tensor    the inner widths of layers (MLP hidden, heads, vocabulary) split
    sequence  the time axis of activations split; the recurrences run sequence-parallel

``config.mesh.rules`` maps the logical axis names of parameters and activations
(layers/partitioning.py) to mesh axes. Every process builds the same mesh from all devices
of all processes; the batch is split so that each process holds a contiguous block of rows.
"""

import math
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seqjax.layers.partitioning import BATCH, SEQUENCE, Rules, logical_axes, mesh_spec
from seqjax.typing import PyTree

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
DEFAULT_RULES = (
    (BATCH, ("data", "fsdp")),
    (SEQUENCE, "sequence"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", "tensor"),
)


def mesh_defaults() -> ml_collections.ConfigDict:
    """The ``config.mesh`` section: every device on ``data``, and the default rules."""
    return ml_collections.ConfigDict(
        dict(data=-1, fsdp=1, tensor=1, sequence=1, rules=DEFAULT_RULES)
    )


def mesh_shape(mesh_config: Mapping[str, Any], num_devices: int) -> dict[str, int]:
    """The size of each mesh axis, with a -1 filled in, checked against ``num_devices``."""
    unknown = sorted(set(mesh_config) - {*MESH_AXES, "rules"})
    if unknown:
        raise ValueError(
            f"unknown mesh axis {', '.join(unknown)}; config.mesh has {', '.join(MESH_AXES)}"
        )
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(
            f"config.mesh sizes must be positive, with at most one -1 (the devices left over); "
            f"got {sizes}"
        )
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh.{free[0]}=-1 takes the devices left over, but {num_devices} "
                f"devices are not a multiple of the other axes' product {fixed} ({sizes})"
            )
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(
            f"config.mesh {sizes} has {math.prod(sizes.values())} devices, but there are "
            f"{num_devices}; make the product of the axis sizes equal the device count"
        )
    return sizes


def create_mesh(mesh_config: Mapping[str, Any], devices: list | None = None) -> Mesh:
    """The mesh over ``devices`` (default: every device of every process), in the order
    jax lists them, so each process's devices are a contiguous block of the data axes."""
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(mesh_config, len(devices))
    grid = np.asarray(devices, dtype=object).reshape(tuple(sizes.values()))
    return Mesh(grid, MESH_AXES)


def rules_of(mesh_config: Mapping[str, Any]) -> Rules:
    """The logical-axis rules of ``config.mesh``, checked to name only mesh axes."""
    rules = tuple(tuple(rule) for rule in mesh_config.get("rules", DEFAULT_RULES))
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"config.mesh.rules holds (logical name, mesh axes) pairs, got {rule}")
        targets = (rule[1],) if isinstance(rule[1], str) else tuple(rule[1] or ())
        unknown = [axis for axis in targets if axis not in MESH_AXES]
        if unknown:
            raise ValueError(
                f"config.mesh.rules maps {rule[0]!r} to unknown mesh axis {unknown[0]!r}; "
                f"mesh axes: {', '.join(MESH_AXES)}"
            )
    return rules


def tree_shardings(tree: PyTree, mesh: Mesh, rules: Rules) -> PyTree:
    """A NamedSharding for every array of ``tree`` (abstract or not): parameters and the
    optimizer statistics that mirror them by their logical axes, the rest replicated."""
    mesh_sizes = dict(mesh.shape)

    def sharding(leaf):
        if not isinstance(leaf, nnx.Variable):
            return NamedSharding(mesh, PartitionSpec())
        axes = logical_axes(leaf)
        spec = mesh_spec(axes, leaf.shape, rules, mesh_sizes) if axes else PartitionSpec()
        return leaf.replace(NamedSharding(mesh, spec))  # keeps the tree's structure

    return jax.tree.map(sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def axis_product(mesh: Mesh, mesh_axes: str | tuple[str, ...] | None) -> int:
    """The number of devices along ``mesh_axes`` (a rule's target) of ``mesh``."""
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes or ())
    return math.prod(mesh.shape[axis] for axis in mesh_axes)


def batch_sharding(mesh: Mesh, rules: Rules, shape: tuple[int, ...]) -> NamedSharding:
    """A batch array [B, T, ...]: rows over the batch axes, time over the sequence axis."""
    axes = (BATCH, SEQUENCE)[: len(shape)] + (None,) * max(len(shape) - 2, 0)
    return NamedSharding(mesh, mesh_spec(axes, shape, rules, dict(mesh.shape)))


def process_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[int, int]:
    """(shard_index, num_shards): this process's rows of a global batch as one of
    ``num_shards`` equal contiguous blocks, the form ``Task.train_batch`` takes."""
    blocks = sorted(
        {
            index[0].indices(shape[0])[:2]
            for index in sharding.addressable_devices_indices_map(shape).values()
        }
    )
    start, stop = blocks[0][0], blocks[-1][1]
    contiguous = all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
    size = stop - start
    if not contiguous or shape[0] % size or start % size:
        raise ValueError(
            f"this process's devices hold rows {blocks} of a batch of {shape[0]}, not one of "
            "equal contiguous blocks; put the batch axes (data, fsdp) first in the mesh"
        )
    return start // size, shape[0] // size


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, rules: Rules, batch_size: int):
    """This process's rows -> global arrays sharded over the mesh."""
    arrays = {}
    for name, rows in local_batch.items():
        shape = (batch_size, *rows.shape[1:])
        arrays[name] = jax.make_array_from_process_local_data(
            batch_sharding(mesh, rules, shape), rows, shape
        )
    return arrays
