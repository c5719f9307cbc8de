"""Sequence parallelism: every op that scans over time, given ``sequence_split`` over the
`sequence` axis of a (data=2, sequence=4) mesh, equals the unsplit op on outputs, final
states and the gradients of every input (initial state included), with segment resets, one
of them on a shard boundary: linear_recurrence (both directions), gated_linear_attention (a
decay per head and per key), delta_rule (with and without decay, beta up to 2),
generalized_delta_rule, selective_scan (both forms), mlstm, causal_conv1d and
softmax_attention (causal, window, segment ids, GQA, forget gate). Each shard runs the
implementation asked for; one that cannot run is an error, never a substitute; so is an op
that cannot run split. A split over an axis of one device runs the whole op."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import outputs_and_grads
from sequence_split import SPLIT, auto_mesh, data_and_sequence_mesh
from test_mlstm import flat_mlstm
from tolerances import SHARDED_FLOAT32

from seqjax.ops.attention import softmax_attention
from seqjax.ops.cells import elman_cell, run_cell
from seqjax.ops.conv import causal_conv1d
from seqjax.ops.delta_rule import delta_rule, generalized_delta_rule
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.selective_scan import selective_scan
from seqjax.ops.sequence_parallel import SequenceSplit

BATCH, LENGTH, HEADS, KEY, VALUE = 4, 32, 2, 4, 3


@pytest.fixture(scope="module")
def mesh():
    return data_and_sequence_mesh()


def assert_split_equals_whole(op, arrays, mesh, **options):
    expected = outputs_and_grads(op, arrays, **options)
    split = functools.partial(op, sequence_split=SPLIT)
    with jax.set_mesh(mesh):
        actual = outputs_and_grads(split, arrays, **options)
        jaxpr = str(jax.make_jaxpr(functools.partial(split, **options))(**arrays))
    assert "shard_map" in jaxpr  # the split form ran, not the whole op
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **SHARDED_FLOAT32), actual, expected)
    return jaxpr


def segment_starts(rng):
    starts = rng.random((BATCH, LENGTH)) < 0.1
    starts[0, 8] = True  # a reset on a shard boundary
    starts[1] = False  # a row with no reset: the state crosses every boundary
    return starts


def normal(rng, *shape, scale=1.0):
    return (scale * rng.normal(size=shape)).astype(np.float32)


def head_arrays(rng, *, unit_keys=False):
    k = normal(rng, BATCH, LENGTH, HEADS, KEY)
    if unit_keys:
        k /= np.linalg.norm(k, axis=-1, keepdims=True)
    return dict(
        q=normal(rng, BATCH, LENGTH, HEADS, KEY),
        k=k,
        v=normal(rng, BATCH, LENGTH, HEADS, VALUE),
        initial_state=normal(rng, BATCH, HEADS, KEY, VALUE),
        segment_starts=segment_starts(rng),
    )


def log_decay(rng, *shape):
    return np.log(rng.uniform(0.7, 1.0, shape)).astype(np.float32)


@pytest.mark.parametrize("reverse", [False, True])
def test_split_linear_recurrence_equals_the_whole_sequence(mesh, reverse):
    rng = np.random.default_rng(0)
    arrays = dict(
        a=rng.uniform(0.5, 1.0, (BATCH, LENGTH, 3)).astype(np.float32),
        x=normal(rng, BATCH, LENGTH, 3),
        initial_state=normal(rng, BATCH, 3),
        segment_starts=segment_starts(rng),
    )
    assert_split_equals_whole(linear_recurrence, arrays, mesh, reverse=reverse)


@pytest.mark.parametrize("decay", ["head", "key"])
def test_split_gated_linear_attention_equals_the_whole_sequence(mesh, decay):
    rng = np.random.default_rng(1)
    shape = (BATCH, LENGTH, HEADS) + ((KEY,) if decay == "key" else ())
    arrays = dict(head_arrays(rng), log_decay=log_decay(rng, *shape))
    jaxpr = assert_split_equals_whole(
        gated_linear_attention, arrays, mesh, scale=0.5, implementation="reference"
    )
    # Each shard runs the form asked for: the reference's scan over its 8 steps.
    assert "length=8" in jaxpr


@pytest.mark.parametrize(
    "gated, implementation", [(False, "chunked"), (True, "reference")], ids=["chunked", "gated"]
)
def test_split_delta_rule_equals_the_whole_sequence(mesh, gated, implementation):
    rng = np.random.default_rng(2)
    arrays = dict(
        head_arrays(rng, unit_keys=True),
        beta=rng.uniform(0.0, 2.0, (BATCH, LENGTH, HEADS)).astype(np.float32),
        log_decay=log_decay(rng, BATCH, LENGTH, HEADS) if gated else None,
    )
    assert_split_equals_whole(
        delta_rule, arrays, mesh, scale=0.5, chunk_size=4, implementation=implementation
    )


def test_split_generalized_delta_rule_equals_the_whole_sequence(mesh):
    rng = np.random.default_rng(3)
    arrays = head_arrays(rng, unit_keys=True)
    removal_key = normal(rng, BATCH, LENGTH, HEADS, KEY)
    removal_key /= np.linalg.norm(removal_key, axis=-1, keepdims=True)
    arrays = dict(
        arrays,
        removal_key=removal_key,
        removal_direction=removal_key * rng.uniform(0, 1, (BATCH, LENGTH, HEADS, 1)),
        log_decay=log_decay(rng, BATCH, LENGTH, HEADS, KEY),
    )
    assert_split_equals_whole(generalized_delta_rule, arrays, mesh, implementation="reference")


@pytest.mark.parametrize("implementation", ["reference", "chunked"])
def test_split_selective_scan_equals_the_whole_sequence(mesh, implementation):
    rng = np.random.default_rng(7)
    width, size = 3, 2
    arrays = dict(
        u=normal(rng, BATCH, LENGTH, width),
        delta=rng.uniform(0.05, 1.0, (BATCH, LENGTH, width)).astype(np.float32),
        state_matrix=-rng.uniform(0.5, 2.0, (width, size)).astype(np.float32),
        input_matrix=normal(rng, BATCH, LENGTH, size),
        output_matrix=normal(rng, BATCH, LENGTH, size),
        skip=normal(rng, width),
        initial_state=normal(rng, BATCH, width, size),
        segment_starts=segment_starts(rng),
    )
    assert_split_equals_whole(
        selective_scan, arrays, mesh, implementation=implementation, chunk_size=4
    )


def test_split_mlstm_equals_the_whole_sequence(mesh):
    rng = np.random.default_rng(4)
    arrays = dict(
        head_arrays(rng),
        # Input gates that raise the stabilizer inside some shards and not in others.
        input_gate=rng.uniform(-6.0, 3.0, (BATCH, LENGTH, HEADS)).astype(np.float32),
        forget_gate=rng.normal(2.0, 2.0, (BATCH, LENGTH, HEADS)).astype(np.float32),
        cell=normal(rng, BATCH, HEADS, KEY, VALUE),
        normalizer=normal(rng, BATCH, HEADS, KEY),
        stabilizer=normal(rng, BATCH, HEADS, scale=3.0),
    )
    del arrays["initial_state"]
    assert_split_equals_whole(flat_mlstm, arrays, mesh, chunk_size=4, implementation="chunked")


def test_split_causal_conv_equals_the_whole_sequence(mesh):
    rng = np.random.default_rng(5)
    width, channels = 4, 3
    arrays = dict(
        x=normal(rng, BATCH, LENGTH, channels),
        kernel=normal(rng, width, channels),
        bias=normal(rng, channels),
        initial_state=normal(rng, BATCH, width - 1, channels),
        segment_starts=segment_starts(rng),
    )
    assert_split_equals_whole(causal_conv1d, arrays, mesh)


def attention_with_a_final(**arguments):
    """softmax_attention's output, with an empty final state for ``outputs_and_grads``."""
    return softmax_attention(**arguments), jnp.zeros(())


