"""causal_conv1d: equals a NumPy loop over time on values and final state (with an initial
state, bias and segment resets, for several widths), pieces with the state passed equal the
whole, and its gradients equal autodiff of a naive per-step form."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import FLOAT32

from seqjax.ops.conv import causal_conv1d

BATCH, LENGTH, CHANNELS = 2, 11, 3


def numpy_conv(x, kernel, bias, state, starts):
    """A loop over time that keeps the last W - 1 inputs and clears them at a start."""
    history = np.array(state, np.float64)  # [B, W-1, C], oldest first
    y = np.zeros(x.shape, np.float64)
    for t in range(x.shape[1]):
        history = np.where(starts[:, t, None, None], 0.0, history)
        window = np.concatenate([history, x[:, t : t + 1]], axis=1)  # [B, W, C]
        y[:, t] = np.sum(window * kernel, axis=1) + bias
        history = window[:, 1:]
    return y, history


def random_case(seed, width, *, with_starts=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, LENGTH, CHANNELS)).astype(np.float32)
    kernel = rng.normal(size=(width, CHANNELS)).astype(np.float32)
    bias = rng.normal(size=(CHANNELS,)).astype(np.float32)
    state = rng.normal(size=(BATCH, width - 1, CHANNELS)).astype(np.float32)
    starts = rng.random((BATCH, LENGTH)) < 0.25 if with_starts else np.zeros((BATCH, LENGTH))
    # Segments of every length, a start at 0 (drops the state) and one at the last token.
    starts[0, [0, 4, 5, LENGTH - 1]] = True
    return x, kernel, bias, state, starts.astype(bool)


@pytest.mark.parametrize("width", [1, 2, 4])
def test_equals_numpy_loop(width):
    x, kernel, bias, state, starts = random_case(width, width)
    for segment_starts in (None, starts):
        loop_starts = np.zeros_like(starts) if segment_starts is None else starts
        expected_y, expected_state = numpy_conv(x, kernel, bias, state, loop_starts)
        y, final_state = causal_conv1d(
            x, kernel, bias=bias, initial_state=state, segment_starts=segment_starts
        )
        np.testing.assert_allclose(y, expected_y, **FLOAT32)
        np.testing.assert_allclose(final_state, expected_state, **FLOAT32)
        assert y.dtype == x.dtype and final_state.dtype == jnp.float32


def test_default_state_is_zeros_and_no_bias_adds_nothing():
    x, kernel, _, _, _ = random_case(0, 4)
    y, final_state = causal_conv1d(x, kernel)
    zeros = np.zeros((BATCH, 3, CHANNELS), np.float32)
    expected_y, expected_state = numpy_conv(x, kernel, 0.0, zeros, np.zeros((BATCH, LENGTH), bool))
    np.testing.assert_allclose(y, expected_y, **FLOAT32)
    np.testing.assert_allclose(final_state, expected_state, **FLOAT32)


@pytest.mark.parametrize("split", [1, 2, 6])  # pieces shorter and longer than W - 1
def test_pieces_with_state_equal_whole(split):
    x, kernel, bias, state, starts = random_case(1, 4)
    whole, whole_state = causal_conv1d(
        x, kernel, bias=bias, initial_state=state, segment_starts=starts
    )
    first, middle_state = causal_conv1d(
        x[:, :split], kernel, bias=bias, initial_state=state, segment_starts=starts[:, :split]
    )
    second, final_state = causal_conv1d(
        x[:, split:],
        kernel,
        bias=bias,
        initial_state=middle_state,
        segment_starts=starts[:, split:],
    )
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, **FLOAT32)
    np.testing.assert_allclose(final_state, whole_state, **FLOAT32)


def test_a_segment_start_equals_a_fresh_run():
    x, kernel, bias, state, _ = random_case(2, 3)
    starts = np.zeros((BATCH, LENGTH), bool)
    starts[:, 5] = True
    packed, packed_state = causal_conv1d(
        x, kernel, bias=bias, initial_state=state, segment_starts=starts
    )
    fresh, fresh_state = causal_conv1d(x[:, 5:], kernel, bias=bias)
    np.testing.assert_allclose(packed[:, 5:], fresh, **FLOAT32)
    np.testing.assert_allclose(packed_state, fresh_state, **FLOAT32)


def naive_conv(x, kernel, bias, state, starts):
    """The NumPy loop's algorithm in jax, for autodiff."""
    history, outputs = state, []
    for t in range(x.shape[1]):
        history = jnp.where(starts[:, t, None, None], 0.0, history)
        window = jnp.concatenate([history, x[:, t : t + 1]], axis=1)
        outputs.append(jnp.sum(window * kernel, axis=1) + bias)
        history = window[:, 1:]
    return jnp.stack(outputs, axis=1), history


def test_gradients_equal_autodiff_of_naive_form():
    x, kernel, bias, state, starts = random_case(3, 4)
    rng = np.random.default_rng(7)
    y_weights = rng.normal(size=x.shape).astype(np.float32)
    state_weights = rng.normal(size=state.shape).astype(np.float32)

    def loss(function):
        def value(x, kernel, bias, state):
            y, final_state = function(x, kernel, bias, state)
            return jnp.sum(y * y_weights) + jnp.sum(final_state * state_weights)

        return jax.grad(value, argnums=(0, 1, 2, 3))(x, kernel, bias, state)

    def op(x, kernel, bias, state):
        return causal_conv1d(x, kernel, bias=bias, initial_state=state, segment_starts=starts)

    def naive(x, kernel, bias, state):
        return naive_conv(x, kernel, bias, state, starts)

    for actual, expected in zip(loss(op), loss(naive), strict=True):
        np.testing.assert_allclose(actual, expected, **FLOAT32)


def test_bad_shapes_raise():
    x = jnp.zeros((BATCH, LENGTH, CHANNELS))
    with pytest.raises(ValueError, match="kernel must be"):
        causal_conv1d(x, jnp.zeros((4, CHANNELS + 1)))
    with pytest.raises(ValueError, match="initial_state must be"):
        causal_conv1d(x, jnp.zeros((4, CHANNELS)), initial_state=jnp.zeros((BATCH, 4, CHANNELS)))
    with pytest.raises(ValueError, match="segment_starts must be"):
        causal_conv1d(x, jnp.zeros((4, CHANNELS)), segment_starts=jnp.zeros((BATCH, 3), bool))
