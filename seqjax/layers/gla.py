"""GLA: gated linear attention with a data-dependent decay per key dimension.

"Gated Linear Attention Transformers with Hardware-Efficient Training" (Yang et al., 2024).
Per head, with a low-rank gate α_t = σ(W_α2 W_α1 x_t + b_α)^(1/τ) ∈ (0, 1)^K, τ = 16:

    S_t = diag(α_t) S_{t-1} + k_t v_tᵀ,    o_t = S_tᵀ q_t / √K

that is ``gated_linear_attention(q, k / √K, v, log_decay=log σ(W_α2 W_α1 x + b_α) / τ)`` with
a decay per key dimension [B, T, H, K]. The 1/τ power keeps the decays close to 1 (the
paper's "gate logit normalizer"), so the state forgets slowly from the start. The layer: q, k
of width expand_k · D (the paper's 0.5) and v of width expand_v · D, split into H heads; an
RMS norm per head; ⊙ swish(W_r x); output projection:

    y = W_o (swish(W_r x) ⊙ RMSNorm(o))

State: S [B, H, K, V].
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.norms import RMSNorm
from seqjax.layers.registry import register
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.typing import Array

NORM_EPSILON = 1e-5


def gla_log_decay(gate_logits: Array, normalizer: float = 16.0) -> Array:
    """log α_t = log σ(gate_logits) / τ, in float32; α_t ∈ (0, 1)."""
    return jax.nn.log_sigmoid(gate_logits.astype(jnp.float32)) / normalizer


def gated_linear_attention_heads(
    q: Array,
    k: Array,
    v: Array,
    gate_logits: Array,
    *,
    normalizer: float = 16.0,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    chunk_size: int = 64,
    implementation: str | None = None,
) -> tuple[Array, Array]:
    """GLA's recurrence of the module docstring; returns ``(o [B, T, H, V], S_T)``.

    Args:
      q, k: [B, T, H, K].  v: [B, T, H, V].
      gate_logits: W_α2 W_α1 x + b_α [B, T, H, K].
      normalizer: τ.
      initial_state: S [B, H, K, V] (zeros if None).
      segment_starts: bool [B, T]; the state is zeroed before each true position.
      chunk_size, implementation: of ``gated_linear_attention``.
    """
    return gated_linear_attention(
        q,
        k,
        v,
        log_decay=gla_log_decay(gate_logits, normalizer),
        initial_state=initial_state,
        segment_starts=segment_starts,
        scale=q.shape[-1] ** -0.5,
        chunk_size=chunk_size,
        implementation=implementation,
    )


@register("gla")
class GLA(nnx.Module):
    """The GLA layer (Yang et al., 2024); see the module docstring. x: [B, T, D].

    Options: ``num_heads`` H, ``expand_k`` and ``expand_v`` (q, k and v widths as fractions
    of D, each split into H heads), ``gate_low_rank_dim`` (rank of the decay projection),
    ``gate_logit_normalizer`` τ, ``chunk_size`` and ``implementation`` (of
    ``gated_linear_attention``).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_heads: int = 4,
        expand_k: float = 0.5,
        expand_v: float = 1.0,
        gate_low_rank_dim: int = 16,
        gate_logit_normalizer: float = 16.0,
        chunk_size: int = 64,
        implementation: str | None = None,
    ):
        key_width, value_width = int(d_model * expand_k), int(d_model * expand_v)
        for name, width in (("expand_k * d_model", key_width), ("expand_v * d_model", value_width)):
            if num_heads < 1 or width < num_heads or width % num_heads:
                raise ValueError(f"num_heads ({num_heads}) must divide {name} ({width})")
        if gate_logit_normalizer <= 0:
            raise ValueError(f"gate_logit_normalizer must be positive, got {gate_logit_normalizer}")
        self.num_heads = num_heads
        self.key_size, self.value_size = key_width // num_heads, value_width // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.chunk_size, self.implementation = chunk_size, implementation

        def linear(size_in, size_out, use_bias=False):
            return nnx.Linear(size_in, size_out, use_bias=use_bias, rngs=rngs)

        self.query, self.key = linear(d_model, key_width), linear(d_model, key_width)
        self.value, self.output_gate = linear(d_model, value_width), linear(d_model, value_width)
        self.decay_down = linear(d_model, gate_low_rank_dim)
        self.decay_up = linear(gate_low_rank_dim, key_width, use_bias=True)
        self.norm = RMSNorm(self.value_size, epsilon=NORM_EPSILON)  # shared by the heads
        self.output = linear(value_width, d_model)

    def init_state(self, batch_size: int) -> Array:
        shape = (batch_size, self.num_heads, self.key_size, self.value_size)
        return jnp.zeros(shape, jnp.float32)

    def __call__(
        self, x: Array, *, state: Array | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        batch, length, _ = x.shape

        def heads(t, size):
            return t.reshape(batch, length, self.num_heads, size)

        o, final_state = gated_linear_attention_heads(
            heads(self.query(x), self.key_size),
            heads(self.key(x), self.key_size),
            heads(self.value(x), self.value_size),
            heads(self.decay_up(self.decay_down(x)), self.key_size),
            normalizer=self.gate_logit_normalizer,
            initial_state=state,
            segment_starts=segment_starts,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
        )
        normed = self.norm(o).reshape(batch, length, -1)
        return self.output(jax.nn.silu(self.output_gate(x)) * normed), final_state
