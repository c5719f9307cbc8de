"""linear_recurrence: every implementation equals the reference on outputs, final
state and all gradients (a, x, initial state, and through a cotangent on the final state),
for real and complex, forward and reverse, with segment resets and ragged chunking; the
reference equals a NumPy loop; and long sequences stay finite."""

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import BFLOAT16, FLOAT32

from seqjax.ops.scan import linear_recurrence

FAST = ("associative", "chunked")


def numpy_recurrence(a, x, h0, starts, reverse):
    a, x, h = np.asarray(a), np.asarray(x), np.asarray(h0)
    order = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    out = np.zeros_like(x)
    previous = None
    for t in order:
        dropped = starts[:, previous] if reverse and previous is not None else starts[:, t]
        if reverse and previous is None:
            dropped = np.zeros(x.shape[0], bool)
        h = np.where(dropped.reshape((-1,) + (1,) * (x.ndim - 2)), 0, h)
        h = a[:, t] * h + x[:, t]
        out[:, t] = h
        previous = t
    return out, h


def random_inputs(seed, shape, *, complex_=False, decay_range=(0.5, 1.0)):
    rng = np.random.default_rng(seed)
    low, high = decay_range
    a = rng.uniform(low, high, shape).astype(np.float32)
    x = rng.normal(size=shape).astype(np.float32)
    h0 = rng.normal(size=(shape[0], *shape[2:])).astype(np.float32)
    if complex_:
        phase = np.exp(1j * rng.uniform(-np.pi, np.pi, shape))
        a = (a * phase).astype(np.complex64)
        x = (x + 1j * rng.normal(size=shape)).astype(np.complex64)
        h0 = (h0 + 1j * rng.normal(size=h0.shape)).astype(np.complex64)
    starts = rng.random(shape[:2]) < 0.15
    return a, x, h0, starts


def outputs_and_grads(implementation, a, x, h0, starts, reverse, chunk_size=8):
    """Outputs, final state, and the gradients of a random linear functional of both."""
    rng = np.random.default_rng(99)
    h_weights = rng.normal(size=x.shape).astype(np.float32)
    final_weights = rng.normal(size=h0.shape).astype(np.float32)

    def loss(a, x, h0):
        h, final = linear_recurrence(
            a, x, initial_state=h0, segment_starts=starts, reverse=reverse,
            implementation=implementation, chunk_size=chunk_size,
        )  # fmt: skip
        return jnp.sum(jnp.real(h * h_weights)) + jnp.sum(jnp.real(final * final_weights)), (
            h,
            final,
        )

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
    grads, (h, final) = grad_fn(a, x, h0)
    return h, final, grads


def assert_close(actual, expected, tolerance=FLOAT32):
    jax.tree.map(
        lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tolerance),
        actual,
        expected,
    )


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_reference_equals_numpy(reverse, complex_):
    a, x, h0, starts = random_inputs(0, (2, 13, 3), complex_=complex_)
    h, final = linear_recurrence(
        a, x, initial_state=h0, segment_starts=starts, reverse=reverse,
        implementation="reference",
    )  # fmt: skip
    expected_h, expected_final = numpy_recurrence(a, x, h0, starts, reverse)
    assert_close((h, final), (expected_h, expected_final))


@pytest.mark.parametrize("implementation", FAST)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_implementations_equal_the_reference_with_gradients(implementation, reverse, complex_):
    # T = 21 is not a multiple of the chunk size 8; F has two axes.
    a, x, h0, starts = random_inputs(1, (2, 21, 3, 2), complex_=complex_)
    expected = outputs_and_grads("reference", a, x, h0, starts, reverse)
    actual = outputs_and_grads(implementation, a, x, h0, starts, reverse)
    assert_close(actual, expected)


