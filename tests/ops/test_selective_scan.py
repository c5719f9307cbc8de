"""selective_scan: the reference equals a NumPy loop of Mamba's S6 equations, and the chunked
form equals the reference on outputs, final state and the gradients of every input (u, Δ,
A, B, C, D and the initial state), for real, negative-eigenvalue and complex state matrices,
with segment resets, an initial state and a length that is not a multiple of the chunk; in
float32 and bfloat16. The chunked form's forward+backward holds a fraction of the
reference's temporaries. Bad arguments are refused by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import BFLOAT16, FLOAT32

from seqjax.ops.selective_scan import selective_scan

BATCH, LENGTH, WIDTH, SIZE, CHUNK = 2, 13, 3, 4, 4
KINDS = ("real", "negative_eigenvalues", "complex")


def numpy_selective_scan(u, delta, a, b, c, d, h0, starts, negative_eigenvalues):
    """Gu & Dao (2023), eq. (2a-2b) with Ā = exp(Δ A), B̄ = Δ B, one step at a time."""
    h = np.asarray(h0)
    y = np.zeros(u.shape)
    for t in range(u.shape[1]):
        decay = np.exp(delta[:, t, :, None] * a)
        if negative_eigenvalues:
            decay = 2 * decay - 1
        h = np.where(starts[:, t, None, None], 0, h)
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * b[:, t, None, :]
        y[:, t] = np.real(np.sum(c[:, t, None, :] * h, axis=-1)) + d * u[:, t]
    return y, h


def random_arrays(kind, seed=0, length=LENGTH):
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return rng.normal(size=shape).astype(np.float32)

    arrays = dict(
        u=normal(BATCH, length, WIDTH),
        # Steps up to 2, so that decays span (0, 1) instead of staying near 1.
        delta=rng.uniform(0.05, 2.0, (BATCH, length, WIDTH)).astype(np.float32),
        state_matrix=-rng.uniform(0.5, 2.0, (WIDTH, SIZE)).astype(np.float32),
        input_matrix=normal(BATCH, length, SIZE),
        output_matrix=normal(BATCH, length, SIZE),
        skip=normal(WIDTH),
        initial_state=normal(BATCH, WIDTH, SIZE),
    )
    if kind == "complex":
        arrays["state_matrix"] = (arrays["state_matrix"] + 1j * normal(WIDTH, SIZE)).astype(
            np.complex64
        )
        for name in ("input_matrix", "output_matrix", "initial_state"):
            arrays[name] = (arrays[name] + 1j * normal(*arrays[name].shape)).astype(np.complex64)
    starts = rng.random((BATCH, length)) < 0.15
    starts[0, 5] = True
    return arrays, starts


def outputs_and_grads(arrays, starts, kind, dtype=jnp.float32, **options):
    """y, the final state, and the gradients of a fixed random linear functional of both
    with respect to every array."""
    rng = np.random.default_rng(99)
    y_weights = rng.normal(size=arrays["u"].shape).astype(np.float32)
    state_weights = rng.normal(size=arrays["initial_state"].shape).astype(np.float32)
    cast = {
        name: (x.astype(dtype) if name in ("u", "delta", "skip") else x)
        for name, x in arrays.items()
    }

    def loss(cast):
        y, final = selective_scan(
            **cast,
            segment_starts=starts,
            negative_eigenvalues=kind == "negative_eigenvalues",
            **options,
        )
        value = jnp.sum(y.astype(jnp.float32) * y_weights)
        return value + jnp.sum(jnp.real(final) * state_weights), (y, final)

    grads, (y, final) = jax.jit(jax.grad(loss, has_aux=True))(cast)
    return {"y": y, "final_state": final, "grads": grads}


def assert_close(actual, expected, tolerance):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(
            np.asarray(a, np.complex128), np.asarray(e, np.complex128), **tolerance
        ),
        actual,
        expected,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_reference_equals_numpy_loop(kind):
    arrays, starts = random_arrays(kind)
    y, final = selective_scan(
        **arrays,
        segment_starts=starts,
        negative_eigenvalues=kind == "negative_eigenvalues",
        implementation="reference",
    )
    expected_y, expected_final = numpy_selective_scan(
        *(arrays[name] for name in ("u", "delta", "state_matrix", "input_matrix")),
        arrays["output_matrix"],
        arrays["skip"],
        arrays["initial_state"],
        starts,
        kind == "negative_eigenvalues",
    )
    np.testing.assert_allclose(y, expected_y, **FLOAT32)
    np.testing.assert_allclose(final, expected_final, **FLOAT32)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_equals_reference(kind):
    arrays, starts = random_arrays(kind)
    expected = outputs_and_grads(arrays, starts, kind, implementation="reference")
    actual = outputs_and_grads(arrays, starts, kind, implementation="chunked", chunk_size=CHUNK)
    assert_close(actual, expected, FLOAT32)


def test_chunked_equals_reference_in_bfloat16():
    arrays, starts = random_arrays("real", seed=1)
    options = dict(dtype=jnp.bfloat16)
    expected = outputs_and_grads(arrays, starts, "real", implementation="reference", **options)
    actual = outputs_and_grads(
        arrays, starts, "real", implementation="chunked", chunk_size=CHUNK, **options
    )
    assert actual["y"].dtype == jnp.bfloat16 and actual["final_state"].dtype == jnp.float32
    assert_close(actual, expected, BFLOAT16)


def test_pieces_equal_the_whole():
    arrays, starts = random_arrays("real", seed=2)
    whole, whole_final = selective_scan(**arrays, segment_starts=starts, chunk_size=CHUNK)
    sequences = ("u", "delta", "input_matrix", "output_matrix")
    first = {k: v[:, :6] if k in sequences else v for k, v in arrays.items()}
    y1, state = selective_scan(**first, segment_starts=starts[:, :6], chunk_size=CHUNK)
    second = {k: v[:, 6:] if k in sequences else v for k, v in arrays.items()}
    y2, final = selective_scan(
        **{**second, "initial_state": state}, segment_starts=starts[:, 6:], chunk_size=CHUNK
    )
    np.testing.assert_allclose(np.concatenate([y1, y2], axis=1), whole, **FLOAT32)
    np.testing.assert_allclose(final, whole_final, **FLOAT32)


def temporary_bytes(implementation, arrays):
    def loss(arrays):
        y, final = selective_scan(**arrays, implementation=implementation, chunk_size=16)
        return jnp.sum(y) + jnp.sum(final)

    compiled = jax.jit(jax.grad(loss)).lower(arrays).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_form_never_holds_the_whole_state_sequence():
    """At T = 512, E = 64, N = 16 one [B, T, E, N] array of float32 is 2 MiB; the reference's
    forward+backward keeps several, the chunked form a few [B, 16, E, N] and the states
    entering its chunks."""
    rng = np.random.default_rng(0)
    batch, length, width, size = 1, 512, 64, 16
    arrays = dict(
        u=rng.normal(size=(batch, length, width)).astype(np.float32),
        delta=rng.uniform(0.01, 0.1, (batch, length, width)).astype(np.float32),
        state_matrix=-np.ones((width, size), np.float32),
        input_matrix=rng.normal(size=(batch, length, size)).astype(np.float32),
        output_matrix=rng.normal(size=(batch, length, size)).astype(np.float32),
    )
    one_state_sequence = batch * length * width * size * 4
    reference = temporary_bytes("reference", arrays)
    chunked = temporary_bytes("chunked", arrays)
    assert reference >= 2 * one_state_sequence, reference
    assert chunked <= one_state_sequence / 2, (chunked, reference)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(implementation="fused"), r"unknown implementation 'fused'"),
        (dict(delta=np.ones((BATCH, LENGTH, WIDTH + 1), np.float32)), r"delta must be \[B, T, E\]"),
        (
            dict(state_matrix=np.ones((WIDTH + 1, SIZE), np.float32)),
            r"state_matrix must be \[E, N\]",
        ),
        (dict(input_matrix=np.ones((BATCH, LENGTH, SIZE + 1), np.float32)), r"input_matrix must"),
        (dict(skip=np.ones(WIDTH + 1, np.float32)), r"skip must be \[E\]"),
        (dict(u=np.ones((BATCH, LENGTH, WIDTH), np.int32)), r"u must be floating point"),
        (dict(initial_state=np.ones((BATCH, WIDTH), np.float32)), r"initial_state must be"),
        (dict(chunk_size=0), r"chunk_size must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_by_name(change, message):
    arrays, _ = random_arrays("real")
    with pytest.raises(ValueError, match=f"selective_scan: {message}"):
        selective_scan(**{**arrays, **change})


def test_negative_eigenvalues_need_a_real_state_matrix():
    arrays, _ = random_arrays("complex")
    with pytest.raises(ValueError, match="negative_eigenvalues needs a real state_matrix"):
        selective_scan(**arrays, negative_eigenvalues=True)
