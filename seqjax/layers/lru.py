"""The Linear Recurrent Unit, from Orvieto et al. 2023, "Resurrecting Recurrent Neural
Networks for Long Sequences".

A complex diagonal recurrence in the exponential parametrization, with the input scaled by
the normalization γ that keeps the state's variance independent of |λ|:

    λ = exp(-exp(ν) + i·exp(θ)),   h_t = λ ⊙ h_{t-1} + γ ⊙ (B x_t),   y_t = Re(C h_t) + D ⊙ x_t

with γ = sqrt(1 - |λ|²) at initialization (then learned as log γ), complex B [N, D] and
C [D, N], and a real skip D [D]. λ is initialized uniformly on the ring r_min ≤ |λ| ≤ r_max
(uniform in area, so |λ|² is uniform in [r_min², r_max²]) with phase uniform in
[0, max_phase].
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_sizes
from seqjax.layers.partitioning import EMBED, HEADS, param
from seqjax.layers.registry import register
from seqjax.layers.s4 import complex64
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array


def ring_init(
    key: Array, state_size: int, *, r_min: float, r_max: float, max_phase: float
) -> tuple[Array, Array, Array]:
    """(ν, θ, log γ) [N] for λ uniform on the ring r_min ≤ |λ| ≤ r_max, arg λ in [0, max_phase].

    |λ|² = u₁ (r_max² - r_min²) + r_min² with u₁ ~ U[0, 1], so exp(ν) = -log|λ|; the phase
    is max_phase · u₂ = exp(θ). log γ = log sqrt(1 - |λ|²).
    """
    if not 0.0 <= r_min <= r_max < 1.0:
        raise ValueError(f"need 0 <= r_min <= r_max < 1, got r_min={r_min}, r_max={r_max}")
    if max_phase <= 0.0:
        raise ValueError(f"max_phase must be positive, got {max_phase}")
    radius_key, phase_key = jax.random.split(key)
    # Open interval: u = 0 would give θ = log 0, and u = 1 with r_max near 1 a zero ν.
    tiny = jnp.finfo(jnp.float32).tiny
    u1 = jax.random.uniform(radius_key, (state_size,), jnp.float32, minval=tiny, maxval=1.0)
    u2 = jax.random.uniform(phase_key, (state_size,), jnp.float32, minval=tiny, maxval=1.0)
    radius_squared = u1 * (r_max**2 - r_min**2) + r_min**2
    nu = jnp.log(-0.5 * jnp.log(radius_squared))
    theta = jnp.log(max_phase * u2)
    log_gamma = 0.5 * jnp.log1p(-radius_squared)
    return nu, theta, log_gamma


def lru_eigenvalues(nu: Array, theta: Array) -> Array:
    """λ = exp(-exp(ν) + i·exp(θ)), complex64 [N]; |λ| < 1 for any real ν."""
    return jnp.exp(complex64(-jnp.exp(nu), jnp.exp(theta)))


@register("lru")
class LRU(nnx.Module):
    """Linear Recurrent Unit; see the module docstring. x: [B, T, D], state: h [B, N] complex64.

    Options: ``state_size`` N (default d_model), and the ring of the initial eigenvalues
    ``r_min``, ``r_max`` and ``max_phase``. The defaults are the paper's long-range settings
    (0.9, 0.999, π/10): slow, slowly turning modes. The full disc (0, 1, 2π) of its appendix
    code leaves few modes that remember 50 steps, and on selective copying (T = 64) such a
    model stayed at chance for 600 steps where these defaults reached 65%.
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        state_size: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = math.pi / 10,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(state_size=state_size)
        self.state_size = state_size = state_size or d_model
        self.sequence_split = sequence_split
        nu, theta, log_gamma = ring_init(
            rngs.params(), state_size, r_min=r_min, r_max=r_max, max_phase=max_phase
        )
        self.nu, self.theta = param(nu, HEADS), param(theta, HEADS)
        self.log_gamma = param(log_gamma, HEADS)
        # As in the paper: B's parts N(0, 1 / 2D), so B x has unit variance; C's N(0, 1 / N).
        b_re, b_im, c_re, c_im = jax.random.split(rngs.params(), 4)
        b_std, c_std = (2 * d_model) ** -0.5, state_size**-0.5
        into, out_of = (d_model, state_size), (state_size, d_model)
        self.input_real = param(b_std * jax.random.normal(b_re, into), EMBED, HEADS)
        self.input_imag = param(b_std * jax.random.normal(b_im, into), EMBED, HEADS)
        self.output_real = param(c_std * jax.random.normal(c_re, out_of), HEADS, EMBED)
        self.output_imag = param(c_std * jax.random.normal(c_im, out_of), HEADS, EMBED)
        self.skip = param(jax.random.normal(rngs.params(), (d_model,)), EMBED)

    def init_state(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.state_size), jnp.complex64)

    def __call__(
        self, x: Array, *, state: Array | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        u = x.astype(jnp.float32)
        gamma = jnp.exp(self.log_gamma[...])
        inputs = complex64((u @ self.input_real[...]) * gamma, (u @ self.input_imag[...]) * gamma)
        h, final_state = linear_recurrence(
            lru_eigenvalues(self.nu[...], self.theta[...]),
            inputs,
            initial_state=state,
            segment_starts=segment_starts,
            sequence_split=self.sequence_split,
        )
        # Re(C h) = C_re h_re - C_im h_im, as two real matrix products.
        y = h.real @ self.output_real[...] - h.imag @ self.output_imag[...] + self.skip[...] * u
        return y.astype(x.dtype), final_state
