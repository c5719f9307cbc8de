"""The invariants every registered token mixer must satisfy (DESIGN.md, mixer protocol):

- the whole sequence equals the sequence fed in two pieces with the state passed between
  them, and equals it fed one token at a time (outputs and final state);
- outputs at position t do not depend on inputs after t (checked by gradient), and a NaN at
  the last position leaves every earlier output finite and as it was;
- a packed batch, whose rows start their segments at different positions, equals its
  segments run separately, and a segment start resets a carried state;
- bfloat16 inputs give the float32 outputs and states within BFLOAT16;
- integer inputs, T = 0 or B = 0, a width other than d_model and segment starts that are
  not boolean [B, T] are refused by name.

T = 11 crosses the chunks of every chunked form: the cases set ``chunk_size`` (and the
chunked attention's ``block_size``) to 4, and the pieces split at 6. Each case compiles
once: ``observe`` computes in one jitted call every array the checks compare.

A new mixer gets these tests by registering; ``layer_testing.VARIANTS`` adds option
combinations.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from layer_testing import MIXER_CASES, assert_trees_close
from tolerances import BFLOAT16

from seqjax import layers

D_MODEL, BATCH, LENGTH = 16, 2, 11
CHUNK = 4  # chunk_size and block_size of the cases: LENGTH spans three chunks
SPLIT = 6  # the pieces [0, 6) and [6, 11) both end inside a chunk
CAUSAL_POSITION = 2  # in the first piece: later positions in its chunk and the next one
# The first position of each segment, per row. Both rows' last segment is the second piece
# [6, 11): run alone, it gives the packed batch's last outputs and final state.
SEGMENTS = ((0, 3, 6), (0, 5, 6))


def with_small_chunks(name, options):
    if "chunk_size" in layers.mixer_options(name):
        return {"chunk_size": CHUNK, **options}
    return options


# Attention runs its reference form at these lengths unless the chunked one is asked for.
CHUNKED_ATTENTION = dict(num_heads=2, cache_length=16, implementation="chunked", block_size=CHUNK)
CASES = [
    (name, with_small_chunks(name, options))
    for name, options in MIXER_CASES
    + [("attention", CHUNKED_ATTENTION), ("fox_attention", CHUNKED_ATTENTION)]
]


def case_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items() if k != "chunk_size")


@functools.cache
def mixer_of(index):
    """The mixer of CASES[index], built once."""
    name, options = CASES[index]
    return layers.create(name, d_model=D_MODEL, rngs=nnx.Rngs(0), **options)


def starts_at(rows_of_firsts):
    """segment_starts [len(rows_of_firsts), T] true at each row's given positions."""
    starts = np.zeros((len(rows_of_firsts), LENGTH), bool)
    for row, firsts in enumerate(rows_of_firsts):
        starts[row, list(firsts)] = True
    return starts


def earlier_segments():
    """(row, start, end) of every segment but the last of each row."""
    return [
        (row, start, end)
        for row, firsts in enumerate(SEGMENTS)
        for start, end in zip(firsts[:-1], firsts[1:], strict=True)
    ]


def stack(*trees):
    """The trees' arrays concatenated along the batch axis."""
    return jax.tree.map(lambda *arrays: jnp.concatenate(arrays), *trees)


def rows(tree, index):
    """Rows ``index`` (a slice of the batch axis) of every array of a tree."""
    return jax.tree.map(lambda array: array[index], tree)


