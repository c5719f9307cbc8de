"""Mamba-2: the SSD layer, a selective state space with one scalar decay per head.

"Transformers are SSMs: Generalized Models and Efficient Algorithms Through Structured State
Space Duality" (Dao & Gu, 2024). Per head h with input x_t [P], step Δ_t = softplus(dt_t +
b_h) (clipped to [Δ_min, Δ_max] where a limit is set) and A_h = -exp(A_log_h) < 0, and B_t,
C_t [N] of the head's group:

    S_t = exp(Δ_t A_h) S_{t-1} + B_t (Δ_t x_t)ᵀ,    y_t = S_tᵀ C_t + D_h x_t      S_t: [N, P]

that is ``gated_linear_attention(q=C, k=B, v=Δ·x, log_decay=Δ·A)`` with a scalar decay per
head [B, T, H], shared by all N state dimensions (the "scalar times identity" A of SSD). The
block: x → in_proj → (z, x, B, C, dt); (x, B, C) → causal conv → SiLU; SSD; ⊙ SiLU(z) then
an RMS norm (per group of heads, or over all E at once); out_proj:

    out = W_out RMSNorm(y ⊙ SiLU(z))

B and C are shared by the H / G heads of each of G groups (G = 1: one B, C for all heads, as
multi-value attention shares keys and queries).

State: {"conv": the last conv_width - 1 conv inputs [B, W-1, E + 2·G·N],
"ssm": S [B, H, N, P]}.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_divides, check_number, check_sizes
from seqjax.layers.conv import ShortConv
from seqjax.layers.heads import merge_heads, split_heads
from seqjax.layers.mamba import step_size_bias
from seqjax.layers.norms import rms_normalize
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.layers.registry import register
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

NORM_EPSILON = 1e-5


def ssd_log_decay(delta: Array, log_decay_rate: Array) -> Array:
    """log a_t = Δ_t A_h = -Δ_t exp(A_log_h), float32 [B, T, H] from Δ [B, T, H], A_log [H]."""
    return -delta.astype(jnp.float32) * jnp.exp(log_decay_rate.astype(jnp.float32))


def ssd_decay_parameters(
    rngs: nnx.Rngs, num_heads: int, dt_min: float, dt_max: float
) -> tuple[nnx.Param, nnx.Param]:
    """(A_log, b_Δ) [H] as the Mamba-2 code initializes them: A = exp(A_log) uniform in
    [1, 16], softplus(b_Δ) log-uniform in [dt_min, dt_max]."""
    rates = jax.random.uniform(rngs.params(), (num_heads,), minval=1.0, maxval=16.0)
    dt_bias = step_size_bias(rngs.params(), num_heads, dt_min, dt_max)
    return param(jnp.log(rates), HEADS), param(dt_bias, HEADS)


def state_space_duality(
    x: Array,
    delta: Array,
    log_decay_rate: Array,
    input_matrix: Array,
    output_matrix: Array,
    skip: Array,
    **op_options,
) -> tuple[Array, Array]:
    """The SSD recurrence of the module docstring; returns ``(y [B, T, H, P], S_T)``.

    Args:
      x: inputs [B, T, H, P].
      delta: step sizes Δ > 0 [B, T, H].
      log_decay_rate: A_log [H]; A = -exp(A_log) < 0.
      input_matrix: B_t [B, T, G, N], G dividing H (head h reads group h // (H / G)).
      output_matrix: C_t [B, T, G, N].
      skip: D [H].
      op_options: of ``gated_linear_attention`` (initial_state S [B, H, N, P],
        segment_starts, chunk_size, implementation, sequence_split).
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
        **op_options,
    )
    return (y + skip.astype(jnp.float32)[:, None] * x32).astype(x.dtype), final_state


def gated_rms_normalize(
    y: Array, gate: Array, scale: Array, groups: int, epsilon: float = NORM_EPSILON
) -> Array:
    """RMSNorm(y ⊙ SiLU(gate)) over each of ``groups`` equal groups of the last axis [..., E],
    with a learned ``scale`` [E] (Mamba-2's norm after the gate)."""
    gated = y.astype(jnp.float32) * jax.nn.silu(gate.astype(jnp.float32))
    grouped = gated.reshape(*gated.shape[:-1], groups, -1)
    normed = rms_normalize(grouped, scale.reshape(groups, -1), epsilon)
    return normed.reshape(gated.shape).astype(y.dtype)


