"""Mamba-2: the SSD layer, a selective state space with one scalar decay per head.

"Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State
Space Duality" (Dao & Gu, 2024). Per head h with input x_t [P], step Δ_t = softplus(dt_t +
b_h) and A_h = -exp(A_log_h) < 0, and B_t, C_t [N] of the head's group:

    S_t = exp(Δ_t A_h) S_{t-1} + B_t (Δ_t x_t)ᵀ,    y_t = S_tᵀ C_t + D_h x_t      S_t: [N, P]

that is ``gated_linear_attention(q=C, k=B, v=Δ·x, log_decay=Δ·A)`` with a scalar decay per
head [B, T, H], shared by all N state dimensions (the "scalar times identity" A of SSD). The
block: x → in_proj → (z, x, B, C, dt); (x, B, C) → causal conv → SiLU; SSD; ⊙ SiLU(z) then
an RMS norm (per group of heads); out_proj:

    out = W_out RMSNorm(y ⊙ SiLU(z))

B and C are shared by the H / G heads of each of G groups (G = 1: one B, C for all heads, as
multi-value attention shares keys and queries).

State: {"conv": the last conv_width - 1 conv inputs [B, W-1, E + 2·G·N],
"ssm": S [B, H, N, P]}.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.mamba import step_size_bias
from seqjax.layers.norms import rms_normalize
from seqjax.layers.registry import register
from seqjax.ops.conv import causal_conv1d
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.typing import Array, PyTree

NORM_EPSILON = 1e-5


def ssd_log_decay(delta: Array, log_decay_rate: Array) -> Array:
    """log a_t = Δ_t A_h = -Δ_t exp(A_log_h), float32 [B, T, H] from Δ [B, T, H], A_log [H]."""
    return -delta.astype(jnp.float32) * jnp.exp(log_decay_rate.astype(jnp.float32))


def state_space_duality(
    x: Array,
    delta: Array,
    log_decay_rate: Array,
    input_matrix: Array,
    output_matrix: Array,
    skip: Array,
    *,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    chunk_size: int = 64,
    implementation: str | None = None,
) -> tuple[Array, Array]:
    """The SSD recurrence of the module docstring; returns ``(y [B, T, H, P], S_T)``.

    Args:
      x: inputs [B, T, H, P].
      delta: step sizes Δ > 0 [B, T, H].
      log_decay_rate: A_log [H]; A = -exp(A_log) < 0.
      input_matrix: B_t [B, T, G, N], G dividing H (head h reads group h // (H / G)).
      output_matrix: C_t [B, T, G, N].
      skip: D [H].
      initial_state: S [B, H, N, P] (zeros if None).
      segment_starts: bool [B, T]; the state is zeroed before each true position.
      chunk_size, implementation: of ``gated_linear_attention``.
    """
    heads, groups = x.shape[2], input_matrix.shape[2]
    if heads % groups:
        raise ValueError(f"the number of groups ({groups}) must divide the heads ({heads})")
    x32, delta = x.astype(jnp.float32), delta.astype(jnp.float32)
    keys = jnp.repeat(input_matrix, heads // groups, axis=2)
    queries = jnp.repeat(output_matrix, heads // groups, axis=2)
    y, final_state = gated_linear_attention(
        queries,
        keys,
        delta[..., None] * x32,
        log_decay=ssd_log_decay(delta, log_decay_rate),
        initial_state=initial_state,
        segment_starts=segment_starts,
        chunk_size=chunk_size,
        implementation=implementation,
    )
    return (y + skip.astype(jnp.float32)[:, None] * x32).astype(x.dtype), final_state


def gated_rms_normalize(y: Array, gate: Array, scale: Array, groups: int) -> Array:
    """RMSNorm(y ⊙ SiLU(gate)) over each of ``groups`` equal groups of the last axis [..., E],
    with a learned ``scale`` [E] (Mamba-2's norm after the gate)."""
    gated = y.astype(jnp.float32) * jax.nn.silu(gate.astype(jnp.float32))
    grouped = gated.reshape(*gated.shape[:-1], groups, -1)
    normed = rms_normalize(grouped, scale.reshape(groups, -1), NORM_EPSILON)
    return normed.reshape(gated.shape).astype(y.dtype)


@register("mamba2")
class Mamba2(nnx.Module):
    """The Mamba-2 block (Dao & Gu, 2024); see the module docstring. x: [B, T, D].

    Options: ``state_size`` N, ``head_dim`` P (H = E / P heads), ``expand`` (E = expand · D),
    ``num_groups`` G (of B, C and the norm), ``conv_width``, ``dt_min``/``dt_max`` (range of
    the initial Δ), ``chunk_size`` and ``implementation`` (of ``gated_linear_attention``).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        state_size: int = 16,
        head_dim: int = 16,
        expand: int = 2,
        num_groups: int = 1,
        conv_width: int = 4,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        chunk_size: int = 64,
        implementation: str | None = None,
    ):
        self.inner_size = inner = expand * d_model
        if head_dim < 1 or inner % head_dim:
            raise ValueError(f"head_dim ({head_dim}) must divide expand * d_model ({inner})")
        self.num_heads = heads = inner // head_dim
        if num_groups < 1 or heads % num_groups:
            raise ValueError(f"num_groups ({num_groups}) must divide the number of heads ({heads})")
        if conv_width < 1:
            raise ValueError(f"conv_width must be at least 1, got {conv_width}")
        self.head_dim, self.state_size, self.num_groups = head_dim, state_size, num_groups
        self.conv_width = conv_width
        self.chunk_size, self.implementation = chunk_size, implementation
        self.conv_size = conv_size = inner + 2 * num_groups * state_size  # x, B, C

        self.in_proj = nnx.Linear(d_model, inner + conv_size + heads, use_bias=False, rngs=rngs)
        bound = conv_width**-0.5  # PyTorch's Conv1d init (fan-in W)
        self.conv_kernel = nnx.Param(
            jax.random.uniform(rngs.params(), (conv_width, conv_size), minval=-bound, maxval=bound)
        )
        self.conv_bias = nnx.Param(
            jax.random.uniform(rngs.params(), (conv_size,), minval=-bound, maxval=bound)
        )
        self.dt_bias = nnx.Param(step_size_bias(rngs.params(), heads, dt_min, dt_max))
        # A = -exp(A_log) uniform in [-16, -1], as in the Mamba-2 code.
        rates = jax.random.uniform(rngs.params(), (heads,), minval=1.0, maxval=16.0)
        self.log_decay_rate = nnx.Param(jnp.log(rates))
        self.skip = nnx.Param(jnp.ones((heads,), jnp.float32))
        self.norm_scale = nnx.Param(jnp.ones((inner,), jnp.float32))
        self.out_proj = nnx.Linear(inner, d_model, use_bias=False, rngs=rngs)

    def init_state(self, batch_size: int) -> PyTree:
        return {
            "conv": jnp.zeros((batch_size, self.conv_width - 1, self.conv_size), jnp.float32),
            "ssm": jnp.zeros(
                (batch_size, self.num_heads, self.state_size, self.head_dim), jnp.float32
            ),
        }

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        batch, length, _ = x.shape
        if state is None:
            state = self.init_state(batch)
        gate, conv_input, dt = jnp.split(
            self.in_proj(x), [self.inner_size, self.inner_size + self.conv_size], axis=-1
        )
        conv_output, conv_state = causal_conv1d(
            conv_input,
            self.conv_kernel[...],
            bias=self.conv_bias[...],
            initial_state=state["conv"],
            segment_starts=segment_starts,
        )
        u, input_matrix, output_matrix = jnp.split(
            jax.nn.silu(conv_output),
            [self.inner_size, self.inner_size + self.num_groups * self.state_size],
            axis=-1,
        )
        delta = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...])
        groups = (batch, length, self.num_groups, self.state_size)
        y, ssm_state = state_space_duality(
            u.reshape(batch, length, self.num_heads, self.head_dim),
            delta,
            self.log_decay_rate[...],
            input_matrix.reshape(groups),
            output_matrix.reshape(groups),
            self.skip[...],
            initial_state=state["ssm"],
            segment_starts=segment_starts,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
        )
        y = gated_rms_normalize(
            y.reshape(batch, length, self.inner_size), gate, self.norm_scale[...], self.num_groups
        )
        return self.out_proj(y), {"conv": conv_state, "ssm": ssm_state}