def observe(mixer, x):
    """Everything the checks compare, from x [B, T, D] in five calls of the mixer (each
    batch stacks the runs that share a length and whether a state and segment starts are
    given), so that a case compiles once.

    1. x with no segment start (the whole sequence), x packed in SEGMENTS, each earlier
       segment alone at the start of a row (zeros after it), and x with NaN at its last
       position.
    2. The first piece, from no state, with its gradient at CAUSAL_POSITION.
    3. The second piece three times: after the first piece's state (the pieces), after the
       whole sequence's state with a segment start at its first token (a reset), and from
       the initial state (the last segment run alone).
    4. Every token alone, in order, with the state passed on.
    5. x in bfloat16.
    """
    segments = earlier_segments()
    alone = jnp.zeros((len(segments), LENGTH, D_MODEL), x.dtype)
    for i, (row, start, end) in enumerate(segments):
        alone = alone.at[i, : end - start].set(x[row, start:end])
    no_starts = np.zeros((BATCH, LENGTH), bool)
    starts = np.concatenate(
        [no_starts, starts_at(SEGMENTS), starts_at([()] * len(segments)), no_starts]
    )
    nan_at_last = x.at[:, -1].set(jnp.nan)
    outputs, states = mixer(stack(x, x, alone, nan_at_last), segment_starts=jnp.asarray(starts))

    first, pullback, first_state = jax.vjp(mixer, x[:, :SPLIT], has_aux=True)
    # The gradient of Σ y²/2 at CAUSAL_POSITION (a plain Σ y is constant after a norm).
    (gradient,) = pullback(
        jnp.zeros_like(first).at[:, CAUSAL_POSITION].set(first[:, CAUSAL_POSITION])
    )

    whole_state = rows(states, slice(0, BATCH))
    second_starts = np.zeros((3 * BATCH, LENGTH - SPLIT), bool)
    second_starts[BATCH : 2 * BATCH, 0] = True
    second, second_states = mixer(
        jnp.tile(x[:, SPLIT:], (3, 1, 1)),
        state=stack(first_state, whole_state, mixer.init_state(BATCH)),
        segment_starts=jnp.asarray(second_starts),
    )

    def step(state, x_t):
        y_t, state = mixer(x_t[:, None], state=state)
        return state, y_t[:, 0]

    steps_state, steps = jax.lax.scan(step, mixer.init_state(BATCH), jnp.swapaxes(x, 0, 1))
    bfloat16, bfloat16_state = mixer(x.astype(jnp.bfloat16))
    pieces, reset, last = (second[i * BATCH : (i + 1) * BATCH] for i in range(3))
    return dict(
        whole=outputs[:BATCH],
        whole_state=whole_state,
        packed=outputs[BATCH : 2 * BATCH],
        packed_state=rows(states, slice(BATCH, 2 * BATCH)),
        alone=outputs[2 * BATCH : -BATCH],
        nan_at_last=outputs[-BATCH:],
        pieces=jnp.concatenate([first, pieces], axis=1),
        pieces_state=rows(second_states, slice(0, BATCH)),
        gradient=gradient,
        reset=reset,
        last=last,
        last_state=rows(second_states, slice(2 * BATCH, 3 * BATCH)),
        steps=jnp.swapaxes(steps, 0, 1),
        steps_state=steps_state,
        bfloat16=bfloat16,
        bfloat16_state=bfloat16_state,
    )


# The arrays are tiny, so the code need not be fast: compiling without LLVM's optimizations
# takes about half the time (the HLO, and so the arithmetic, is the same).
@functools.partial(
    jax.jit, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0}
)
def observe_compiled(graphdef, params, x):
    return observe(nnx.merge(graphdef, params), x)


@functools.cache
def observations(index):
    """``observe`` for CASES[index] (computed once, whatever order the tests run in), on
    inputs that bfloat16 holds exactly, so a bfloat16 run sees the float32 run's values."""
    mixer = mixer_of(index)
    x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, D_MODEL), jnp.bfloat16)
    seen = observe_compiled(*nnx.split(mixer), x.astype(jnp.float32))
    return mixer, jax.tree.map(np.asarray, seen)


parametrize_cases = pytest.mark.parametrize(
    "index", range(len(CASES)), ids=[case_id(case) for case in CASES]
)