def test_custom_gradient_equals_autodiff_of_a_plain_scan():
    a, x, h0, starts = random_inputs(2, (2, 11, 4), complex_=True)

    def plain(a, x, h0):
        a = jnp.where(starts[..., None], 0, a)

        def step(h, ax):
            h = ax[0] * h + ax[1]
            return h, h

        final, h = jax.lax.scan(step, h0, (jnp.swapaxes(a, 0, 1), jnp.swapaxes(x, 0, 1)))
        return jnp.swapaxes(h, 0, 1), final

    def scalar(f):
        def loss(a, x, h0):
            h, final = f(a, x, h0)
            return jnp.sum(jnp.abs(h) ** 2) + jnp.sum(jnp.real(final) * 3 + jnp.imag(final))

        return jax.grad(loss, argnums=(0, 1, 2))

    ours = functools.partial(
        lambda a, x, h0: linear_recurrence(
            a, x, initial_state=h0, segment_starts=starts, implementation="reference"
        )
    )
    assert_close(scalar(ours)(a, x, h0), scalar(plain)(a, x, h0))


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(
    batch=st.integers(1, 3),
    length=st.integers(1, 40),
    features=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    chunk_size=st.sampled_from([1, 4, 16, 64]),
    reverse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_and_associative_match_over_shapes(
    batch, length, features, chunk_size, reverse, seed
):
    a, x, h0, starts = random_inputs(seed, (batch, length, *features))

    @jax.jit  # one compilation per example, not one per operation
    def every_form(a, x, h0, starts):
        return {
            implementation: linear_recurrence(
                a,
                x,
                initial_state=h0,
                segment_starts=starts,
                reverse=reverse,
                implementation=implementation,
                chunk_size=chunk_size,
            )  # fmt: skip
            for implementation in ("reference", *FAST)
        }

    results = every_form(a, x, h0, starts)
    for implementation in FAST:
        assert_close(results[implementation], results["reference"])


def test_pieces_with_carried_state_equal_the_whole():
    a, x, h0, _ = random_inputs(3, (2, 30, 5))
    whole, whole_final = linear_recurrence(a, x, initial_state=h0)
    first, state = linear_recurrence(a[:, :12], x[:, :12], initial_state=h0)
    second, final = linear_recurrence(a[:, 12:], x[:, 12:], initial_state=state)
    assert_close((jnp.concatenate([first, second], 1), final), (whole, whole_final))


def test_decays_broadcast_and_their_gradient_sums():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 9, 3)).astype(np.float32)
    a = rng.uniform(0.5, 1, size=(3,)).astype(np.float32)

    def loss(a, implementation):
        h, _ = linear_recurrence(a, x, implementation=implementation)
        return jnp.sum(h**2)

    full = np.broadcast_to(a, x.shape)
    assert_close(
        jax.grad(loss)(a, "chunked"),
        jnp.sum(jax.grad(loss)(full, "reference"), axis=(0, 1)),
    )


@pytest.mark.parametrize("implementation", ["reference", *FAST])
def test_bfloat16_inputs_keep_a_float32_state(implementation):
    a, x, h0, starts = random_inputs(5, (2, 50, 8))
    reference = outputs_and_grads("reference", a, x, h0, starts, False)
    a16, x16 = jnp.asarray(a, jnp.bfloat16), jnp.asarray(x, jnp.bfloat16)
    h, final, grads = outputs_and_grads(implementation, a16, x16, h0, starts, False)
    assert h.dtype == jnp.bfloat16 and final.dtype == jnp.float32
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
    # bfloat16 rounding of a and x, propagated through ~1/(1 - a) steps of memory.
    scaled = dict(rtol=BFLOAT16["rtol"] * 4, atol=BFLOAT16["atol"] * 4)
    assert_close(
        jax.tree.map(lambda t: np.asarray(t, np.float32), (h, final, grads)), reference, scaled
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("decay_range", [(0.999, 1.0), (0.0, 1e-3)], ids=["near1", "near0"])
def test_long_sequences_are_finite(dtype, decay_range):
    length = 65536
    rng = np.random.default_rng(6)
    a = jnp.asarray(rng.uniform(*decay_range, (1, length, 4)), dtype)
    x = jnp.asarray(rng.normal(size=(1, length, 4)), dtype)

    @jax.jit
    def value_and_grads(a, x):
        def loss(a, x):
            h, final = linear_recurrence(a, x)
            return jnp.mean(h.astype(jnp.float32) ** 2) + jnp.mean(final)

        return jax.value_and_grad(loss, argnums=(0, 1))(a, x)

    value, grads = value_and_grads(a, x)
    assert np.isfinite(float(value))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


def test_bad_arguments_raise_clear_errors():
    x = jnp.zeros((2, 5, 3))
    with pytest.raises(ValueError, match=r"a \(4,\) must broadcast to the shape of x"):
        linear_recurrence(jnp.zeros((4,)), x)
    with pytest.raises(ValueError, match=r"initial_state must be \[B, \*F\] = \(2, 3\)"):
        linear_recurrence(x, x, initial_state=jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"segment_starts must be \[B, T\]"):
        linear_recurrence(x, x, segment_starts=jnp.zeros((2, 4), bool))
    with pytest.raises(ValueError, match="unknown implementation 'fast'"):
        linear_recurrence(x, x, implementation="fast")
    with pytest.raises(ValueError, match="'pallas' cannot run: .* on TPU or GPU, not on cpu"):
        linear_recurrence(x, x, implementation="pallas")
