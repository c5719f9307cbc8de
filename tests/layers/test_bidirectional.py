"""Every registered mixer built with ``bidirectional=True`` (layers/bidirectional.py):

- a packed batch, whose rows start their segments at different positions, equals its
  segments run separately;
- a right-padded batch of rows with different lengths (NaN in the padding) equals the
  unpadded examples run one by one, with packing inside a padded row too; padding outputs
  are zeros;
- the output at t depends on every position of its own segment, earlier and later, and on
  nothing outside it: the gradient of each output position is nonzero at every input of its
  segment and exactly zero elsewhere (padding included);

and, on one mixer, each merge with separate and shared weights equals the merge written out
from the module's own parts; bad arguments and a state are refused by name.

Each mixer compiles once: ``observe`` computes in one jitted call every array the checks
compare (the segments alone are grouped into one call per length).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_testing import MIXER_CASES, assert_trees_close

from seqjax import layers
from seqjax.layers.bidirectional import Bidirectional, reversal_index, reverse_segments

D_MODEL, LENGTH = 16, 12
# (first position of each segment, length of the row's real tokens): the packed rows, then
# the padded rows (rows of a right-padded batch, the last packed as well).
PACKED = (((0, 4, 9), LENGTH), ((0, 7), LENGTH))
PADDED = (((0,), LENGTH), ((0,), 7), ((0,), 4), ((0, 5), 8))
# A mixer that reads only its neighbours within this distance (a token shift), not its
# whole segment.
REACH = {"rwkv7_channel_mix": 1}
CASES = MIXER_CASES[: len(layers.available())]  # one per registered mixer


def starts_and_mask(rows):
    """segment_starts and mask [len(rows), LENGTH] of (firsts, length) rows."""
    starts = np.zeros((len(rows), LENGTH), bool)
    mask = np.zeros((len(rows), LENGTH), bool)
    for row, (firsts, length) in enumerate(rows):
        starts[row, list(firsts)] = True
        mask[row, :length] = True
    return starts, mask


def segments(rows):
    """(row, start, end) of every segment of real tokens."""
    return [
        (row, start, end)
        for row, (firsts, length) in enumerate(rows)
        for start, end in zip(firsts, (*firsts[1:], length), strict=True)
    ]


def segment_ids(rows):
    """[len(rows), LENGTH]: each real position's segment number, -1 at padding."""
    ids = np.full((len(rows), LENGTH), -1)
    for i, (row, start, end) in enumerate(segments(rows)):
        ids[row, start:end] = i
    return ids


def alone_by_length(x_of, rows):
    """{length: [segments of that length]} with (row, start) of each, and the batches that
    run them alone."""
    grouped = {}
    for row, start, end in segments(rows):
        grouped.setdefault(end - start, []).append((row, start))
    return grouped, {
        length: jnp.stack([x_of[row, start : start + length] for row, start in places])
        for length, places in grouped.items()
    }


def observe(mixer, x_packed, x_padded):
    """The packed rows (segment starts only) and the padded rows (starts and a mask), every
    segment of both run alone, and the gradient of every output position of the padded rows
    (Σ_d u_d y_{b,t,d} with a fixed random u, so a norm over D does not hide it)."""
    packed_starts, _ = starts_and_mask(PACKED)
    padded_starts, padded_mask = starts_and_mask(PADDED)
    packed, packed_state = mixer(x_packed, segment_starts=jnp.asarray(packed_starts))

    def padded_call(x):
        y, _ = mixer(x, segment_starts=jnp.asarray(padded_starts), mask=jnp.asarray(padded_mask))
        return y

    padded, pullback = jax.vjp(padded_call, x_padded)
    u = jax.random.normal(jax.random.key(2), (D_MODEL,))
    cotangents = jnp.eye(len(PADDED) * LENGTH).reshape(-1, len(PADDED), LENGTH, 1) * u
    # One pullback at a time: a vmapped pullback of the chunked ops differs under jit.
    (gradients,) = jax.lax.map(pullback, cotangents)
    alone = {}
    for name, rows, x in (("packed", PACKED, x_packed), ("padded", PADDED, x_padded)):
        _, batches = alone_by_length(x, rows)
        alone[name] = {length: mixer(batch)[0] for length, batch in batches.items()}
    reach = jnp.abs(gradients).sum(-1).reshape(len(PADDED), LENGTH, len(PADDED), LENGTH)
    return dict(
        packed=packed,
        packed_state=packed_state,
        padded=padded,
        alone=alone,
        reach=reach,
    )


