"""The Real-Gated Linear Recurrent Unit (RG-LRU) inside Hawk's recurrent block.

"Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language
Models" (De et al., 2024). With a = σ(Λ) per channel and c = 8:

    r_t = σ(W_a x_t + b_a),  i_t = σ(W_x x_t + b_x),  a_t = a^{c r_t}
    h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ (i_t ⊙ x_t)

computed in log space: log a_t = -c r_t softplus(-Λ). The recurrent block runs two
branches on x [B, T, D] and multiplies them: GeLU(W_y x), and W_u x → causal conv (width 4)
→ RG-LRU; then an output projection. The gates W_a, W_x are dense N x N matrices (the paper
uses block-diagonal ones, one block per head).

State: {"conv": the last conv_width - 1 conv inputs [B, W-1, N], "rnn": h [B, N]}.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_sizes
from seqjax.layers.conv import ShortConv
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.layers.registry import register
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

GATE_EXPONENT = 8.0  # c in a_t = a^{c r_t}


def rg_lru(
    x: Array,
    recurrence_gate_logits: Array,
    input_gate_logits: Array,
    decay_logits: Array,
    **op_options,
) -> tuple[Array, Array]:
    """The RG-LRU of the module docstring; returns ``(h [B, T, N], h_T [B, N])``.

    Args:
      x: inputs [B, T, N].
      recurrence_gate_logits: W_a x + b_a [B, T, N] (r_t = σ of it).
      input_gate_logits: W_x x + b_x [B, T, N] (i_t = σ of it).
      decay_logits: Λ [N]; a = σ(Λ).
      op_options: of ``linear_recurrence`` (initial_state h [B, N], segment_starts,
        implementation, sequence_split).
    """
    log_decay = rg_lru_log_decay(recurrence_gate_logits, decay_logits)
    # √(1 - a_t²) = √(-expm1(2 log a_t)) stays accurate as a_t → 1.
    normalizer = _sqrt_bounded_derivative(-jnp.expm1(2.0 * log_decay))
    gated_x = jax.nn.sigmoid(input_gate_logits.astype(jnp.float32)) * x.astype(jnp.float32)
    h, final_state = linear_recurrence(jnp.exp(log_decay), normalizer * gated_x, **op_options)
    return h.astype(x.dtype), final_state


def rg_lru_log_decay(recurrence_gate_logits: Array, decay_logits: Array) -> Array:
    """log a_t = c r_t log σ(Λ) = -c σ(gate) softplus(-Λ), in float32 [B, T, N]."""
    gate = jax.nn.sigmoid(recurrence_gate_logits.astype(jnp.float32))
    return -GATE_EXPONENT * gate * jax.nn.softplus(-decay_logits.astype(jnp.float32))


MAX_SQRT_DERIVATIVE = 1000.0


@jax.custom_jvp
def _sqrt_bounded_derivative(x: Array) -> Array:
    """√x whose derivative is capped at MAX_SQRT_DERIVATIVE: 1 - a_t² reaches 0 when the
    recurrence gate saturates, where the true derivative is infinite (recurrentgemma does
    the same)."""
    return jnp.sqrt(x)


@_sqrt_bounded_derivative.defjvp
def _sqrt_bounded_derivative_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    floor = 1.0 / (4.0 * MAX_SQRT_DERIVATIVE**2)
    return jnp.sqrt(x), x_dot / (2.0 * jnp.sqrt(jnp.maximum(x, floor)))


def decay_logits_init(key: Array, size: int, min_decay: float, max_decay: float) -> Array:
    """Λ with a = σ(Λ) in [min_decay, max_decay], a² uniform (uniform on a ring's area, as in
    the LRU of Orvieto et al., 2023)."""
    squared = jax.random.uniform(key, (size,), minval=min_decay**2, maxval=max_decay**2)
    decay = jnp.sqrt(squared)
    return jnp.log(decay) - jnp.log1p(-decay)  # σ⁻¹(a)


@register("rg_lru")
class RGLRU(nnx.Module):
    """Hawk's recurrent block with an RG-LRU (De et al., 2024); see the module docstring.

    Options: ``lru_width`` N (None for D), ``conv_width``, ``min_decay``/``max_decay`` (the
    initial range of a = σ(Λ)) and ``implementation`` (of ``linear_recurrence``).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        lru_width: int | None = None,
        conv_width: int = 4,
        min_decay: float = 0.9,
        max_decay: float = 0.999,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(lru_width=lru_width)
        if not 0.0 < min_decay <= max_decay < 1.0:
            raise ValueError(
                f"need 0 < min_decay <= max_decay < 1, got {min_decay} and {max_decay}"
            )
        self.lru_width = width = lru_width or d_model
        self.implementation, self.sequence_split = implementation, sequence_split
        self.gate_proj = linear(d_model, width, EMBED, HEADS, rngs=rngs)
        self.input_proj = linear(d_model, width, EMBED, HEADS, rngs=rngs)
        self.conv = ShortConv(conv_width, width, sequence_split=sequence_split, rngs=rngs)
        self.gates = linear(width, 2 * width, None, HEADS, rngs=rngs)  # recurrence, input gates
        decay_logits = decay_logits_init(rngs.params(), width, min_decay, max_decay)
        self.decay_logits = param(decay_logits, HEADS)
        self.out_proj = linear(width, d_model, HEADS, EMBED, rngs=rngs)

    def init_state(self, batch_size: int) -> PyTree:
        return {
            "conv": self.conv.init_state(batch_size),
            "rnn": jnp.zeros((batch_size, self.lru_width), jnp.float32),
        }

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        gate = jax.nn.gelu(self.gate_proj(x))
        u, conv_state = self.conv(self.input_proj(x), state["conv"], segment_starts)
        recurrence_gate_logits, input_gate_logits = jnp.split(self.gates(u), 2, axis=-1)
        h, rnn_state = rg_lru(
            u,
            recurrence_gate_logits,
            input_gate_logits,
            self.decay_logits[...],
            initial_state=state["rnn"],
            segment_starts=segment_starts,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        return self.out_proj(h * gate), {"conv": conv_state, "rnn": rnn_state}
