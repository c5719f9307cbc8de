"""HGRN: a gated linear recurrence whose forget gates have a lower bound rising with depth.

"Hierarchically Gated Recurrent Neural Network for Sequence Modeling" (Qin et al., 2023),
real-valued form (HGRN1 as in flash-linear-attention, without the complex phase):

    f_t = γ + (1 - γ) σ(W_f x_t + b_f),  c_t = SiLU(W_c x_t + b_c)
    h_t = f_t ⊙ h_{t-1} + (1 - f_t) ⊙ c_t
    o_t = W_o LayerNorm(σ(W_g x_t + b_g) ⊙ h_t) + b_o

γ ∈ [0, 1): the paper gives lower layers a small bound (fast forgetting, local features)
and upper layers a bound near 1 (long memory). Its learned bounds, cumsum(softmax(Γ)) over
layers, start at γ_l = l / L for Γ = 0; seqjax uses that schedule (the backbone tells each
mixer its ``layer_index`` l of ``num_layers`` L), or a fixed ``forget_lower_bound``.

State: h [B, N].
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.min_rnn import InputGatedRNN
from seqjax.layers.norms import LayerNorm
from seqjax.layers.partitioning import HEADS
from seqjax.layers.registry import register
from seqjax.ops.scan import linear_recurrence
from seqjax.typing import Array


def depth_lower_bound(forget_lower_bound: float | None, layer_index: int, num_layers: int) -> float:
    """γ: ``forget_lower_bound`` if given, else layer_index / num_layers; in [0, 1)."""
    if forget_lower_bound is None:
        forget_lower_bound = layer_index / num_layers
    if not 0.0 <= forget_lower_bound < 1.0:
        raise ValueError(f"forget_lower_bound must be in [0, 1), got {forget_lower_bound}")
    return forget_lower_bound


def hgrn_forget_gate(forget_logits: Array, lower_bound: float) -> Array:
    """f_t = γ + (1 - γ) σ(logits), in float32; in [γ, 1]."""
    return lower_bound + (1.0 - lower_bound) * jax.nn.sigmoid(forget_logits.astype(jnp.float32))


def hgrn_recurrence(
    candidate_logits: Array, forget_logits: Array, *, lower_bound: float = 0.0, **op_options
) -> tuple[Array, Array]:
    """h_t = f_t ⊙ h_{t-1} + (1 - f_t) ⊙ SiLU(candidate); returns ``(h, h_T)``.

    Args:
      candidate_logits: W_c x + b_c [B, T, N].
      forget_logits: W_f x + b_f [B, T, N].
      lower_bound: γ, the least value of the forget gate.
      op_options: of ``linear_recurrence`` (initial_state h [B, N], segment_starts,
        implementation, sequence_split).
    """
    forget = hgrn_forget_gate(forget_logits, lower_bound)
    candidate = jax.nn.silu(candidate_logits.astype(jnp.float32))
    return linear_recurrence(forget, (1.0 - forget) * candidate, **op_options)


@register("hgrn")
class HGRN(InputGatedRNN):
    """The HGRN token mixer (Qin et al., 2023); see the module docstring. x: [B, T, D].

    Options: ``hidden_size`` N (None for D), ``implementation`` (of ``linear_recurrence``)
    and ``forget_lower_bound`` γ (None: layer_index / num_layers).
    """

    num_gates = 2  # forget and output gates, besides the candidate

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        forget_lower_bound: float | None = None,
        layer_index: int = 0,
        num_layers: int = 1,
        **rnn_options: Any,
    ):
        super().__init__(d_model, rngs=rngs, **rnn_options)
        self.forget_lower_bound = depth_lower_bound(forget_lower_bound, layer_index, num_layers)
        self.norm = LayerNorm(self.hidden_size, logical_axis=HEADS)

    def __call__(
        self, x: Array, *, state: Array | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        candidate_logits, forget_logits, output_logits = jnp.split(self.input_proj(x), 3, axis=-1)
        h, final_state = hgrn_recurrence(
            candidate_logits,
            forget_logits,
            lower_bound=self.forget_lower_bound,
            initial_state=state,
            segment_starts=segment_starts,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        gated = jax.nn.sigmoid(output_logits.astype(jnp.float32)) * h
        return self.out_proj(self.norm(gated).astype(x.dtype)), final_state
