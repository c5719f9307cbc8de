"""Sequence parallelism: linear_recurrence and gated_linear_attention with the time axis
split over the `sequence` axis of a (data=2, sequence=4) mesh equal the unsplit ops on
outputs, final states and the gradients of every input (initial state included), with
segment resets, both directions of the scan and a decay per head or per key."""

import functools

import jax
import numpy as np
import pytest
from parity import outputs_and_grads
from tolerances import SHARDED_FLOAT32

from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.sequence_parallel import split_sequence

BATCH, LENGTH = 4, 32


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((2, 4), ("data", "sequence"), axis_types=(jax.sharding.AxisType.Auto,) * 2)


def split(op):
    def run(**arguments):
        with split_sequence("sequence", batch_axes=("data",)):
            return op(**arguments)

    return run


def assert_split_equals_whole(op, arrays, mesh, **options):
    expected = outputs_and_grads(op, arrays, **options)
    with jax.set_mesh(mesh):
        actual = outputs_and_grads(split(op), arrays, **options)
        jaxpr = jax.make_jaxpr(functools.partial(split(op), **options))(**arrays)
    assert "shard_map" in str(jaxpr)  # the split form ran, not the whole op
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **SHARDED_FLOAT32), actual, expected)


def segment_starts(rng):
    starts = rng.random((BATCH, LENGTH)) < 0.1
    starts[0, 8] = True  # a reset on a shard boundary
    starts[1] = False  # a row with no reset: the state crosses every boundary
    return starts


@pytest.mark.parametrize("reverse", [False, True])
def test_split_linear_recurrence_equals_the_whole_sequence(mesh, reverse):
    rng = np.random.default_rng(0)
    arrays = dict(
        a=rng.uniform(0.5, 1.0, (BATCH, LENGTH, 3)).astype(np.float32),
        x=rng.normal(size=(BATCH, LENGTH, 3)).astype(np.float32),
        initial_state=rng.normal(size=(BATCH, 3)).astype(np.float32),
        segment_starts=segment_starts(rng),
    )
    assert_split_equals_whole(linear_recurrence, arrays, mesh, reverse=reverse)


@pytest.mark.parametrize("decay", ["head", "key"])
def test_split_gated_linear_attention_equals_the_whole_sequence(mesh, decay):
    rng = np.random.default_rng(1)
    heads, key_size, value_size = 2, 4, 3
    shapes = {"head": (BATCH, LENGTH, heads), "key": (BATCH, LENGTH, heads, key_size)}
    arrays = dict(
        q=rng.normal(size=(BATCH, LENGTH, heads, key_size)).astype(np.float32),
        k=rng.normal(size=(BATCH, LENGTH, heads, key_size)).astype(np.float32) / 2,
        v=rng.normal(size=(BATCH, LENGTH, heads, value_size)).astype(np.float32),
        log_decay=np.log(rng.uniform(0.7, 1.0, shapes[decay])).astype(np.float32),
        initial_state=rng.normal(size=(BATCH, heads, key_size, value_size)).astype(np.float32),
        segment_starts=segment_starts(rng),
    )
    # Each shard runs the op's own form; the recurrent one compiles fastest.
    assert_split_equals_whole(
        gated_linear_attention, arrays, mesh, scale=0.5, implementation="reference"
    )


def test_a_length_the_sequence_axis_does_not_divide_is_an_error(mesh):
    a = x = np.ones((BATCH, 30, 2), np.float32)
    with jax.set_mesh(mesh), pytest.raises(ValueError, match=r"length \(30\).*'sequence' \(4\)"):
        jax.jit(split(linear_recurrence))(a=a, x=x)


def test_split_sequence_without_that_mesh_axis_is_an_error():
    a = x = np.ones((BATCH, 8, 2), np.float32)
    with pytest.raises(ValueError, match="needs a mesh with a 'sequence' axis"):
        jax.jit(split(linear_recurrence))(a=a, x=x)
