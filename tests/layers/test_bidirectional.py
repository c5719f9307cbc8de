"""Every registered mixer built with ``bidirectional=True`` (layers/bidirectional.py):

- a packed batch, whose rows start their segments at different positions, equals its
  segments run separately;
- a right-padded batch (``mask``), packed as well, equals its examples run one by one;
  padding outputs are zeros and NaN in the padding inputs is harmless;
- the output at t depends on its whole segment, earlier and later positions, and on nothing
  outside it, checked by gradient: ∂y_t/∂x_s is exactly zero wherever s is not in t's
  segment (another segment, another row, padding), the criterion of the causal invariants
  (test_mixer_invariants.py: structural zeros, not small numbers); every input of a segment
  reaches some output of it, and its first and last outputs reach its last and first inputs.

The unit tests check the segment reversal (reversal_index, reverse_segments,
padding_segment_starts) on index arrays worked out by hand, each merge with shared and
separate weights against the merge written out from the module's parts, and the refusals.

Each case compiles once: ``observe`` computes in one jitted call every array the checks
compare. The cases share the two directions' weights (one mixer traced once per call);
``SEPARATE`` repeats them for two mixers with a mixer per direction.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_testing import SMALL_OPTIONS, assert_trees_close

from seqjax import layers
from seqjax.layers.bidirectional import (
    Bidirectional,
    padding_segment_starts,
    reversal_index,
    reverse_segments,
)

D_MODEL, LENGTH = 8, 9
CHUNK = 4  # chunk_size of the cases: LENGTH spans two chunks and part of a third
# Each row's segments as (first, end) and its real length: row 0 packed; row 1 packed and
# right-padded ([6, 9) is padding). The segments [3, 9) and [3, 6) cross chunk boundaries.
ROWS = (((0, 3), (3, 9)), ((0, 3), (3, 6)))
LENGTHS = (9, 6)
# A mixer that reads only its neighbours within this distance (a token shift), not its
# whole segment.
REACH = {"rwkv7_channel_mix": 1}
# Options that keep a mixer small at D = 8 where its defaults do not fit (or are large).
SMALL = {"hgrn2": dict(expand_ratio=4)}


def case_options(name):
    options = {**SMALL_OPTIONS.get(name, {}), **SMALL.get(name, {})}
    if "chunk_size" in layers.mixer_options(name):
        options["chunk_size"] = CHUNK
    return options


# (name, options, shared_weights): every registered mixer with shared weights, then two
# with a mixer per direction (a recurrent cell and a chunked matrix-state op).
SEPARATE = ("gru", "gla")
CASES = [(name, case_options(name), True) for name in layers.available()] + [
    (name, case_options(name), False) for name in SEPARATE
]


def case_id(case):
    name, _, shared = case
    return name if shared else f"{name}-separate"


def segment_starts_and_mask():
    starts = np.zeros((len(ROWS), LENGTH), bool)
    mask = np.zeros((len(ROWS), LENGTH), bool)
    for row, segments in enumerate(ROWS):
        starts[row, [first for first, _ in segments]] = True
        mask[row, : LENGTHS[row]] = True
    return starts, mask


def segment_ids():
    """[B, T]: each real position's segment number (over the batch), -1 at padding."""
    ids = np.full((len(ROWS), LENGTH), -1)
    for i, (row, first, end) in enumerate(segments()):
        ids[row, first:end] = i
    return ids


def segments():
    """(row, first, end) of every segment of real tokens."""
    return [(row, first, end) for row, spans in enumerate(ROWS) for first, end in spans]


def by_length():
    """{length: [(row, first) of each segment of that length]}."""
    grouped = {}
    for row, first, end in segments():
        grouped.setdefault(end - first, []).append((row, first))
    return grouped


def inputs():
    """x [B, T, D] with NaN at the padding."""
    x = jax.random.normal(jax.random.key(1), (len(ROWS), LENGTH, D_MODEL))
    _, mask = segment_starts_and_mask()
    return jnp.where(mask[..., None], x, jnp.nan)


