"""Diagonal state-space mixers with HiPPO initialization and zero-order-hold discretization.

``s4d``: "On the Parameterization and Initialization of Diagonal State Space Models" (Gu et
al. 2022). D independent single-input single-output SSMs, one per channel, each with N/2
complex modes (the conjugate halves are implied):

    Ā = exp(ΔA),  B̄ = (Ā - 1)/A · B,  h_t = Ā ⊙ h_{t-1} + B̄ u_t,  y_t = 2 Re(C h_t) + D u_t

run either as that recurrence or, as in "Combining Recurrent, Convolutional, and
Continuous-time Models with Linear State-Space Layers" (Gu et al. 2021), as the causal
convolution y = K * u + D u with K_k = 2 Re(C Ā^k B̄), applied by FFT.

``s5``: "Simplified State Space Layers for Sequence Modeling" (Smith et al. 2023). One
multi-input multi-output SSM with P complex modes shared by all channels, initialized by
diagonalizing the normal part of HiPPO-LegS (A = V Λ V*, B̃ = V* B, C̃ = C V), with a step
Δ per mode; only the P/2 modes with positive frequency are kept (conjugate symmetry):

    Λ̄ = exp(ΛΔ),  B̄ = (Λ̄ - 1)/Λ · B̃,  h_t = Λ̄ ⊙ h_{t-1} + B̄ u_t,  y_t = 2 Re(C̃ h_t) + D ⊙ u_t

In both the real part of every eigenvalue is -exp(·) of a parameter, so the systems stay
stable whatever the optimizer does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqjax.layers.checks import check_choice, check_sizes
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.layers.registry import register
from seqjax.ops import finite
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

S4D_INITS = ("legs", "lin")


# Initialization (NumPy, float64, on the host).


def hippo_legs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegS (Gu et al. 2020): A [N, N] and B [N], float64.

    A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 for n < k;  B_n = sqrt(2n+1).
    """
    root = np.sqrt(2.0 * np.arange(size) + 1.0)
    a = -np.tril(np.outer(root, root), -1) - np.diag(np.arange(size) + 1.0)
    return a, root.copy()


