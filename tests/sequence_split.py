"""What the tests of sequence-parallel ops, mixers and models share: the (data=2, sequence=4)
mesh of the 8 simulated devices, its split, and a record of the ops over time a traced
computation calls and whether each ran split."""

import contextlib
from collections.abc import Iterator
from unittest import mock

import jax
from jax.extend import core

from seqjax.ops import sequence_parallel
from seqjax.ops.sequence_parallel import SequenceSplit

SPLIT = SequenceSplit("sequence", batch_axes=("data",))


def auto_mesh(shape, names):
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))


def data_and_sequence_mesh():
    """The mesh (data=2, sequence=4) that SPLIT splits."""
    return auto_mesh((2, 4), ("data", "sequence"))


@contextlib.contextmanager
def recording_splits() -> Iterator[list[tuple[str, bool]]]:
    """Records, while open, every call of an op over time made outside a shard, as (op name,
    whether it runs split), in the list it yields. Every such op asks
    ``sequence_parallel.active_split`` whether to run split; the calls from inside a shard
    (each shard's own form, on its piece of the sequence) are not recorded."""
    calls = []
    active_split = sequence_parallel.active_split

    def recording(op, split):
        active = active_split(op, split)
        if not jax.sharding.get_abstract_mesh().manual_axes:
            calls.append((op, active is not None))
        return active

    with mock.patch.object(sequence_parallel, "active_split", recording):
        yield calls


def loops_outside_shards(jaxpr) -> list[str]:
    """The scans, while loops and FFTs of ``jaxpr`` (and of the jaxprs inside it) that are
    not inside a shard_map: on a split sequence, each would run over all of it."""
    found = []
    for equation in jaxpr.eqns:
        if equation.primitive.name == "shard_map":
            continue
        if equation.primitive.name in ("scan", "while", "fft"):
            found.append(equation.primitive.name)
        for inner in core.jaxprs_in_params(equation.params):
            found += loops_outside_shards(inner)
    return found
