"""mlstm: the chunked and parallel forms equal the reference on h, the final state
(C, n and m entry by entry: every form returns the reference stabilizer) and the gradients of
q, k, v, both gates and the initial state (with a random cotangent on the final state), for
chunk sizes 16-64, ragged T and segment resets; the reference equals a NumPy loop of the
paper's stabilized equations; with input gates and stabilizers of ±200 (exp overflows float32)
every form stays finite and equals the unstabilized equations computed in float64, and the
chunked form stays finite over 16384 bfloat16 steps; pieces with the state equal the whole."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity import assert_relative, outputs_and_grads
from tolerances import CHUNKED_FLOAT32_RELATIVE, FLOAT32

from seqjax.ops.mlstm import MLSTMState, mlstm, zero_mlstm_state

jit_mlstm = jax.jit(mlstm, static_argnames=("chunk_size", "implementation"))


def inputs(seed, batch, length, heads, key_size, value_size, *, input_gates=(-3.0, 3.0)):
    rng = np.random.default_rng(seed)
    q, k = (rng.normal(size=(batch, length, heads, key_size)).astype(np.float32) for _ in "qk")
    return dict(
        q=q,
        k=k / np.sqrt(key_size),
        v=rng.normal(size=(batch, length, heads, value_size)).astype(np.float32),
        input_gate=rng.uniform(*input_gates, (batch, length, heads)).astype(np.float32),
        forget_gate=rng.normal(2.0, 2.0, (batch, length, heads)).astype(np.float32),
        cell=rng.normal(size=(batch, heads, key_size, value_size)).astype(np.float32),
        normalizer=rng.normal(size=(batch, heads, key_size)).astype(np.float32),
        stabilizer=rng.normal(size=(batch, heads)).astype(np.float32),
        segment_starts=rng.random((batch, length)) < 0.05,
    )


def flat_mlstm(q, k, v, input_gate, forget_gate, cell, normalizer, stabilizer, **options):
    """mlstm with the state as separate arrays and the final state as one [B, H, K·V + K + 1]
    array, the form ``outputs_and_grads`` differentiates."""
    h, final = mlstm(
        q, k, v, input_gate, forget_gate,
        initial_state=MLSTMState(cell, normalizer, stabilizer), **options,
    )  # fmt: skip
    batch, heads = final.stabilizer.shape
    parts = (final.cell.reshape(batch, heads, -1), final.normalizer, final.stabilizer[..., None])
    return h, jnp.concatenate(parts, axis=-1)


def unflatten(result, key_size, value_size):
    """Splits the flat final state back into C, n and m for a per-array comparison."""
    final = result.pop("final_state")
    result["cell"] = final[..., : key_size * value_size]
    result["normalizer"] = final[..., key_size * value_size : -1]
    result["stabilizer"] = final[..., -1]
    return result


@functools.partial(jax.jit, static_argnames=("implementation", "chunk_size"))
def run(arrays, implementation, chunk_size=64):
    """Outputs, final C, n, m and gradients; jitted so that tests sharing shapes compile once."""
    result = outputs_and_grads(
        flat_mlstm, arrays, implementation=implementation, chunk_size=chunk_size
    )
    return unflatten(result, arrays["q"].shape[-1], arrays["v"].shape[-1])


SHAPE = dict(batch=1, length=77, heads=2, key_size=8, value_size=4)  # one compile per form


def test_chunked_equals_reference():
    """T = 77 is ragged for every chunk size: 5, 3 and 2 chunks. (The parallel form is
    compared with the reference in test_huge_input_gates.)"""
    arrays = inputs(0, **SHAPE)
    expected = run(arrays, "reference")
    for chunk_size in (16, 32, 64):
        assert_relative(run(arrays, "chunked", chunk_size), expected, CHUNKED_FLOAT32_RELATIVE)


def numpy_mlstm(q, k, v, input_gate, forget_gate, cell, normalizer, stabilizer, segment_starts,
                epsilon=0.0):  # fmt: skip
    """The stabilized recurrence of the paper (eqs. 19-27), one step at a time in float64,
    with ε added to the stabilized denominator as xLSTM 7B does."""
    C, n, m = (np.asarray(a, np.float64) for a in (cell, normalizer, stabilizer))
    h = np.zeros(v.shape)
    log_forget = -np.logaddexp(0.0, -forget_gate.astype(np.float64))
    for t in range(q.shape[1]):
        reset = segment_starts[:, t, None]
        C, n, m = (np.where(reset[..., None, None], 0.0, C), np.where(reset[..., None], 0.0, n),
                   np.where(reset, 0.0, m))  # fmt: skip
        new_m = np.maximum(log_forget[:, t] + m, input_gate[:, t])
        i = np.exp(input_gate[:, t] - new_m)
        f = np.exp(log_forget[:, t] + m - new_m)
        C = f[..., None, None] * C + i[..., None, None] * np.einsum(
            "bhk,bhv->bhkv", k[:, t], v[:, t]
        )
        n = f[..., None] * n + i[..., None] * k[:, t]
        m = new_m
        denominator = np.maximum(np.abs(np.einsum("bhk,bhk->bh", n, q[:, t])), np.exp(-m))
        denominator += epsilon
        h[:, t] = np.einsum("bhkv,bhk->bhv", C, q[:, t]) / denominator[..., None]
    return h, (C, n, m)


def test_reference_equals_numpy():
    arrays = inputs(1, 2, 13, 2, 3, 2)
    h, final = jax.jit(flat_mlstm, static_argnames="implementation")(
        **arrays, implementation="reference"
    )
    expected_h, (C, n, m) = numpy_mlstm(**arrays)
    expected_final = np.concatenate([C.reshape(2, 2, -1), n, m[..., None]], axis=-1)
    np.testing.assert_allclose(h, expected_h, **FLOAT32)
    np.testing.assert_allclose(final, expected_final, **FLOAT32)


def test_epsilon_is_added_to_the_stabilized_denominator_in_every_form():
    """ε = 0.5 (large, so that leaving it out or adding it elsewhere shows) in the reference,
    the parallel form (one chunk) and the chunked form over 3 chunks with segment resets."""
    arrays = inputs(2, 2, 40, 2, 4, 3)
    expected_h, (C, n, m) = numpy_mlstm(**arrays, epsilon=0.5)
    expected_final = np.concatenate([C.reshape(2, 2, -1), n, m[..., None]], axis=-1)
    without, _ = numpy_mlstm(**arrays)
    assert np.max(np.abs(without - expected_h)) > 1e-2
    call = jax.jit(flat_mlstm, static_argnames=("implementation", "chunk_size", "epsilon"))
    for implementation, chunk_size in (("reference", 64), ("parallel", 64), ("chunked", 16)):
        h, final = call(**arrays, implementation=implementation, chunk_size=chunk_size, epsilon=0.5)
        assert_relative(dict(h=h), dict(h=expected_h), CHUNKED_FLOAT32_RELATIVE)
        np.testing.assert_allclose(final, expected_final, **FLOAT32)
    with pytest.raises(ValueError, match="mlstm: epsilon must be >= 0, got -1"):
        mlstm(*(arrays[name] for name in ("q", "k", "v", "input_gate", "forget_gate")),
              epsilon=-1.0)  # fmt: skip


def numpy_unstabilized(q, k, v, input_gate, forget_gate, cell, normalizer, stabilizer,
                       segment_starts):  # fmt: skip
    """The equations without a stabilizer in float64 (exp(±200) fits), from C·exp(m), n·exp(m):
    C_t = f_t C_{t-1} + exp(ĩ_t) k_t v_tᵀ, n_t likewise, h_t = C_tᵀq_t / max(|n_tᵀq_t|, 1)."""
    q, k, v, input_gate, forget_gate = (
        np.asarray(a, np.float64) for a in (q, k, v, input_gate, forget_gate)
    )
    forget = 1.0 / (1.0 + np.exp(-forget_gate))
    scale = np.exp(np.asarray(stabilizer, np.float64))
    C, n = cell * scale[..., None, None], normalizer * scale[..., None]
    h = np.zeros(v.shape)
    for t in range(q.shape[1]):
        reset = segment_starts[:, t, None]
        C, n = np.where(reset[..., None, None], 0.0, C), np.where(reset[..., None], 0.0, n)
        i = np.exp(input_gate[:, t])
        C = forget[:, t, :, None, None] * C + i[..., None, None] * np.einsum(
            "bhk,bhv->bhkv", k[:, t], v[:, t]
        )
        n = forget[:, t, :, None] * n + i[..., None] * k[:, t]
        denominator = np.maximum(np.abs(np.einsum("bhk,bhk->bh", n, q[:, t])), 1.0)
        h[:, t] = np.einsum("bhkv,bhk->bhv", C, q[:, t]) / denominator[..., None]
    return h, C, n


def test_huge_input_gates():
    """ĩ in [-200, 200], far beyond float32's exp range, and initial stabilizers of ±150 (the
    first rows of head 0 have m = -120, where exp(-m) is clipped; the chunked form's padding
    has q = 0 with m > 103, where exp(-m) is 0 in float32): every form stays finite and
    equals the plain equations computed in float64 (on h and on the final C·exp(m), n·exp(m)),
    and the parallel and chunked forms equal the reference (h, C, n, m and gradients).
    q and k are positive so that nᵀq stays away from 0: with one key dominating,
    h = sign(q·k) v, whose gradient is a cancellation of two 1/|q·k| terms that random signs
    make ill-conditioned in any float32 form."""
    arrays = inputs(3, **SHAPE, input_gates=(-200.0, 200.0))
    arrays["input_gate"][:, :3, 0] = -120.0
    arrays["segment_starts"][:, :3] = False
    arrays.update(
        q=np.abs(arrays["q"]), k=np.abs(arrays["k"]), stabilizer=np.float32([[-150.0, 150.0]])
    )
    expected_h, expected_C, expected_n = numpy_unstabilized(**arrays)
    results = {"reference": run(arrays, "reference")}
    results.update({name: run(arrays, name, 16) for name in ("parallel", "chunked")})
    for actual in results.values():
        for leaf in jax.tree.leaves(actual):
            assert np.all(np.isfinite(np.asarray(leaf)))
        scale = np.exp(np.asarray(actual["stabilizer"], np.float64))
        unstabilized = {
            "h": actual["output"],
            "C": np.asarray(actual["cell"], np.float64).reshape(expected_C.shape)
            * scale[..., None, None],
            "n": np.asarray(actual["normalizer"], np.float64) * scale[..., None],
        }
        exact = {"h": expected_h, "C": expected_C, "n": expected_n}
        assert_relative(unstabilized, exact, CHUNKED_FLOAT32_RELATIVE)
        assert_relative(actual, results["reference"], CHUNKED_FLOAT32_RELATIVE)


def test_long_bfloat16_sequence_with_huge_input_gates_is_finite():
    length, heads, size = 16384, 2, 16
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.normal(size=(1, length, heads, size)), jnp.bfloat16) for _ in "qkv")
    input_gate = jnp.asarray(rng.uniform(100.0, 200.0, (1, length, heads)), jnp.bfloat16)
    forget_gate = jnp.asarray(rng.normal(0.0, 4.0, (1, length, heads)), jnp.bfloat16)

    @jax.jit
    def value_and_grads(*arrays):
        def loss(*arrays):
            h, final = mlstm(*arrays, implementation="chunked")
            return jnp.mean(h.astype(jnp.float32) ** 2) + jnp.mean(final.cell)

        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))(*arrays)

    value, grads = value_and_grads(q, k, v, input_gate, forget_gate)
    assert np.isfinite(float(value))
    for grad in grads:
        assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_pieces_with_the_state_equal_the_whole():
    """Two ragged pieces of 25 steps (chunks of 16) and the whole 50."""
    arrays = inputs(5, 1, 50, 2, 4, 4)
    sequence = {n: arrays[n] for n in ("q", "k", "v", "input_gate", "forget_gate")}
    options = dict(implementation="chunked", chunk_size=16)
    whole, whole_final = jit_mlstm(**sequence, **options)
    start = zero_mlstm_state(1, 2, 4, 4)
    first, middle = jit_mlstm(
        **{n: a[:, :25] for n, a in sequence.items()}, initial_state=start, **options
    )
    second, final = jit_mlstm(
        **{n: a[:, 25:] for n, a in sequence.items()}, initial_state=middle, **options
    )
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, **FLOAT32)
    for actual, expected in zip(final, whole_final, strict=True):
        np.testing.assert_allclose(actual, expected, **FLOAT32)


def test_bad_arguments_raise_clear_errors():
    q, v, gate = jnp.zeros((1, 5, 2, 4)), jnp.zeros((1, 5, 2, 3)), jnp.zeros((1, 5, 2))
    with pytest.raises(ValueError, match=r"q must be \[B, T, H, K\]"):
        mlstm(q[0], q[0], v[0], gate[0], gate[0])
    with pytest.raises(ValueError, match=r"forget_gate must be \[B, T, H\] = \(1, 5, 2\)"):
        mlstm(q, q, v, gate, gate[..., :1])
    state = MLSTMState(jnp.zeros((1, 2, 4, 3)), jnp.zeros((1, 2, 3)), jnp.zeros((1, 2)))
    with pytest.raises(
        ValueError, match=r"initial_state.normalizer must be \[B, H, K\] = \(1, 2, 4\)"
    ):
        mlstm(q, q, v, gate, gate, initial_state=state)
    with pytest.raises(ValueError, match="'pallas' cannot run: there are no Pallas kernels"):
        mlstm(q, q, v, gate, gate, implementation="pallas")
    with pytest.raises(ValueError, match="unknown implementation 'fast'.*'parallel'"):
        mlstm(q, q, v, gate, gate, implementation="fast")