@functools.partial(
    jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0}
)
def observe_compiled(graphdef, params, x_packed, x_padded):
    return observe(nnx.merge(graphdef, params), x_packed, x_padded)


def inputs():
    """x for the packed rows and for the padded rows (NaN in the padding)."""
    x_packed, x_padded = (
        jax.random.normal(jax.random.key(seed), (len(rows), LENGTH, D_MODEL))
        for seed, rows in ((0, PACKED), (1, PADDED))
    )
    _, mask = starts_and_mask(PADDED)
    return x_packed, jnp.where(mask[..., None], x_padded, jnp.nan)


@functools.cache
def observations(index):
    name, options = CASES[index]
    mixer = layers.create(name, d_model=D_MODEL, rngs=nnx.Rngs(0), bidirectional=True, **options)
    seen = observe_compiled(*nnx.split(mixer), *inputs())
    return jax.tree.map(np.asarray, seen)


parametrize_cases = pytest.mark.parametrize(
    "index", range(len(CASES)), ids=[name for name, _ in CASES]
)


def test_every_registered_mixer_is_a_case():
    assert [name for name, _ in CASES] == list(layers.available())


def check_equals_alone(seen, which, rows):
    x = dict(zip(("packed", "padded"), inputs(), strict=True))[which]
    grouped, _ = alone_by_length(x, rows)
    for length, places in grouped.items():
        for i, (row, start) in enumerate(places):
            assert_trees_close(
                seen[which][row, start : start + length], seen["alone"][which][length][i]
            )


@parametrize_cases
def test_packed_rows_equal_their_segments_run_separately(index):
    seen = observations(index)
    assert seen["packed_state"] is None
    check_equals_alone(seen, "packed", PACKED)


@parametrize_cases
def test_padded_rows_equal_the_examples_run_one_by_one_with_zeros_at_padding(index):
    seen = observations(index)
    check_equals_alone(seen, "padded", PADDED)
    _, mask = starts_and_mask(PADDED)
    assert np.all(seen["padded"][~mask] == 0.0)


@parametrize_cases
def test_each_output_depends_on_its_whole_segment_and_nothing_else(index):
    reach = observations(index)["reach"]  # [b, t, b', t']: |∂y_{b,t} / ∂x_{b',t'}|
    ids = segment_ids(PADDED).reshape(-1)
    same = (ids[:, None] == ids[None, :]) & (ids[:, None] >= 0)
    distance = CASES[index][0] in REACH and REACH[CASES[index][0]]
    if distance:
        position = np.tile(np.arange(LENGTH), len(PADDED))
        same &= np.abs(position[:, None] - position[None, :]) <= distance
    reach = reach.reshape(len(ids), len(ids))
    outside = np.argwhere((reach != 0.0) & ~same)
    assert outside.size == 0, f"outputs read outside their segment at (out, in) {outside[:5]}"
    missing = np.argwhere((reach == 0.0) & same)
    assert missing.size == 0, f"outputs miss inputs of their segment at (out, in) {missing[:5]}"


MERGE_MIXER = "gru"


@functools.cache
def merged(merge, shared_weights):
    mixer = layers.create(
        MERGE_MIXER,
        d_model=D_MODEL,
        rngs=nnx.Rngs(0),
        bidirectional=True,
        merge=merge,
        shared_weights=shared_weights,
    )
    return mixer


