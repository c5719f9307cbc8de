"""The invariants every registered token mixer must satisfy (DESIGN.md, mixer protocol):

- the whole sequence equals the sequence fed in two pieces with the state passed between
  them, and equals it fed one token at a time (outputs and final state);
- outputs at position t do not depend on inputs after t (checked by gradient);
- a packed batch equals its segments run separately.

A new mixer gets these tests by registering; ``VARIANTS`` adds option combinations.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tolerances import FLOAT32

from seqjax import layers

D_MODEL, BATCH, LENGTH = 16, 2, 9
SMALL_OPTIONS = {
    "attention": dict(num_heads=2, cache_length=16),
    "fox_attention": dict(num_heads=2, cache_length=16),
}
VARIANTS = [
    ("attention", dict(num_heads=4, num_kv_heads=2, cache_length=16)),
    ("attention", dict(num_heads=2, window=3)),
    ("lstm", dict(peepholes=True)),
    ("lstm", dict(peepholes=True, coupled_input_forget=True)),
    ("lstm", dict(forget_gate=False)),
    ("gru", dict(reset_after=False)),
    ("mamba", dict(negative_eigenvalues=True)),
    ("hgrn", dict(forget_lower_bound=0.5)),
    ("mamba2", dict(num_groups=2, head_dim=8, state_size=4)),
    ("hgrn2", dict(forget_lower_bound=0.5, expand_ratio=8)),
    ("deltaproduct", dict(num_householder=3, gated=True, negative_eigenvalues=True)),
    ("fox_attention", dict(num_heads=4, num_kv_heads=2, window=3, output_gate=True)),
]
CASES = [(name, SMALL_OPTIONS.get(name, {})) for name in layers.available()] + VARIANTS


@nnx.jit
def apply(mixer, x, state=None, segment_starts=None):
    return mixer(x, state=state, segment_starts=segment_starts)


def case_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


@pytest.fixture(params=CASES, ids=[case_id(c) for c in CASES])
def mixer_and_inputs(request):
    name, options = request.param
    mixer = layers.create(name, d_model=D_MODEL, rngs=nnx.Rngs(0), **options)
    x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, D_MODEL), jnp.float32)
    return mixer, x


def assert_trees_close(actual, expected):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), **FLOAT32),
        actual,
        expected,
    )


def test_output_shape_and_state_structure(mixer_and_inputs):
    mixer, x = mixer_and_inputs
    y, state = apply(mixer, x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert jax.tree.structure(state) == jax.tree.structure(mixer.init_state(BATCH))
    assert np.all(np.isfinite(np.asarray(y)))


def test_two_pieces_equal_whole(mixer_and_inputs):
    mixer, x = mixer_and_inputs
    whole, whole_state = apply(mixer, x)
    split = 4
    first, state = apply(mixer, x[:, :split])
    second, final_state = apply(mixer, x[:, split:], state)
    assert_trees_close(jnp.concatenate([first, second], axis=1), whole)
    assert_trees_close(final_state, whole_state)


def test_token_by_token_equals_whole(mixer_and_inputs):
    mixer, x = mixer_and_inputs
    whole, whole_state = apply(mixer, x)
    state, outputs = mixer.init_state(BATCH), []
    for t in range(LENGTH):
        y, state = apply(mixer, x[:, t : t + 1], state)
        outputs.append(y)
    assert_trees_close(jnp.concatenate(outputs, axis=1), whole)
    assert_trees_close(state, whole_state)


def test_causal_by_gradient(mixer_and_inputs):
    mixer, x = mixer_and_inputs
    position = 4

    def output_at_position(x):
        y, _ = mixer(x)
        return jnp.sum(y[:, position] ** 2)

    grad = np.asarray(jax.grad(output_at_position)(x))
    assert np.all(grad[:, position + 1 :] == 0.0), "output depends on future inputs"
    assert np.any(grad[:, : position + 1] != 0.0), "output depends on no input at all"


def test_packed_batch_equals_segments_run_separately(mixer_and_inputs):
    mixer, x = mixer_and_inputs
    boundaries = (0, 3, 7)  # segments [0, 3), [3, 7), [7, 9)
    segment_starts = jnp.zeros((BATCH, LENGTH), bool).at[:, boundaries].set(True)
    packed, packed_state = apply(mixer, x, None, segment_starts)
    ends = (*boundaries[1:], LENGTH)
    pieces = [apply(mixer, x[:, start:end]) for start, end in zip(boundaries, ends, strict=True)]
    assert_trees_close(packed, jnp.concatenate([y for y, _ in pieces], axis=1))
    # The final state is the last segment's state (attention also keeps older keys that
    # are masked by segment id, so compare the recurrent mixers' states only).
    if not isinstance(mixer, layers.mixer_class("attention")):  # fox_attention subclasses it
        assert_trees_close(packed_state, pieces[-1][1])


def test_packed_segments_reset_a_carried_state(mixer_and_inputs):
    mixer, x = mixer_and_inputs
    _, carried = apply(mixer, x[:, ::-1])
    segment_starts = jnp.zeros((BATCH, LENGTH), bool).at[:, 0].set(True)
    fresh, _ = apply(mixer, x)
    reset, _ = apply(mixer, x, carried, segment_starts)
    assert_trees_close(reset, fresh)