@parametrize_cases
def test_outputs_keep_the_input_shape_and_dtype_and_the_state_structure(index):
    mixer, seen = observations(index)
    structure = jax.tree.structure(mixer.init_state(BATCH))
    for y, state, dtype in (
        (seen["whole"], seen["whole_state"], jnp.float32),
        (seen["bfloat16"], seen["bfloat16_state"], jnp.bfloat16),
    ):
        assert y.shape == (BATCH, LENGTH, D_MODEL) and y.dtype == dtype
        assert jax.tree.structure(state) == structure
        assert np.all(np.isfinite(y.astype(np.float32)))


@parametrize_cases
def test_two_pieces_equal_whole(index):
    _, seen = observations(index)
    assert_trees_close(seen["pieces"], seen["whole"])
    assert_trees_close(seen["pieces_state"], seen["whole_state"])


@parametrize_cases
def test_token_by_token_equals_whole(index):
    _, seen = observations(index)
    assert_trees_close(seen["steps"], seen["whole"])
    assert_trees_close(seen["steps_state"], seen["whole_state"])


@parametrize_cases
def test_causal_by_gradient(index):
    gradient = observations(index)[1]["gradient"]
    assert np.all(gradient[:, CAUSAL_POSITION + 1 :] == 0.0), "output depends on future inputs"
    assert np.any(gradient[:, : CAUSAL_POSITION + 1] != 0.0), "output depends on no input"


@parametrize_cases
def test_a_nan_at_the_last_position_leaves_the_earlier_outputs_as_they_were(index):
    seen = observations(index)[1]
    earlier = seen["nan_at_last"][:, :-1]
    assert np.all(np.isfinite(earlier)), "a NaN at the last position reaches earlier outputs"
    assert_trees_close(earlier, seen["whole"][:, :-1])


@parametrize_cases
def test_packed_rows_equal_their_segments_run_separately(index):
    mixer, seen = observations(index)
    for i, (row, start, end) in enumerate(earlier_segments()):
        assert_trees_close(seen["packed"][row, start:end], seen["alone"][i, : end - start])
    assert_trees_close(seen["packed"][:, SPLIT:], seen["last"])
    # The final state is the last segment's state (attention also keeps older keys that
    # are masked by segment id, so compare the recurrent mixers' states only).
    if not isinstance(mixer, layers.mixer_class("attention")):  # fox_attention subclasses it
        assert_trees_close(seen["packed_state"], seen["last_state"])


@parametrize_cases
def test_a_segment_start_resets_a_carried_state(index):
    _, seen = observations(index)
    assert_trees_close(seen["reset"], seen["last"])


@parametrize_cases
def test_bfloat16_inputs_give_the_float32_outputs_within_tolerance(index):
    _, seen = observations(index)
    assert_trees_close(seen["bfloat16"].astype(np.float32), seen["whole"], BFLOAT16)
    assert_trees_close(seen["bfloat16_state"], seen["whole_state"], BFLOAT16)


@parametrize_cases
def test_bad_inputs_are_refused_by_name(index):
    mixer, name = mixer_of(index), CASES[index][0]
    x = jnp.ones((BATCH, LENGTH, D_MODEL))
    refused = [
        (x.astype(jnp.int32), None, "x must be floating point, got int32"),
        (x[:, :0], None, "x must hold at least one sequence and one step, got B = 2, T = 0"),
        (x[:0], None, "x must hold at least one sequence and one step, got B = 0, T = 11"),
        (
            x[..., 1:],
            None,
            rf"D = d_model \({D_MODEL}\) = \(2, 11, {D_MODEL}\), got shape \(2, 11, 15\)",
        ),
        (x[0], None, r"x must be \[B, T, D\], got shape \(11, 16\)"),
        (x, jnp.zeros((BATCH, LENGTH), jnp.int32), "segment_starts must be boolean, got int32"),
        (x, jnp.zeros((BATCH, LENGTH + 1), bool), r"segment_starts must be \[B, T\] = \(2, 11\)"),
    ]
    for inputs, segment_starts, message in refused:
        with pytest.raises(ValueError, match=rf"mixer '{name}': .*{message}"):
            mixer(inputs, segment_starts=segment_starts)