@pytest.mark.parametrize(
    "options, forget",
    [
        (dict(implementation="reference"), 30.0),
        (dict(implementation="chunked", block_size=4, window=5), 30.0),
        (dict(implementation="reference", causal=False), 1.0),
    ],
    ids=["causal-reference", "window-chunked", "bidirectional"],
)
def test_split_softmax_attention_equals_the_whole_sequence(mesh, options, forget):
    """Query heads 4 over key/value heads 2, segment ids with a start on a shard boundary,
    and forget gates log f in [-forget, 0]: strong ones where causal, so that the cumulative
    gates F reach -500 and F_i - F_j must be formed from the same sums as in the whole op."""
    rng = np.random.default_rng(6)
    segments = np.cumsum(segment_starts(rng), axis=1).astype(np.int32)
    arrays = dict(
        q=normal(rng, BATCH, LENGTH, 2 * HEADS, KEY),
        k=normal(rng, BATCH, LENGTH, HEADS, KEY),
        v=normal(rng, BATCH, LENGTH, HEADS, VALUE),
        q_segment_ids=segments,
        kv_segment_ids=segments,
        log_forget=-rng.uniform(0.0, forget, (BATCH, LENGTH, 2 * HEADS)).astype(np.float32),
    )
    assert_split_equals_whole(attention_with_a_final, arrays, mesh, **options)