def observe(mixer, x):
    """From x [B, T, D] (NaN at padding):

    1. x packed (segment starts, no mask), with the padding set to 0 and starting a
       segment of its own (without a mask it is a segment like any other);
    2. x packed and padded (segment starts and mask), and the gradient of every output
       position, [B, T, B, T] = |∂(u_{b,t} · y_{b,t}) / ∂x_{b',t'}| summed over D, with a
       fixed random u, one pullback at a time (jax.lax.map; a vmapped pullback sums in
       another order, which changes rounding, and gives the same zeros, now that no op
       forms a segment's decays by cancelling another's: tests/ops/test_packed_segments.py);
    3. every segment alone, one call per length.
    """
    starts, mask = (jnp.asarray(a) for a in segment_starts_and_mask())
    padding_starts = np.zeros((len(ROWS), LENGTH + 1), bool)
    padding_starts[np.arange(len(ROWS)), LENGTHS] = True
    packed, packed_state = mixer(
        jnp.where(mask[..., None], x, 0.0), segment_starts=starts | padding_starts[:, :LENGTH]
    )

    def padded_call(x):
        return mixer(x, segment_starts=starts, mask=mask)[0]

    padded, pullback = jax.vjp(padded_call, x)
    u = jax.random.normal(jax.random.key(2), padded.shape)
    positions = jnp.eye(len(ROWS) * LENGTH).reshape(-1, len(ROWS), LENGTH, 1)
    (gradients,) = jax.lax.map(pullback, positions * u)
    reach = jnp.abs(gradients).sum(-1).reshape(len(ROWS), LENGTH, len(ROWS), LENGTH)
    alone = {
        length: mixer(jnp.stack([x[row, first : first + length] for row, first in places]))[0]
        for length, places in by_length().items()
    }
    return dict(packed=packed, packed_state=packed_state, padded=padded, reach=reach, alone=alone)


# The arrays are tiny: compiling without LLVM's optimizations takes about half the time.
@functools.partial(
    jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0}
)
def observe_compiled(graphdef, params, x):
    return observe(nnx.merge(graphdef, params), x)


@functools.cache
def mixer_of(index):
    name, options, shared_weights = CASES[index]
    return layers.create(
        name,
        d_model=D_MODEL,
        rngs=nnx.Rngs(0),
        bidirectional=True,
        shared_weights=shared_weights,
        **options,
    )


@functools.cache
def observations(index):
    return jax.tree.map(np.asarray, observe_compiled(*nnx.split(mixer_of(index)), inputs()))


parametrize_cases = pytest.mark.parametrize(
    "index", range(len(CASES)), ids=[case_id(case) for case in CASES]
)


def test_every_registered_mixer_is_a_case():
    assert [name for name, _, shared in CASES if shared] == list(layers.available())


def check_packed_rows_equal_their_segments_run_separately(index, seen):
    assert seen["packed_state"] is None
    assert seen["packed"].shape == (len(ROWS), LENGTH, D_MODEL)
    for length, places in by_length().items():
        for i, (row, first) in enumerate(places):
            assert_trees_close(
                seen["packed"][row, first : first + length], seen["alone"][length][i]
            )


def check_padded_rows_equal_their_examples_run_one_by_one_with_zeros_at_padding(index, seen):
    for length, places in by_length().items():
        for i, (row, first) in enumerate(places):
            assert_trees_close(
                seen["padded"][row, first : first + length], seen["alone"][length][i]
            )
    _, mask = segment_starts_and_mask()
    assert np.all(seen["padded"][~mask] == 0.0), "padding outputs are not zero"


