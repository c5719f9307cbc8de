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

from seqjax.layers.checks import check_divides, check_size, check_sizes
from seqjax.layers.heads import merge_heads, split_heads
from seqjax.layers.norms import RMSNorm
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.layers.registry import register
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

NORM_EPSILON = 1e-5


def gla_log_decay(gate_logits: Array, normalizer: float = 16.0) -> Array:
    """log α_t = log σ(gate_logits) / τ, in float32; α_t ∈ (0, 1)."""
    return jax.nn.log_sigmoid(gate_logits.astype(jnp.float32)) / normalizer


def gated_linear_attention_heads(
    q: Array, k: Array, v: Array, gate_logits: Array, *, normalizer: float = 16.0, **op_options
) -> tuple[Array, Array]:
    """GLA's recurrence of the module docstring; returns ``(o [B, T, H, V], S_T)``.

    Args:
      q, k: [B, T, H, K].  v: [B, T, H, V].
      gate_logits: W_α2 W_α1 x + b_α [B, T, H, K].
      normalizer: τ.
      op_options: of ``gated_linear_attention`` (initial_state S [B, H, K, V],
        segment_starts, chunk_size, implementation, sequence_split).
    """
    return gated_linear_attention(
        q,
        k,
        v,
        log_decay=gla_log_decay(gate_logits, normalizer),
        scale=q.shape[-1] ** -0.5,
        **op_options,
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
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(num_heads=num_heads, gate_low_rank_dim=gate_low_rank_dim, chunk_size=chunk_size)
        key_width, value_width = int(d_model * expand_k), int(d_model * expand_v)
        for name, width in (("expand_k * d_model", key_width), ("expand_v * d_model", value_width)):
            check_size(name, width)
            check_divides("num_heads", num_heads, name, width)
        if gate_logit_normalizer <= 0:
            raise ValueError(f"gate_logit_normalizer must be positive, got {gate_logit_normalizer}")
        self.num_heads = num_heads
        self.key_size, self.value_size = key_width // num_heads, value_width // num_heads
        self.gate_logit_normalizer = gate_logit_normalizer
        self.chunk_size, self.implementation = chunk_size, implementation
        self.sequence_split = sequence_split

        def projection(width):
            return linear(d_model, width, EMBED, HEADS, use_bias=False, rngs=rngs)

        self.query, self.key = projection(key_width), projection(key_width)
        self.value, self.output_gate = projection(value_width), projection(value_width)
        self.decay_down = linear(d_model, gate_low_rank_dim, EMBED, None, use_bias=False, rngs=rngs)
        self.decay_up = linear(gate_low_rank_dim, key_width, None, HEADS, rngs=rngs)
        # One scale for every head's outputs.
        self.norm = RMSNorm(self.value_size, logical_axis=None, epsilon=NORM_EPSILON)
        self.output = linear(value_width, d_model, HEADS, EMBED, use_bias=False, rngs=rngs)

    def init_state(self, batch_size: int) -> Array:
        shape = (batch_size, self.num_heads, self.key_size, self.value_size)
        return jnp.zeros(shape, jnp.float32)

    def __call__(
        self, x: Array, *, state: Array | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        o, final_state = gated_linear_attention_heads(
            split_heads(self.query(x), self.num_heads),
            split_heads(self.key(x), self.num_heads),
            split_heads(self.value(x), self.num_heads),
            split_heads(self.decay_up(self.decay_down(x)), self.num_heads),
            normalizer=self.gate_logit_normalizer,
            initial_state=state,
            segment_starts=segment_starts,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        normed = merge_heads(self.norm(o))
        return self.output(jax.nn.silu(self.output_gate(x)) * normed), final_state