@register("mamba2")
class Mamba2(nnx.Module):
    """The Mamba-2 block (Dao & Gu, 2024); see the module docstring. x: [B, T, D].

    Options: ``state_size`` N, ``head_dim`` P (H = E / P heads), ``expand`` (E = expand · D),
    ``num_groups`` G (of B, C and by default the norm), ``conv_width``, ``dt_min``/``dt_max``
    (range of the initial Δ), ``chunk_size`` and ``implementation`` (of
    ``gated_linear_attention``);
    ``dt_limit_min``/``dt_limit_max`` clip Δ (None: no upper limit; transformers'
    ``time_step_limit``), ``norm_groups`` the groups of the gated norm (None: G; 1 normalizes
    all E at once, as transformers' Mamba2 and Bamba do) and ``norm_epsilon`` its ε,
    ``conv_bias`` a bias in the conv, ``projection_bias`` biases in in_proj and out_proj.
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
        dt_limit_min: float = 0.0,
        dt_limit_max: float | None = None,
        norm_groups: int | None = None,
        norm_epsilon: float = NORM_EPSILON,
        conv_bias: bool = True,
        projection_bias: bool = False,
        chunk_size: int = 64,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(
            state_size=state_size,
            head_dim=head_dim,
            expand=expand,
            num_groups=num_groups,
            norm_groups=norm_groups,
            chunk_size=chunk_size,
        )
        self.inner_size = inner = expand * d_model
        check_divides("head_dim", head_dim, "expand * d_model", inner)
        self.num_heads = heads = inner // head_dim
        check_divides("num_groups", num_groups, "the number of heads", heads)
        self.norm_groups = norm_groups = norm_groups or num_groups
        check_divides("norm_groups", norm_groups, "expand * d_model", inner)
        if not dt_limit_min >= 0.0 or (dt_limit_max is not None and dt_limit_max < dt_limit_min):
            raise ValueError(
                f"the step size limits must satisfy 0 <= dt_limit_min <= dt_limit_max, got "
                f"{dt_limit_min!r}, {dt_limit_max!r}"
            )
        check_number("norm_epsilon", norm_epsilon)
        self.head_dim, self.state_size, self.num_groups = head_dim, state_size, num_groups
        self.dt_limit_min, self.dt_limit_max = dt_limit_min, dt_limit_max
        self.norm_epsilon = norm_epsilon
        self.chunk_size, self.implementation = chunk_size, implementation
        self.sequence_split = sequence_split
        self.conv_size = conv_size = inner + 2 * num_groups * state_size  # x, B, C

        self.in_proj = linear(
            d_model, inner + conv_size + heads, EMBED, HEADS, use_bias=projection_bias, rngs=rngs
        )
        self.conv = ShortConv(
            conv_width,
            conv_size,
            bias="uniform" if conv_bias else None,
            sequence_split=sequence_split,
            rngs=rngs,
        )
        self.log_decay_rate, self.dt_bias = ssd_decay_parameters(rngs, heads, dt_min, dt_max)
        self.skip = param(jnp.ones((heads,), jnp.float32), HEADS)
        self.norm_scale = param(jnp.ones((inner,), jnp.float32), HEADS)
        self.out_proj = linear(inner, d_model, HEADS, EMBED, use_bias=projection_bias, rngs=rngs)

    def init_state(self, batch_size: int) -> PyTree:
        state_shape = (batch_size, self.num_heads, self.state_size, self.head_dim)
        return {
            "conv": self.conv.init_state(batch_size),
            "ssm": jnp.zeros(state_shape, jnp.float32),
        }

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        gate, conv_input, dt = jnp.split(
            self.in_proj(x), [self.inner_size, self.inner_size + self.conv_size], axis=-1
        )
        conv_output, conv_state = self.conv(conv_input, state["conv"], segment_starts)
        u, input_matrix, output_matrix = jnp.split(
            jax.nn.silu(conv_output),
            [self.inner_size, self.inner_size + self.num_groups * self.state_size],
            axis=-1,
        )
        delta = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...])
        delta = jnp.clip(delta, self.dt_limit_min, self.dt_limit_max)
        y, ssm_state = state_space_duality(
            split_heads(u, self.num_heads),
            delta,
            self.log_decay_rate[...],
            split_heads(input_matrix, self.num_groups),
            split_heads(output_matrix, self.num_groups),
            self.skip[...],
            initial_state=state["ssm"],
            segment_starts=segment_starts,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        y = gated_rms_normalize(
            merge_heads(y), gate, self.norm_scale[...], self.norm_groups, self.norm_epsilon
        )
        return self.out_proj(y), {"conv": conv_state, "ssm": ssm_state}
