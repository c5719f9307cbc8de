"""The math of the diagonal state-space mixers (lru, s4d, s5, lmu) beyond the shared protocol
invariants: initializations, discretizations, the two S4D forms, and the LMU eigenbasis.

The references are independent: NumPy loops in float64, and matrix exponentials of the
dense continuous-time systems (scipy, float64).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import nnx
from layer_testing import apply
from layer_testing import assert_trees_close as assert_close
from numpy.polynomial import legendre
from tolerances import BFLOAT16

from seqjax import layers
from seqjax.layers import lmu, lru, s4


def float64_params(mixer):
    """The mixer's own parameters (not those of its submodules) as float64 arrays."""
    state = nnx.to_pure_dict(nnx.state(mixer))
    return {name: np.asarray(v, np.float64) for name, v in state.items() if not isinstance(v, dict)}


# LRU


def test_lru_ring_initialization():
    r_min, r_max, max_phase, size = 0.5, 0.95, np.pi / 3, 4096
    nu, theta, log_gamma = lru.ring_init(
        jax.random.key(0), size, r_min=r_min, r_max=r_max, max_phase=max_phase
    )
    eigenvalues = np.asarray(lru.lru_eigenvalues(nu, theta), np.complex128)
    radius, phase = np.abs(eigenvalues), np.angle(eigenvalues)
    assert r_min * (1 - 1e-6) <= radius.min() and radius.max() <= r_max * (1 + 1e-6)
    assert 0.0 <= phase.min() and phase.max() <= max_phase * (1 + 1e-6)
    # Uniform on the ring: |λ|² ~ U[r_min², r_max²] and arg λ ~ U[0, max_phase]. Means within
    # 5 standard errors, and the spread covers the interval.
    for values, low, high in ((radius**2, r_min**2, r_max**2), (phase, 0.0, max_phase)):
        span = high - low
        assert abs(values.mean() - (low + high) / 2) < 5 * span / np.sqrt(12 * size)
        assert values.min() < low + 0.01 * span and values.max() > high - 0.01 * span
    assert_close(np.exp(log_gamma), np.sqrt(1 - radius**2))


def test_lru_matches_numpy_recurrence():
    """y_t = Re(C h_t) + D x_t, h_t = λ h_{t-1} + γ (B x_t), from a carried state."""
    d_model, state_size, batch, length = 6, 10, 2, 7
    mixer = layers.create(
        "lru", d_model=d_model, rngs=nnx.Rngs(0), state_size=state_size, r_min=0.3, max_phase=3.0
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, length, d_model)).astype(np.float32)
    h = rng.normal(size=(batch, state_size)) + 1j * rng.normal(size=(batch, state_size))
    y, final_state = apply(mixer, jnp.asarray(x), jnp.asarray(h, jnp.complex64))

    p = float64_params(mixer)
    decay = np.exp(-np.exp(p["nu"]) + 1j * np.exp(p["theta"]))
    gamma = np.exp(p["log_gamma"])
    input_matrix = p["input_real"] + 1j * p["input_imag"]  # [D, N]
    output_matrix = p["output_real"] + 1j * p["output_imag"]  # [N, D]
    expected = np.zeros_like(x, np.float64)
    for t in range(length):
        h = decay * h + gamma * (x[:, t] @ input_matrix)
        expected[:, t] = (h @ output_matrix).real + p["skip"] * x[:, t]
    assert_close(y, expected)
    assert_close(final_state, h)


# S4D and S5: initialization and discretization


