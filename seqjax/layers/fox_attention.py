"""Forgetting attention: softmax attention with a data-dependent forget gate per head.

"Forgetting Transformer: Softmax Attention with a Forget Gate" (Lin et al., 2025). Each head
h has a scalar forget gate per token, and a key's score decays by the gates of the tokens
after it:

    f_t = σ(w_fᵀ x_t + b_f),   o_i = Σ_{j ≤ i} softmax_j(q_i·k_j / √K + Σ_{l=j+1..i} log f_l) v_j

The attention mixer (attention.py: grouped-query heads, sliding window, key/value cache)
with ``log_forget = log σ(w_fᵀ x + b_f)`` [B, T, H] passed to ``softmax_attention``, which
adds F_i - F_j, F the cumulative log forget over the key axis. Only the differences matter,
so the cache keeps each cached key's own log forget value (``"log_forget"`` [B, L, H], 0 in
empty slots, which are masked anyway) and the op re-accumulates F over [cache, new tokens]:
pieces and single tokens then equal the whole, and F stays bounded by the cache length.

Positions: the forget gate already makes scores depend on recency (a key's score falls with
the log gates summed since it), and the paper's FoX uses no positional embedding, so rotary
positions are off by default (``rotary=True`` adds them). ``output_gate=True`` multiplies the
attended values by σ(W_g x) before the output projection, the output gate of the paper's
"Pro" block (its QK-norm and key/value shift are not implemented). ``forget_bias`` is the
initial b_f: 0, as in the paper, starts every gate near f = 0.5 (whether it stays that way
is up to training); a large value starts near plain attention (f ≈ 1).

State: the attention cache {"keys", "values": [B, L, G, K], "positions", "segment_ids":
[B, L], "log_forget": [B, L, H], "next_position", "segment_id": [B]}.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.attention import Attention
from seqjax.layers.heads import merge_heads
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.layers.registry import register
from seqjax.typing import Array, PyTree


def forget_gate_log(forget_logits: Array) -> Array:
    """log f_t = log σ(logits), in float32 and <= 0; [B, T, H]."""
    return jax.nn.log_sigmoid(forget_logits.astype(jnp.float32))


@register("fox_attention")
class ForgettingAttention(Attention):
    """Forgetting attention (Lin et al., 2025); see the module docstring. x: [B, T, D].

    Options are those of ``attention`` (rotary off by default) plus ``output_gate`` and
    ``forget_bias`` (the initial forget-gate bias b_f).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        rotary: bool = False,
        output_gate: bool = False,
        forget_bias: float = 0.0,
        **attention_options: Any,
    ):
        super().__init__(d_model, rngs=rngs, rotary=rotary, **attention_options)
        self.forget_gate = linear(
            d_model,
            self.num_heads,
            EMBED,
            HEADS,
            bias_init=nnx.initializers.constant(forget_bias),
            rngs=rngs,
        )
        inner = self.num_heads * self.head_dim
        self.output_gate = (
            linear(d_model, inner, EMBED, HEADS, use_bias=False, rngs=rngs) if output_gate else None
        )

    def init_state(self, batch_size: int) -> PyTree:
        state = super().init_state(batch_size)
        state["log_forget"] = jnp.zeros((batch_size, self.cache_length, self.num_heads))
        return state

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        attended, new_state = self.attend(
            x,
            state=state,
            segment_starts=segment_starts,
            log_forget=forget_gate_log(self.forget_gate(x)),
        )
        attended = merge_heads(attended)
        if self.output_gate is not None:
            attended = attended * jax.nn.sigmoid(self.output_gate(x))
        return self.output(attended), new_state