@nnx.jit
def by_parts(mixer, x, segment_starts):
    """The module's output, and its merge written out from its forward and backward mixers."""
    y, _ = mixer(x, segment_starts=segment_starts)
    index = reversal_index(segment_starts)
    backward_mixer = mixer.forward if mixer.backward is None else mixer.backward
    f, _ = mixer.forward(x, segment_starts=segment_starts)
    b, _ = backward_mixer(reverse_segments(x, index), segment_starts=segment_starts)
    b = reverse_segments(b, index)
    if mixer.merge == "sum":
        expected = f + b
    elif mixer.merge == "concat":
        w = mixer.projection.kernel[...]
        expected = f @ w[:D_MODEL] + b @ w[D_MODEL:]
    else:
        w, c = mixer.gate.kernel[...], mixer.gate.bias[...]
        g = jax.nn.sigmoid(f @ w[:D_MODEL] + b @ w[D_MODEL:] + c)
        expected = g * f + (1 - g) * b
    return y, expected


@pytest.mark.parametrize("shared_weights", [False, True])
@pytest.mark.parametrize("merge", ["concat", "sum", "gate"])
def test_each_merge_with_separate_and_shared_weights(merge, shared_weights):
    mixer = merged(merge, shared_weights)
    assert isinstance(mixer, Bidirectional) and mixer.shared_weights == shared_weights
    one = nnx.state(layers.create(MERGE_MIXER, d_model=D_MODEL, rngs=nnx.Rngs(0)), nnx.Param)
    merge_parameters = {"concat": 2 * D_MODEL**2, "sum": 0, "gate": 2 * D_MODEL**2 + D_MODEL}
    count = sum(p.size for p in jax.tree.leaves(nnx.state(mixer, nnx.Param)))
    directions = 1 if shared_weights else 2
    one_count = sum(p.size for p in jax.tree.leaves(one))
    assert count == directions * one_count + merge_parameters[merge]
    starts, _ = starts_and_mask(PACKED)
    y, expected = by_parts(mixer, inputs()[0], jnp.asarray(starts))
    assert_trees_close(y, expected)


def test_the_two_directions_have_their_own_weights():
    """Every parameter that two seeds initialize differently differs between the two."""

    def differ(a, b):
        a, b = (nnx.state(mixer, nnx.Param) for mixer in (a, b))
        return jax.tree.leaves(jax.tree.map(lambda p, q: bool(np.any(p != q)), a, b))

    mixer = merged("concat", False)
    seeded = [layers.create(MERGE_MIXER, d_model=D_MODEL, rngs=nnx.Rngs(i)) for i in (0, 1)]
    random = differ(*seeded)
    assert any(random)
    assert differ(mixer.forward, mixer.backward) == random


def test_bad_arguments_are_refused_by_name():
    def create(**arguments):
        return layers.create(MERGE_MIXER, d_model=D_MODEL, rngs=nnx.Rngs(0), **arguments)

    refused = [
        (dict(bidirectional=True, merge="max"), "merge must be one of 'concat', 'sum', 'gate'"),
        (dict(bidirectional="yes"), "bidirectional must be bool, got 'yes'"),
        (dict(bidirectional=True, shared_weights=1), "shared_weights must be bool or None"),
        (dict(merge="sum"), "merge='sum' given, but only a bidirectional mixer"),
        (dict(shared_weights=True), "shared_weights=True given, but only a bidirectional"),
    ]
    for arguments, message in refused:
        with pytest.raises(ValueError, match=rf"mixer '{MERGE_MIXER}': {message}"):
            create(**arguments)


def test_a_state_and_bad_masks_are_refused_by_name():
    mixer = merged("sum", True)
    x = jnp.ones((2, LENGTH, D_MODEL))
    where = rf"mixer '{MERGE_MIXER}' \(bidirectional\)"
    step_by_step = "cannot run step by step"
    with pytest.raises(
        ValueError, match=rf"{where}: got a state; a bidirectional mixer {step_by_step}"
    ):
        mixer(x, state=mixer.forward.init_state(2))
    with pytest.raises(ValueError, match=rf"{where}: a bidirectional mixer {step_by_step}"):
        mixer.init_state(2)
    for mask in (jnp.ones((2, LENGTH), jnp.int32), jnp.ones((2, LENGTH + 1), bool)):
        with pytest.raises(ValueError, match=rf"{where}: mask must be boolean \[B, T\]"):
            mixer(x, mask=mask)
    with pytest.raises(ValueError, match=rf"mixer '{MERGE_MIXER}': x must be floating point"):
        mixer(x.astype(jnp.int32))