def test_a_split_over_an_axis_of_one_device_runs_the_whole_op():
    a = x = np.ones((BATCH, 8, 2), np.float32)
    split = functools.partial(linear_recurrence, sequence_split=SequenceSplit("sequence"))
    whole = functools.partial(linear_recurrence, sequence_split=SequenceSplit("data"))
    with jax.set_mesh(auto_mesh((8, 1), ("sequence", "data"))):
        assert "shard_map" in str(jax.make_jaxpr(split)(a, x))
        assert "shard_map" not in str(jax.make_jaxpr(whole)(a, x))


def test_an_implementation_that_cannot_run_is_an_error_in_a_split(mesh):
    """On CPU 'pallas' cannot run: split or not, it is an error, never the chunked form."""
    rng = np.random.default_rng(7)
    arrays = head_arrays(rng)
    with jax.set_mesh(mesh):
        for op, extra in (
            (gated_linear_attention, {}),
            (delta_rule, {"beta": np.ones((BATCH, LENGTH, HEADS), np.float32)}),
        ):
            with pytest.raises(ValueError, match="'pallas' cannot run"):
                jax.eval_shape(
                    functools.partial(op, sequence_split=SPLIT, implementation="pallas"),
                    **arrays,
                    **extra,
                )
        a = x = np.ones((BATCH, LENGTH, 2), np.float32)
        with pytest.raises(ValueError, match="'pallas' cannot run"):
            linear_recurrence(a, x, sequence_split=SPLIT, implementation="pallas")


def test_what_cannot_run_split_is_an_error(mesh):
    state = np.zeros((BATCH, 3), np.float32)
    kernel = np.eye(3, dtype=np.float32)
    with jax.set_mesh(mesh):
        with pytest.raises(ValueError, match="run_cell: a nonlinear recurrent cell cannot run"):
            run_cell(
                functools.partial(elman_cell, kernel), np.ones((BATCH, LENGTH, 3), np.float32),
                state, sequence_split=SPLIT,
            )  # fmt: skip
        with pytest.raises(ValueError, match=r"W - 1 = 3 steps per shard, got T / 4 = 2"):
            causal_conv1d(np.ones((BATCH, 8, 3)), np.ones((4, 3)), sequence_split=SPLIT)


def test_a_length_the_sequence_axis_does_not_divide_is_an_error(mesh):
    a = x = np.ones((BATCH, 30, 2), np.float32)
    with jax.set_mesh(mesh), pytest.raises(ValueError, match=r"length \(30\).*'sequence' \(4\)"):
        jax.jit(functools.partial(linear_recurrence, sequence_split=SPLIT))(a, x)


def test_a_split_without_that_mesh_axis_is_an_error():
    a = x = np.ones((BATCH, 8, 2), np.float32)
    with pytest.raises(ValueError, match="needs a mesh with a 'sequence' axis"):
        jax.jit(functools.partial(linear_recurrence, sequence_split=SPLIT))(a, x)
