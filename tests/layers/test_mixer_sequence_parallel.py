"""Every registered mixer, built with a split of the time axis over the `sequence` axis of a
(data=2, sequence=4) mesh of the 8 simulated devices, either runs sequence-parallel or is
refused by the backbone, by name.

Run split, a mixer equals the unsplit mixer on outputs and final states (a packed batch from
no state, then a second piece from its state), every op over time it calls runs split, and no
loop or FFT runs outside a shard. The refused ones: the nonlinear recurrences, which have no
sequence-parallel form, and S4D's FFT convolution. A new mixer is in the first group unless
it is named in the second, so one that would gather the sequence fails here.

T = 16 gives each shard 4 steps (a short conv needs W - 1 = 3) and two chunks of 2. Each case
compiles once: the split and the unsplit runs are one jitted call.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_testing import SMALL_OPTIONS
from sequence_split import SPLIT, data_and_sequence_mesh, loops_outside_shards, recording_splits
from tolerances import SHARDED_FLOAT32

from seqjax import layers
from seqjax.models import Backbone

D_MODEL, BATCH, LENGTH = 16, 2, 16
CHUNK = 2
# Row 0 starts a segment on a shard boundary (8) and inside a shard (5); row 1 carries its
# state across every boundary.
SEGMENT_STARTS = ((0, 5, 8), (0,))
NO_SEQUENCE_PARALLEL_FORM = [
    ("elman", {}),
    ("gru", {}),
    ("lstm", {}),
    ("slstm", {}),
    ("s4d", dict(mode="convolution")),
]
DEFAULT_CASES = [(name, SMALL_OPTIONS.get(name, {})) for name in layers.available()]
SPLIT_CASES = [case for case in DEFAULT_CASES if case not in NO_SEQUENCE_PARALLEL_FORM]


def case_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def with_small_chunks(name, options):
    if "chunk_size" in layers.mixer_options(name):
        return {"chunk_size": CHUNK, **options}
    return options


@pytest.fixture(scope="module")
def mesh():
    return data_and_sequence_mesh()


def two_pieces(graphdef, params, x, segment_starts):
    """The mixer's outputs [B, 2T, D] over x, fed as two pieces of T steps with the state
    passed between them (segment starts in the first), and its final state."""
    mixer = nnx.merge(graphdef, params)
    first, state = mixer(x[:, :LENGTH], segment_starts=segment_starts)
    second, state = mixer(x[:, LENGTH:], state=state)
    return jnp.concatenate([first, second], axis=1), state


@functools.partial(
    jax.jit, static_argnums=(0, 1), compiler_options={"xla_backend_optimization_level": 0}
)
def split_and_whole(split_graphdef, graphdef, params, x, segment_starts):
    return (
        two_pieces(split_graphdef, params, x, segment_starts),
        two_pieces(graphdef, params, x, segment_starts),
    )


@pytest.mark.parametrize("name, options", SPLIT_CASES, ids=map(case_id, SPLIT_CASES))
def test_a_split_mixer_equals_the_whole_sequence(mesh, name, options):
    options = with_small_chunks(name, options)
    graphdef, params = nnx.split(layers.create(name, d_model=D_MODEL, rngs=nnx.Rngs(0), **options))
    split_graphdef = nnx.graphdef(
        layers.create(name, d_model=D_MODEL, rngs=nnx.Rngs(0), sequence_split=SPLIT, **options)
    )
    x = jax.random.normal(jax.random.key(1), (BATCH, 2 * LENGTH, D_MODEL))
    starts = np.zeros((BATCH, LENGTH), bool)
    for row, firsts in enumerate(SEGMENT_STARTS):
        starts[row, list(firsts)] = True
    with jax.set_mesh(mesh):
        with recording_splits() as calls:
            jaxpr = jax.make_jaxpr(functools.partial(two_pieces, split_graphdef))(params, x, starts)
        split, whole = split_and_whole(split_graphdef, graphdef, params, x, starts)
    assert calls, f"{name} calls no op over time"
    assert all(ran_split for _, ran_split in calls), f"ops run over the whole sequence: {calls}"
    assert not loops_outside_shards(jaxpr.jaxpr), "a loop over the whole sequence"
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, **SHARDED_FLOAT32),
        jax.device_get(split),
        jax.device_get(whole),
    )


@pytest.mark.parametrize(
    "name, options", NO_SEQUENCE_PARALLEL_FORM, ids=map(case_id, NO_SEQUENCE_PARALLEL_FORM)
)
def test_the_backbone_refuses_a_mixer_that_cannot_run_split(name, options):
    with pytest.raises(ValueError, match=rf"mixer '{name}'.* cannot run sequence-parallel"):
        Backbone(
            d_model=D_MODEL,
            num_layers=1,
            pattern=name,
            vocab_size=8,
            mixer_options={name: options},
            sequence_split=SPLIT,
            rngs=nnx.Rngs(0),
        )