@pytest.mark.parametrize("size", [8, 16])
def test_hippo_normal_eigendecomposition(size):
    """The kept half of the eigenpairs and their conjugates rebuild HiPPO-LegS's normal part."""
    eigenvalues, eigenvectors = s4.hippo_legs_normal_eigens(size)
    a, _ = s4.hippo_legs(size)
    low_rank = np.sqrt(np.arange(size) + 0.5)
    normal = a + np.outer(low_rank, low_rank)
    # A = Σ_k λ_k v_k v_kᴴ over all eigenpairs = 2 Re(Σ over the kept half); the kept
    # eigenvectors are orthonormal and orthogonal to their conjugates.
    rebuilt = 2 * ((eigenvectors * eigenvalues) @ eigenvectors.conj().T).real
    np.testing.assert_allclose(rebuilt, normal, atol=1e-10)
    np.testing.assert_allclose(eigenvectors.conj().T @ eigenvectors, np.eye(size // 2), atol=1e-12)
    np.testing.assert_allclose(eigenvectors.T @ eigenvectors, 0, atol=1e-12)
    np.testing.assert_allclose(eigenvalues.real, -0.5)
    assert np.all(eigenvalues.imag > 0)
    # S5's block-diagonal initialization: J copies of the size / J system.
    block_values, block_vectors = s4.s5_init(size, 2)
    rebuilt = 2 * ((block_vectors * block_values) @ block_vectors.conj().T).real
    half, _ = s4.hippo_legs(size // 2)
    half_normal = half + np.outer(low_rank[: size // 2], low_rank[: size // 2])
    np.testing.assert_allclose(
        rebuilt, scipy.linalg.block_diag(half_normal, half_normal), atol=1e-10
    )


def zoh_by_matrix_exponential(eigenvalue, input_row, step):
    """Ā, B̄ of one complex mode h' = λ h + b·u (u real [M]) from the expm of the real
    augmented system [[ΔA, ΔB], [0, 0]], with h as (Re h, Im h); float64."""
    inputs = input_row.shape[0]
    augmented = np.zeros((2 + inputs, 2 + inputs))
    augmented[:2, :2] = [[eigenvalue.real, -eigenvalue.imag], [eigenvalue.imag, eigenvalue.real]]
    augmented[0, 2:], augmented[1, 2:] = input_row.real, input_row.imag
    exponential = scipy.linalg.expm(step * augmented)
    decay = exponential[0, 0] + 1j * exponential[1, 0]
    return decay, exponential[0, 2:] + 1j * exponential[1, 2:]


def test_s4d_and_s5_zoh_match_the_matrix_exponential():
    d_model = 4
    s4d_mixer = layers.create("s4d", d_model=d_model, rngs=nnx.Rngs(0), dt_max=0.5)
    s5_mixer = layers.create("s5", d_model=d_model, rngs=nnx.Rngs(0), state_size=8)
    params = {"s4d": float64_params(s4d_mixer), "s5": float64_params(s5_mixer)}

    def continuous(p):
        return -np.exp(p["log_rate"]) + 1j * p["frequency"], p["input_real"] + 1j * p["input_imag"]

    # S4D: one step per channel; SISO modes [D, N/2]. Check the slowest and fastest modes.
    decay, input_matrix, _ = s4d_mixer.discretized()
    eigenvalues, b = continuous(params["s4d"])
    steps = np.exp(params["s4d"]["log_step"])
    for channel in range(d_model):
        for mode in (0, eigenvalues.shape[1] - 1):
            expected = zoh_by_matrix_exponential(
                eigenvalues[channel, mode], b[channel, mode : mode + 1], steps[channel]
            )
            assert_close(decay[channel, mode], expected[0])
            assert_close(input_matrix[channel, mode], expected[1][0])
    # S5: one step per mode; MIMO rows B̃ [P/2, D].
    decay, input_matrix = s5_mixer.discretized()
    eigenvalues, b = continuous(params["s5"])
    steps = np.exp(params["s5"]["log_step"])
    for mode in range(eigenvalues.shape[0]):
        expected = zoh_by_matrix_exponential(eigenvalues[mode], b[mode], steps[mode])
        assert_close(decay[mode], expected[0])
        assert_close(input_matrix[mode], expected[1])


# S4D: convolution mode == recurrence mode


@pytest.mark.parametrize("packed", [False, True], ids=["fft", "segments"])
def test_s4d_convolution_equals_recurrence(packed):
    """Outputs, final state, and gradients w.r.t. parameters, inputs and the initial state.

    A small state (N = 8): with HiPPO-LegS at N = 64 the fastest modes turn by Δω ≈ 130 rad a
    step, and the float32 gradient w.r.t. log Δ of either form is then ~1e-4 (relative) away
    from float64, so the two forms cannot agree to 1e-5 either; at N = 8 both are within it.
    """
    batch, length, d_model, state_size = 2, 16, 8, 8
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, length, d_model)), jnp.float32)
    modes = (batch, d_model, state_size // 2)
    h0 = jnp.asarray(rng.normal(size=modes) + 1j * rng.normal(size=modes), jnp.complex64)
    output_weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    state_weights = jnp.asarray(rng.normal(size=modes), jnp.float32)
    segment_starts = jnp.asarray(rng.random((batch, length)) < 0.2) if packed else None

    def loss(mixer, x, h0):
        y, final_state = mixer(x, state=h0, segment_starts=segment_starts)
        return jnp.sum(y * output_weights) + jnp.sum(final_state.real * state_weights), (
            y,
            final_state,
        )

    results = {}
    for mode in ("recurrence", "convolution"):
        mixer = layers.create(
            "s4d", d_model=d_model, rngs=nnx.Rngs(0), state_size=state_size, mode=mode
        )
        grad_fn = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
        (_, outputs), grads = grad_fn(mixer, x, h0)
        results[mode] = (outputs, (nnx.to_pure_dict(grads[0]), *grads[1:]))
    jax.tree.map(assert_close, results["convolution"], results["recurrence"])


# LMU


def dense_legendre_memory(u, order, theta):
    """m_t = Ā m_{t-1} + B̄ u_t with Ā = expm(A), B̄ = A⁻¹(Ā - I)B, a float64 NumPy loop."""
    a, b = lmu.legendre_delay_system(order, theta)
    decay = scipy.linalg.expm(a)
    input_vector = np.linalg.solve(a, (decay - np.eye(order)) @ b)
    memory, m = np.zeros((*u.shape, order)), np.zeros((*u.shape[:1], *u.shape[2:], order))
    for t in range(u.shape[1]):
        m = m @ decay.T + u[:, t, ..., None] * input_vector
        memory[:, t] = m
    return memory


@pytest.mark.parametrize(("order", "theta"), [(4, 8.0), (6, 64.0), (6, 16.0)])
def test_lmu_eigenbasis_equals_dense_recurrence(order, theta):
    """Orders up to 6: the eigenvectors' condition number (≈ 260 at q = 6, 3.4e3 at q = 8)
    multiplies float32 rounding, and at q = 8 the error reaches ~2e-5."""
    u = np.random.default_rng(0).normal(size=(2, 40, 3)).astype(np.float32)
    memory, final_state = lmu.legendre_memory(jnp.asarray(u), order, theta)
    expected = dense_legendre_memory(u.astype(np.float64), order, theta)
    assert_close(memory, expected)
    _, _, eigenvectors = lmu.diagonal_legendre_memory(order, theta)
    assert_close((np.asarray(final_state) @ eigenvectors.T).real, expected[:, -1])


def test_lmu_memory_decodes_the_delayed_input():
    """The memory holds the window: u(t - rθ) ≈ Σ_i m_i P_i(2r - 1) (shifted Legendre)."""
    order, theta, period = 6, 32.0, 80.0
    steps = np.arange(200)
    u = np.sin(2 * np.pi * steps / period)
    memory, _ = lmu.legendre_memory(jnp.asarray(u[None, :, None], jnp.float32), order, theta)
    memory = np.asarray(memory)[0, :, 0]
    for fraction in (0.0, 0.5, 1.0):
        polynomials = legendre.legvander(np.array([2 * fraction - 1]), order - 1)[0]
        delayed = np.sin(2 * np.pi * (steps - fraction * theta) / period)
        # An order-6 approximation of a delay: a few percent, after the first window.
        assert np.abs(memory @ polynomials - delayed)[100:].max() < 0.1


# All four


@pytest.mark.parametrize("name", ["lru", "s4d", "s5", "lmu"])
def test_bfloat16_parameters_and_inputs_compute_in_float32(name):
    """Training in bfloat16 casts the parameters too (training/step.py): the complex ones
    then come from bfloat16 parts, and the state space still runs in float32 (complex64).
    Against the same rounded parameters in float32, only the compute dtype differs."""
    graphdef, params = nnx.split(layers.create(name, d_model=8, rngs=nnx.Rngs(0)))
    rounded = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
    x = jax.random.normal(jax.random.key(1), (2, 5, 8), jnp.bfloat16)
    y, state = apply(nnx.merge(graphdef, rounded), x)
    as_float32 = jax.tree.map(lambda p: p.astype(jnp.float32), rounded)
    expected, expected_state = apply(nnx.merge(graphdef, as_float32), x.astype(jnp.float32))
    assert y.dtype == jnp.bfloat16
    assert_close(y.astype(jnp.float32), expected, BFLOAT16)
    assert jax.tree.map(lambda s: s.dtype, state) == jax.tree.map(lambda s: s.dtype, expected_state)
    assert_close(state, expected_state, BFLOAT16)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("lru", dict(r_max=1.0), "r_max"),
        ("s4d", dict(mode="fft"), "mode"),
        ("s4d", dict(init="legt"), "init"),
        ("s4d", dict(state_size=7), "even"),
        ("s5", dict(state_size=12, num_blocks=4), "num_blocks"),
        ("lmu", dict(theta=0.0), "theta"),
    ],
)
def test_invalid_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        layers.create(name, d_model=8, rngs=nnx.Rngs(0), **options)