def check_each_output_depends_on_its_whole_segment_and_nothing_else(index, seen):
    reach = seen["reach"]  # [b, t, b', t']: |∂y_{b,t} / ∂x_{b',t'}|
    ids = segment_ids()
    same = (ids[:, :, None, None] == ids[None, None]) & (ids[:, :, None, None] >= 0)
    outside = np.argwhere((reach != 0.0) & ~same)
    assert outside.size == 0, f"outputs read outside their segment at (b, t, b', t') {outside[:5]}"
    distance = REACH.get(CASES[index][0], LENGTH)
    for row, first, end in segments():
        block = reach[row, first:end, row, first:end]  # [t, t'] within the segment
        assert np.all(block.sum(0) != 0.0), f"an input of segment {row, first, end} is unread"
        last = end - 1
        assert block[0, min(distance, last - first)] != 0.0, "the first output reads no later"
        assert block[-1, max(last - first - distance, 0)] != 0.0, "the last reads no earlier"


CHECKS = (
    check_packed_rows_equal_their_segments_run_separately,
    check_padded_rows_equal_their_examples_run_one_by_one_with_zeros_at_padding,
    check_each_output_depends_on_its_whole_segment_and_nothing_else,
)


@parametrize_cases
def test_packing_padding_and_dependence_on_the_segment_alone(index):
    """Every check of a case in one test, so that pytest-xdist compiles the case on one
    worker only; each check that fails is reported."""
    seen = observations(index)
    failures = []
    for check in CHECKS:
        try:
            check(index, seen)
        except AssertionError as error:
            failures.append(f"{check.__name__.removeprefix('check_')}: {error}")
    assert not failures, "\n".join(failures)


# The merges and weights, on one small mixer.
MERGE_MIXER = "elman"


@functools.cache
def merged(merge, shared_weights):
    return layers.create(
        MERGE_MIXER,
        d_model=D_MODEL,
        rngs=nnx.Rngs(0),
        bidirectional=True,
        merge=merge,
        shared_weights=shared_weights,
    )


@nnx.jit
def by_parts(mixer, x, segment_starts):
    """The module's output, and its merge written out from its two directions' mixers."""
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
    assert mixer.merge == merge
    one = layers.create(MERGE_MIXER, d_model=D_MODEL, rngs=nnx.Rngs(0))

    def count(module):
        return sum(p.size for p in jax.tree.leaves(nnx.state(module, nnx.Param)))

    merge_parameters = {"concat": 2 * D_MODEL**2, "sum": 0, "gate": 2 * D_MODEL**2 + D_MODEL}
    directions = 1 if shared_weights else 2
    assert count(mixer) == directions * count(one) + merge_parameters[merge]
    starts, _ = segment_starts_and_mask()
    x = jax.random.normal(jax.random.key(0), (len(ROWS), LENGTH, D_MODEL))
    y, expected = by_parts(mixer, x, jnp.asarray(starts))
    assert_trees_close(y, expected)


def test_a_mask_alone_makes_padding_a_segment_and_numpy_arrays_are_taken():
    """A mask without segment starts (the padded row then equals its example alone), and
    NumPy segment starts and masks give what the same jax arrays give."""
    mixer = merged("sum", True)
    x = jax.random.normal(jax.random.key(3), (2, LENGTH, D_MODEL))
    starts, mask = segment_starts_and_mask()
    y, _ = mixer(x, mask=jnp.asarray(mask))
    assert_trees_close(y[1, : LENGTHS[1]], mixer(x[1:, : LENGTHS[1]])[0][0])
    assert np.all(y[1, LENGTHS[1] :] == 0.0)
    assert_trees_close(y, mixer(x, mask=mask)[0])
    with_starts, _ = mixer(x, segment_starts=jnp.asarray(starts))
    assert_trees_close(mixer(x, segment_starts=starts)[0], with_starts)


def test_the_default_merge_is_concat_with_separate_weights():
    mixer = layers.create(MERGE_MIXER, d_model=D_MODEL, rngs=nnx.Rngs(0), bidirectional=True)
    assert mixer.merge == "concat" and not mixer.shared_weights


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


