"""Mamba: a gated block around a selective state space (S6) layer.

"Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (Gu & Dao, 2023). Per
channel d of the inner width E and state index n, with input-dependent Δ_t, B_t, C_t:

    h_t[d, n] = exp(Δ_t[d] A[d, n]) h_{t-1}[d, n] + Δ_t[d] B_t[n] u_t[d]
    y_t[d] = Σ_n C_t[n] h_t[d, n] + D[d] u_t[d]

(zero-order hold for A, the simplified Euler step Δ B for B, as in the paper), with
A = -exp(A_log) < 0: the op ``seqjax.ops.selective_scan``. The block: x → in_proj → (u, z);
u → causal conv → SiLU → S6 → ⊙ SiLU(z) → out_proj.

With ``negative_eigenvalues=True`` the decays exp(Δ A) ∈ (0, 1) are mapped to
2 exp(Δ A) - 1 ∈ (-1, 1) ("Unlocking State-Tracking in Linear RNNs Through Negative
Eigenvalues", Grazzi et al., 2025), which lets the state flip sign (parity, modular counts).
With ``bc_dt_norm_epsilon`` ε, the low-rank Δ input, B_t and C_t are each RMS-normalized
(no learned scale) before use, as in Falcon Mamba ("Falcon Mamba: The First Competitive
Attention-free 7B Language Model", Zuo et al., 2024).

State: {"conv": the last conv_width - 1 inputs of the conv [B, W-1, E],
"ssm": h [B, E, N]}.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_number, check_sizes
from seqjax.layers.conv import ShortConv
from seqjax.layers.initializers import symmetric_uniform
from seqjax.layers.norms import rms_normalize
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.layers.registry import register
from seqjax.ops.selective_scan import DEFAULT_CHUNK_SIZE, selective_scan
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree


def s4d_real_log_rates(inner_size: int, state_size: int) -> Array:
    """A_log for the S4D-Real initialization A[d, n] = -(n + 1) (Gu et al., 2022)."""
    rates = jnp.arange(1, state_size + 1, dtype=jnp.float32)
    return jnp.log(jnp.broadcast_to(rates, (inner_size, state_size)))


def step_size_bias(key: Array, size: int, dt_min: float, dt_max: float) -> Array:
    """A bias b with softplus(b) log-uniform in [dt_min, dt_max], as in the Mamba code."""
    if not 0.0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got {dt_min} and {dt_max}")
    log_dt = jax.random.uniform(key, (size,), minval=math.log(dt_min), maxval=math.log(dt_max))
    dt = jnp.maximum(jnp.exp(log_dt), 1e-4)
    return dt + jnp.log(-jnp.expm1(-dt))  # softplus⁻¹(dt)


@register("mamba")
class Mamba(nnx.Module):
    """The Mamba block (Gu & Dao, 2023); see the module docstring. x: [B, T, D].

    Options: ``state_size`` N, ``expand`` (E = expand * D), ``conv_width``, ``dt_rank`` (rank
    of the Δ projection; None for ⌈D / 16⌉), ``dt_min``/``dt_max`` (range of the initial Δ),
    ``negative_eigenvalues``, ``bc_dt_norm_epsilon`` (None: no norms of Δ, B, C), and
    ``implementation`` and ``chunk_size`` (of ``selective_scan``).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        state_size: int = 16,
        expand: int = 2,
        conv_width: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        negative_eigenvalues: bool = False,
        bc_dt_norm_epsilon: float | None = None,
        implementation: str | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(state_size=state_size, expand=expand, dt_rank=dt_rank, chunk_size=chunk_size)
        if bc_dt_norm_epsilon is not None:
            check_number("bc_dt_norm_epsilon", bc_dt_norm_epsilon)
        self.bc_dt_norm_epsilon = bc_dt_norm_epsilon
        self.inner_size = inner = expand * d_model
        self.state_size = state_size
        self.dt_rank = dt_rank = dt_rank or math.ceil(d_model / 16)
        self.negative_eigenvalues = negative_eigenvalues
        self.implementation, self.chunk_size = implementation, chunk_size
        self.sequence_split = sequence_split

        self.in_proj = linear(d_model, 2 * inner, EMBED, HEADS, use_bias=False, rngs=rngs)
        self.conv = ShortConv(
            conv_width, inner, bias="uniform", sequence_split=sequence_split, rngs=rngs
        )
        self.x_proj = linear(
            inner, dt_rank + 2 * state_size, HEADS, None, use_bias=False, rngs=rngs
        )
        # Δ's projection [rank, E] uniform in ±rank^-1/2, as in the Mamba code.
        self.dt_proj = linear(
            dt_rank, inner, None, HEADS, kernel_init=symmetric_uniform(dt_rank**-0.5), rngs=rngs
        )
        self.dt_proj.bias[...] = step_size_bias(rngs.params(), inner, dt_min, dt_max)
        self.log_decay_rate = param(s4d_real_log_rates(inner, state_size), HEADS, None)
        self.skip = param(jnp.ones((inner,), jnp.float32), HEADS)
        self.out_proj = linear(inner, d_model, HEADS, EMBED, use_bias=False, rngs=rngs)

    def init_state(self, batch_size: int) -> PyTree:
        return {
            "conv": self.conv.init_state(batch_size),
            "ssm": jnp.zeros((batch_size, self.inner_size, self.state_size), jnp.float32),
        }

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        u, gate = jnp.split(self.in_proj(x), 2, axis=-1)
        u, conv_state = self.conv(u, state["conv"], segment_starts)
        u = jax.nn.silu(u)
        low_rank_delta, input_matrix, output_matrix = jnp.split(
            self.x_proj(u), [self.dt_rank, self.dt_rank + self.state_size], axis=-1
        )
        if self.bc_dt_norm_epsilon is not None:
            low_rank_delta, input_matrix, output_matrix = (
                rms_normalize(z, 1.0, self.bc_dt_norm_epsilon)
                for z in (low_rank_delta, input_matrix, output_matrix)
            )
        delta = jax.nn.softplus(self.dt_proj(low_rank_delta).astype(jnp.float32))
        y, ssm_state = selective_scan(
            u,
            delta,
            -jnp.exp(self.log_decay_rate[...].astype(jnp.float32)),  # A < 0
            input_matrix,
            output_matrix,
            self.skip[...],
            initial_state=state["ssm"],
            segment_starts=segment_starts,
            negative_eigenvalues=self.negative_eigenvalues,
            implementation=self.implementation,
            chunk_size=self.chunk_size,
            sequence_split=self.sequence_split,
        )
        return self.out_proj(y * jax.nn.silu(gate)), {"conv": conv_state, "ssm": ssm_state}