def hippo_legs_normal_eigens(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The eigenvalues [N/2] and unit eigenvectors [N, N/2] of the normal part of HiPPO-LegS
    with positive imaginary parts (the rest are their conjugates).

    A + P Pᵀ with P_n = sqrt(n + 1/2) is -I/2 + S with S skew-symmetric, so it is normal and
    its eigenvalues are -1/2 + iω with ω the eigenvalues of the Hermitian matrix -iS.
    """
    if size < 2 or size % 2:
        raise ValueError(f"the HiPPO state size must be even and at least 2, got {size}")
    a, _ = hippo_legs(size)
    low_rank = np.sqrt(np.arange(size) + 0.5)
    skew = a + np.outer(low_rank, low_rank) + 0.5 * np.eye(size)
    frequencies, eigenvectors = np.linalg.eigh(-1j * skew)
    keep = np.argsort(-frequencies)[: size // 2]
    return -0.5 + 1j * frequencies[keep], eigenvectors[:, keep]


def s4d_init(kind: str, state_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(A, B), complex [N/2]: S4D-LegS (the normal HiPPO-LegS eigenvalues, B projected onto
    their eigenvectors, B̃ = V* B) or S4D-Lin (A_n = -1/2 + iπn, B_n = 1)."""
    if kind == "legs":
        eigenvalues, eigenvectors = hippo_legs_normal_eigens(state_size)
        _, b = hippo_legs(state_size)
        return eigenvalues, eigenvectors.conj().T @ b
    if kind == "lin":
        modes = np.arange(state_size // 2)
        return -0.5 + 1j * np.pi * modes, np.ones(state_size // 2, np.complex128)
    raise ValueError(f"unknown S4D init {kind!r}; expected one of {S4D_INITS}")


def s5_init(state_size: int, num_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Λ [P/2] and V [P, P/2]: ``num_blocks`` copies of the normal HiPPO-LegS of size P / J on
    the diagonal (S5's block-diagonal initialization), conjugate halves dropped."""
    if num_blocks < 1 or state_size % num_blocks or (state_size // num_blocks) % 2:
        raise ValueError(
            f"state_size ({state_size}) must split into num_blocks ({num_blocks}) blocks "
            "of even size"
        )
    eigenvalues, eigenvectors = hippo_legs_normal_eigens(state_size // num_blocks)
    return np.tile(eigenvalues, num_blocks), np.kron(np.eye(num_blocks), eigenvectors)


def log_uniform(key: Array, shape: tuple[int, ...], low: float, high: float) -> Array:
    """log Δ with Δ log-uniform in [low, high]."""
    if not 0.0 < low <= high:
        raise ValueError(f"need 0 < dt_min <= dt_max, got {low} and {high}")
    return jax.random.uniform(key, shape, jnp.float32, np.log(low), np.log(high))


# Discretization and the two forms of the S4D layer (pure JAX).


def complex64(real: Array, imag: Array) -> Array:
    """real + i·imag in complex64, from parts of any float dtype (bfloat16 ones too, as
    training in bfloat16 casts the parameters: complex numbers have no bfloat16 form)."""
    return jax.lax.complex(real.astype(jnp.float32), imag.astype(jnp.float32))


def eigenvalues_from(log_rate: Array, frequency: Array) -> Array:
    """A = -exp(log_rate) + i·frequency: a stable eigenvalue for any parameter value."""
    return complex64(-jnp.exp(log_rate), frequency)


def zoh(eigenvalues: Array, input_matrix: Array, step: Array) -> tuple[Array, Array]:
    """Zero-order hold of the diagonal system h' = A h + B u with step Δ:
    Ā = exp(ΔA), B̄ = A⁻¹(Ā - 1) B.

    ``step`` broadcasts against ``eigenvalues``; ``input_matrix`` has the eigenvalues' shape
    and, for a multi-input system, trailing input axes (S5's B̃ [P/2, D]).
    """
    decay = jnp.exp(step * eigenvalues)
    gain = (decay - 1.0) / eigenvalues
    gain = gain.reshape(gain.shape + (1,) * (input_matrix.ndim - gain.ndim))
    return decay, gain * input_matrix


def s4d_recurrence(
    decay: Array, input_matrix: Array, output_matrix: Array, u: Array, **op_options
) -> tuple[Array, Array]:
    """y_t = 2 Re(C h_t) with h_t = Ā ⊙ h_{t-1} + B̄ u_t, per channel.

    decay Ā, input_matrix B̄, output_matrix C: [D, N/2] complex; u: [B, T, D] float32;
    op_options: of ``linear_recurrence`` (initial_state h [B, D, N/2], segment_starts,
    sequence_split).
    Returns y [B, T, D] and h_{T-1} [B, D, N/2].
    """
    h, final_state = linear_recurrence(decay, u[..., None] * input_matrix, **op_options)
    return 2.0 * _real_product(h, output_matrix), final_state


def s4d_convolution(
    decay: Array,
    input_matrix: Array,
    output_matrix: Array,
    u: Array,
    *,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
) -> tuple[Array, Array]:
    """The same map as ``s4d_recurrence`` as a convolution, with the state in closed form.

    y_t = Σ_{s≤t} K_{t-s} u_s + 2 Re(C Ā^{t+1} h_{-1}),
    K_k = 2 Re(C Ā^k B̄),  h_{T-1} = Σ_s Ā^{T-1-s} B̄ u_s + Ā^T h_{-1}.
    Without segments the convolution is an FFT over 2T points (O(T log T)); with
    ``segment_starts`` it is the kernel's Toeplitz matrix masked to same-segment pairs
    (O(T²) per channel), and h_{-1} reaches only the tokens before the first start.

    decay Ā, input_matrix B̄, output_matrix C: [D, N/2] complex; u: [B, T, D] float32.
    """
    batch, length, _ = u.shape
    # Ā^k as a cumulative product, not exp(kΔA): the phase kΔω reaches thousands of radians
    # for the fast LegS modes (|ω| up to ~N²/3), and rounding it in float32 costs more than
    # the k products (relative error ~kε, as in the recurrence).
    ones = jnp.ones((1, *decay.shape), decay.dtype)
    powers = jax.lax.cumprod(
        jnp.concatenate([ones, jnp.broadcast_to(decay, (length, *decay.shape))])
    )
    kernel = 2.0 * _real_product(powers[:length], output_matrix * input_matrix)  # [T, D]

    if segment_starts is None:
        y = causal_fft_convolution(u, kernel)
        segment_ids = jnp.zeros((batch, length), jnp.int32)
    else:
        segment_ids = jnp.cumsum(segment_starts.astype(jnp.int32), axis=1)
        y = segmented_convolution(u, kernel, segment_ids)

    # Tokens in the last segment feed the final state; h_{-1} only if no segment started.
    in_last_segment = segment_ids == segment_ids[:, -1:]
    final_state = input_matrix * jnp.einsum(
        "sdn,bsd->bdn", powers[length - 1 :: -1], jnp.where(in_last_segment[..., None], u, 0.0)
    )
    if initial_state is not None:
        before_any_start = (segment_ids == 0)[..., None]
        carried = 2.0 * jnp.einsum("tdn,bdn->btd", powers[1:] * output_matrix, initial_state).real
        y = y + jnp.where(before_any_start, carried, 0.0)
        final_state = final_state + jnp.where(
            before_any_start[:, -1:], powers[length] * initial_state, 0.0
        )
    return y, final_state


def causal_fft_convolution(u: Array, kernel: Array) -> Array:
    """y_t = Σ_{s≤t} kernel_{t-s} u_s per channel, by FFT over 2T points (no wrap-around).

    The FFT mixes every position, so non-finite entries are transformed as 0 and put back as
    NaN (seqjax.ops.finite): y is NaN from the first non-finite u_s of a row on, and from
    lag k on in every row for a non-finite kernel_k.

    u: [B, T, D], kernel: [T, D], both real."""
    length = u.shape[1]
    (u,), nonfinite = finite.zero_nonfinite(u)
    (kernel,), kernel_nonfinite = finite.zero_nonfinite(kernel[None])
    spectrum = jnp.fft.rfft(u, n=2 * length, axis=1) * jnp.fft.rfft(kernel[0], n=2 * length, axis=0)
    y = jnp.fft.irfft(spectrum, n=2 * length, axis=1)[:, :length]
    return finite.nan_from_first(nonfinite | kernel_nonfinite, y)


def segmented_convolution(u: Array, kernel: Array, segment_ids: Array) -> Array:
    """y_t = Σ_{s≤t, seg(s)=seg(t)} kernel_{t-s} u_s: the masked Toeplitz product.

    Its zeros above the diagonal multiply later inputs inside the product, so non-finite
    entries are treated as in ``causal_fft_convolution``."""
    length = u.shape[1]
    (u,), nonfinite = finite.zero_nonfinite(u)
    (kernel,), kernel_nonfinite = finite.zero_nonfinite(kernel[None])
    lag = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
    toeplitz = jnp.where((lag >= 0)[..., None], kernel[0][jnp.maximum(lag, 0)], 0.0)  # [T, T, D]
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    y = jnp.einsum("tsd,btsd->btd", toeplitz, jnp.where(same_segment[..., None], u[:, None], 0))
    return finite.nan_from_first(nonfinite | kernel_nonfinite, y)


def _real_product(h: Array, output_matrix: Array) -> Array:
    """Re(Σ_n C_n h_n) over the last axis, from real parts (no complex product formed)."""
    return jnp.sum(h.real * output_matrix.real - h.imag * output_matrix.imag, axis=-1)


def _complex_param(values: Array, *axes: str | None) -> tuple[nnx.Param, nnx.Param]:
    """The real and imaginary parts of ``values`` as float32 parameters with logical ``axes``."""
    return (
        param(jnp.asarray(values.real, jnp.float32), *axes),
        param(jnp.asarray(values.imag, jnp.float32), *axes),
    )


S4D_MODES = {"recurrence": s4d_recurrence, "convolution": s4d_convolution}


@register("s4d")
class S4D(nnx.Module):
    """S4D layer; see the module docstring. x: [B, T, D]; state: h [B, D, N/2] complex64.

    The SSM output goes through GELU and a position-wise linear layer with a GLU, as in the
    S4/S4D layer (the SSM itself mixes no channels). Options: ``state_size`` N (even),
    ``init`` ("legs" or "lin"), the range of the initial steps ``dt_min``/``dt_max``, and
    ``mode``: "recurrence" (linear_recurrence, the default) or "convolution" (FFT). Both
    compute the same function, state and gradients, with states passed between pieces and
    segment resets. The recurrence is the default because it is exactly causal: the FFT
    mixes every position into every other at rounding level (gradients of ~1e-9 reach
    future inputs), which the exact causality check of the mixer protocol refuses. Only the
    recurrence runs sequence-parallel.
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        state_size: int = 64,
        init: str = "legs",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        mode: str = "recurrence",
        sequence_split: SequenceSplit | None = None,
    ):
        check_choice("mode", mode, S4D_MODES)
        if sequence_split is not None and mode == "convolution":
            raise ValueError(
                "mode 'convolution' cannot run sequence-parallel: its FFT runs over the whole "
                "sequence; use mode 'recurrence'"
            )
        if state_size < 2 or state_size % 2:
            raise ValueError(f"state_size must be even and at least 2, got {state_size}")
        self.mode, self.sequence_split = mode, sequence_split
        self.num_modes = state_size // 2
        eigenvalues, input_matrix = s4d_init(init, state_size)
        per_channel = functools.partial(np.broadcast_to, shape=(d_model, self.num_modes))
        # One SSM per channel of the model width, its N/2 modes never split.
        per_mode = (EMBED, None)
        log_rate = np.log(-per_channel(eigenvalues.real))
        self.log_rate = param(jnp.asarray(log_rate, jnp.float32), *per_mode)
        self.frequency = param(jnp.asarray(per_channel(eigenvalues.imag), jnp.float32), *per_mode)
        self.input_real, self.input_imag = _complex_param(per_channel(input_matrix), *per_mode)
        # C ~ CN(0, 1): each part N(0, 1/2), as in the S4D reference code.
        c_key_real, c_key_imag = jax.random.split(rngs.params())
        shape = (d_model, self.num_modes)
        self.output_real = param(0.5**0.5 * jax.random.normal(c_key_real, shape), *per_mode)
        self.output_imag = param(0.5**0.5 * jax.random.normal(c_key_imag, shape), *per_mode)
        log_step = log_uniform(rngs.params(), (d_model,), dt_min, dt_max)
        self.log_step = param(log_step, EMBED)
        self.skip = param(jax.random.normal(rngs.params(), (d_model,)), EMBED)
        self.output = linear(d_model, 2 * d_model, EMBED, HEADS, rngs=rngs)

    def init_state(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, *self.log_rate.shape), jnp.complex64)

    def discretized(self) -> tuple[Array, Array, Array]:
        """(Ā, B̄, C), complex [D, N/2]."""
        eigenvalues = eigenvalues_from(self.log_rate[...], self.frequency[...])
        step = jnp.exp(self.log_step[...])
        input_matrix = complex64(self.input_real[...], self.input_imag[...])
        decay, input_matrix = zoh(eigenvalues, input_matrix, step[:, None])
        output_matrix = complex64(self.output_real[...], self.output_imag[...])
        return decay, input_matrix, output_matrix

    def __call__(
        self, x: Array, *, state: Array | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        u = x.astype(jnp.float32)
        decay, input_matrix, output_matrix = self.discretized()
        # (The constructor refused a split for the convolution.)
        split = {"sequence_split": self.sequence_split} if self.mode == "recurrence" else {}
        y, final_state = S4D_MODES[self.mode](
            decay,
            input_matrix,
            output_matrix,
            u,
            initial_state=state,
            segment_starts=segment_starts,
            **split,
        )
        y = jax.nn.gelu(y + self.skip[...] * u)
        return jax.nn.glu(self.output(y), axis=-1).astype(x.dtype), final_state


@register("s5")
class S5(nnx.Module):
    """S5 layer; see the module docstring. x: [B, T, D]; state: h [B, P/2] complex64.

    Options: ``state_size`` P (even; default d_model), ``num_blocks`` J (the block-diagonal
    HiPPO-N initialization, P/J even), and the range of the initial steps ``dt_min``/``dt_max``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        state_size: int | None = None,
        num_blocks: int = 1,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(state_size=state_size, num_blocks=num_blocks)
        state_size = state_size or d_model
        self.sequence_split = sequence_split
        eigenvalues, eigenvectors = s5_init(state_size, num_blocks)
        self.num_modes = num_modes = state_size // 2
        # The P/2 modes are S5's inner width.
        self.log_rate = param(jnp.asarray(np.log(-eigenvalues.real), jnp.float32), HEADS)
        self.frequency = param(jnp.asarray(eigenvalues.imag, jnp.float32), HEADS)
        # B [P, D] and C [D, P] real, LeCun-normal, then moved into the eigenbasis (in jax, so
        # that the model can be built abstractly, as training does).
        b_key, c_key = jax.random.split(rngs.params())
        b = jax.random.normal(b_key, (state_size, d_model)) / d_model**0.5
        c = jax.random.normal(c_key, (d_model, state_size)) / state_size**0.5
        vectors = jnp.asarray(eigenvectors, jnp.complex64)
        by_mode = (HEADS, EMBED)
        self.input_real, self.input_imag = _complex_param(vectors.conj().T @ b, *by_mode)
        self.output_real, self.output_imag = _complex_param((c @ vectors).T, *by_mode)
        self.log_step = param(log_uniform(rngs.params(), (num_modes,), dt_min, dt_max), HEADS)
        self.skip = param(jax.random.normal(rngs.params(), (d_model,)), EMBED)

    def init_state(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.num_modes), jnp.complex64)

    def discretized(self) -> tuple[Array, Array]:
        """(Λ̄ [P/2], B̄ [P/2, D]), complex."""
        eigenvalues = eigenvalues_from(self.log_rate[...], self.frequency[...])
        input_matrix = complex64(self.input_real[...], self.input_imag[...])
        return zoh(eigenvalues, input_matrix, jnp.exp(self.log_step[...]))

    def __call__(
        self, x: Array, *, state: Array | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        u = x.astype(jnp.float32)
        decay, input_matrix = self.discretized()
        inputs = jax.lax.complex(u @ input_matrix.real.T, u @ input_matrix.imag.T)
        h, final_state = linear_recurrence(
            decay,
            inputs,
            initial_state=state,
            segment_starts=segment_starts,
            sequence_split=self.sequence_split,
        )
        # 2 Re(C̃ h): the dropped conjugate modes contribute the complex conjugate.
        y = 2.0 * (h.real @ self.output_real[...] - h.imag @ self.output_imag[...])
        return (y + self.skip[...] * u).astype(x.dtype), final_state