def test_reversal_index_reverses_each_segment_within_itself():
    starts = np.array(
        [
            [1, 0, 0, 1, 0, 0, 0, 0],  # [0, 3), [3, 8)
            [0, 0, 1, 0, 0, 0, 1, 0],  # position 0 starts one anyway: [0, 2), [2, 6), [6, 8)
            [0, 0, 0, 0, 0, 0, 0, 0],  # the whole row
            [1, 1, 1, 1, 1, 1, 1, 1],  # every token alone
            [1, 0, 0, 0, 0, 0, 0, 1],  # [0, 7), [7, 8)
        ],
        bool,
    )
    expected = [
        [2, 1, 0, 7, 6, 5, 4, 3],
        [1, 0, 5, 4, 3, 2, 7, 6],
        [7, 6, 5, 4, 3, 2, 1, 0],
        [0, 1, 2, 3, 4, 5, 6, 7],
        [6, 5, 4, 3, 2, 1, 0, 7],
    ]
    index = reversal_index(jnp.asarray(starts))
    assert index.dtype == jnp.int32
    np.testing.assert_array_equal(index, expected)


def test_reverse_segments_gathers_every_feature_and_is_its_own_inverse():
    starts = np.zeros((2, 5), bool)
    starts[0, [0, 2]] = True  # [0, 2), [2, 5)
    starts[1, [0, 1]] = True  # [0, 1), [1, 5)
    x = jnp.arange(2 * 5 * 2 * 3, dtype=jnp.float32).reshape(2, 5, 2, 3)
    index = reversal_index(jnp.asarray(starts))
    reversed_x = reverse_segments(x, index)
    np.testing.assert_array_equal(reversed_x[0], x[0, jnp.array([1, 0, 4, 3, 2])])
    np.testing.assert_array_equal(reversed_x[1], x[1, jnp.array([0, 4, 3, 2, 1])])
    np.testing.assert_array_equal(reverse_segments(reversed_x, index), x)
    np.testing.assert_array_equal(reverse_segments(x, None), x[:, ::-1])


def test_padding_segment_starts_makes_every_run_of_padding_a_segment():
    starts = np.array(
        [
            [0, 0, 0, 1, 0, 0],  # right padding after a packed row
            [0, 0, 0, 0, 0, 0],  # left padding
            [0, 0, 0, 0, 0, 0],  # padding in the middle
            [0, 0, 0, 0, 1, 0],  # a start inside the padding is kept (harmless)
            [0, 0, 0, 0, 0, 0],  # no padding
        ],
        bool,
    )
    mask = np.array(
        [
            [1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [1, 1, 0, 0, 1, 1],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
        ],
        bool,
    )
    expected = np.array(
        [
            [1, 0, 0, 1, 1, 0],
            [1, 0, 1, 0, 0, 0],
            [1, 0, 1, 0, 1, 0],
            [1, 0, 0, 1, 1, 0],
            [1, 0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(padding_segment_starts(starts, mask), expected)


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
    bad_masks = [
        (jnp.ones((2, LENGTH), jnp.int32), r"int32 of shape \(2, 9\)"),
        (jnp.ones((2, LENGTH), jnp.float32), r"float32 of shape \(2, 9\)"),
        (jnp.ones((2, LENGTH + 1), bool), r"bool of shape \(2, 10\)"),
        (jnp.ones((LENGTH,), bool), r"bool of shape \(9,\)"),
    ]
    for mask, got in bad_masks:
        with pytest.raises(
            ValueError, match=rf"{where}: mask must be boolean \[B, T\] = \(2, 9\), got {got}"
        ):
            mixer(x, mask=mask)
    with pytest.raises(ValueError, match=rf"mixer '{MERGE_MIXER}': x must be floating point"):
        mixer(x.astype(jnp.int32))
    with pytest.raises(ValueError, match=rf"mixer '{MERGE_MIXER}': segment_starts must be"):
        mixer(x, segment_starts=jnp.ones((2, LENGTH), jnp.int32))
