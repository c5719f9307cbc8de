"""The Legendre Memory Unit, from Voelker, Kajić & Eliasmith 2019, "Legendre Memory Units:
Continuous-Time Representation in Recurrent Neural Networks", in the linear time-invariant
form of Chilkuri & Eliasmith 2021, "Parallelizing Legendre Memory Unit Training".

The memory m_t [q] holds the first q Legendre coefficients of the encoded input u over a
sliding window of θ steps: the delay system θ m' = A m + B u with

    A_ij = (2i+1) · (-1 if i < j else (-1)^(i-j+1)),   B_i = (2i+1) (-1)^i

is discretized once by zero-order hold with a unit step (Ā = exp(A/θ), B̄ = A⁻¹(Ā - I)B), and

    u_t = e x_t,   m_t = Ā m_{t-1} + B̄ u_t,   y_t = W [m_t; x_t] + b.

Ā is fixed, so the memory runs as a diagonal recurrence in its eigenbasis, found once on the
host: Ā = V diag(λ̄) V⁻¹, z_t = λ̄ ⊙ z_{t-1} + V⁻¹B̄ u_t, m_t = Re(V z_t). A is not normal,
and the eigenbasis is ill-conditioned: cond(V) ≈ 21, 260, 3.4e3, 4.5e4, 6e5 for
q = 4, 6, 8, 10, 12, and float32 rounding in z reaches m amplified by about that factor.
The default order 6 keeps m within 1e-5 of the dense float32 recurrence; higher orders work
but the memory is then only accurate to about cond(V) · 6e-8.
"""

import functools

import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqjax.layers.checks import check_size, check_sizes
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.layers.registry import register
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array


def legendre_delay_system(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """The continuous-time Legendre delay system (A / θ [q, q], B / θ [q]), float64."""
    check_size("order", order)
    if theta <= 0:
        raise ValueError(f"theta (the window, in steps) must be positive, got {theta}")
    rows, cols = np.meshgrid(np.arange(order), np.arange(order), indexing="ij")
    scale = (2.0 * np.arange(order) + 1.0) / theta
    a = np.where(rows < cols, -1.0, (-1.0) ** (rows - cols + 1)) * scale[:, None]
    b = (-1.0) ** np.arange(order) * scale
    return a, b


@functools.lru_cache(maxsize=32)
def diagonal_legendre_memory(order: int, theta: float) -> tuple[np.ndarray, ...]:
    """(λ̄ [q], V⁻¹B̄ [q], V [q, q]), complex128: the ZOH-discretized delay system in the
    eigenbasis of Ā. Ā = exp(A) has A's eigenvectors, so with A = V diag(λ) V⁻¹ the ZOH of
    every mode is λ̄ = exp(λ), (V⁻¹B̄) = (λ̄ - 1)/λ · V⁻¹B."""
    a, b = legendre_delay_system(order, theta)
    eigenvalues, eigenvectors = np.linalg.eig(a)
    eigenvectors = eigenvectors / np.linalg.norm(eigenvectors, axis=0)
    decay = np.exp(eigenvalues)
    input_vector = (decay - 1.0) / eigenvalues * np.linalg.solve(eigenvectors, b)
    arrays = (decay, input_vector, eigenvectors)
    for array in arrays:
        array.setflags(write=False)  # cached: shared by every caller
    return arrays


def legendre_memory(u: Array, order: int, theta: float, **op_options) -> tuple[Array, Array]:
    """m_t = Ā m_{t-1} + B̄ u_t for every channel of u [B, T, M], run in the eigenbasis;
    op_options: of ``linear_recurrence`` (initial_state z [B, M, q], segment_starts,
    sequence_split).

    Returns the memory m [B, T, M, q] float32 and the eigenbasis state z_{T-1} [B, M, q]
    complex64 (m = Re(V z)).
    """
    decay, input_vector, eigenvectors = diagonal_legendre_memory(order, theta)
    z, final_state = linear_recurrence(
        jnp.asarray(decay, jnp.complex64),
        u[..., None] * jnp.asarray(input_vector, jnp.complex64),
        **op_options,
    )
    # Re(V z) = V_re z_re - V_im z_im.
    memory = jnp.einsum("btmj,ij->btmi", z.real, eigenvectors.real.astype(np.float32))
    memory -= jnp.einsum("btmj,ij->btmi", z.imag, eigenvectors.imag.astype(np.float32))
    return memory, final_state


@register("lmu")
class LMU(nnx.Module):
    """Parallel (LTI) Legendre Memory Unit; see the module docstring. x: [B, T, D];
    state: the memory in Ā's eigenbasis, z [B, M, q] complex64.

    Options: ``order`` q (Legendre coefficients per memory channel), ``theta`` θ (the
    window, in steps) and ``memory_size`` M (channels encoded from x; default D / 4).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        order: int = 6,
        theta: float = 64.0,
        memory_size: int | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(memory_size=memory_size)
        self.order, self.theta = order, float(theta)
        self.memory_size = memory_size or max(1, d_model // 4)
        self.sequence_split = sequence_split
        diagonal_legendre_memory(self.order, self.theta)  # validates order and theta
        self.encoder = linear(d_model, self.memory_size, EMBED, HEADS, use_bias=False, rngs=rngs)
        # From the memory of every channel and x together: [M·q + D, D].
        self.output = linear(self.memory_size * order + d_model, d_model, None, EMBED, rngs=rngs)

    def init_state(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.memory_size, self.order), jnp.complex64)

    def __call__(
        self, x: Array, *, state: Array | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        batch, length, _ = x.shape
        inputs = x.astype(jnp.float32)
        memory, final_state = legendre_memory(
            self.encoder(inputs),
            self.order,
            self.theta,
            initial_state=state,
            segment_starts=segment_starts,
            sequence_split=self.sequence_split,
        )
        features = jnp.concatenate([memory.reshape(batch, length, -1), inputs], axis=-1)
        return self.output(features).astype(x.dtype), final_state
