"""The Real-Gated Linear Recurrent Unit (RG-LRU) inside Hawk's recurrent block.

"Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language
Models" (De et al., 2024). With a = σ(Λ) per channel and c = 8:

    r_t = σ(W_a x_t + b_a),  i_t = σ(W_x x_t + b_x),  a_t = a^{c r_t}
    h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ (i_t ⊙ x_t),   h_t = i_t ⊙ x_t at a sequence's start

computed in log space: log a_t = -c r_t softplus(-Λ). At the first token of a sequence or
segment h_{t-1} = 0 and the input enters unscaled, as in recurrentgemma and transformers
(so h keeps the variance of its inputs from the first token on). The recurrent block runs two
branches on x [B, T, D] and multiplies them: GeLU(W_y x) (tanh form), and W_u x → causal
conv (width 4, with a bias) → RG-LRU; then an output projection. The gates W_a, W_x are dense
N x N matrices, or block-diagonal with one block per head (``num_heads``, the paper's).

State: {"conv": the last conv_width - 1 conv inputs [B, W-1, N], "rnn": h [B, N],
"at_start": [B] whether the next token is a sequence's first (without
``normalize_first_input``)}.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_divides, check_sizes
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
    *,
    resets: Array | None = None,
    **op_options,
) -> tuple[Array, Array]:
    """The RG-LRU of the module docstring; returns ``(h [B, T, N], h_T [B, N])``.

    Args:
      x: inputs [B, T, N].
      recurrence_gate_logits: W_a x + b_a [B, T, N] (r_t = σ of it).
      input_gate_logits: W_x x + b_x [B, T, N] (i_t = σ of it).
      decay_logits: Λ [N]; a = σ(Λ).
      resets: [B, T] true at the first token of a sequence or segment, whose input enters
        unscaled (None: every input is scaled by √(1 - a_t²)).
      op_options: of ``linear_recurrence`` (initial_state h [B, N], segment_starts,
        implementation, sequence_split).
    """
    log_decay = rg_lru_log_decay(recurrence_gate_logits, decay_logits)
    # √(1 - a_t²) = √(-expm1(2 log a_t)) stays accurate as a_t → 1.
    normalizer = _sqrt_bounded_derivative(-jnp.expm1(2.0 * log_decay))
    if resets is not None:
        normalizer = jnp.where(resets[..., None], 1.0, normalizer)
    gated_x = jax.nn.sigmoid(input_gate_logits.astype(jnp.float32)) * x.astype(jnp.float32)
    h, final_state = linear_recurrence(jnp.exp(log_decay), normalizer * gated_x, **op_options)
    return h.astype(x.dtype), final_state


def rg_lru_log_decay(recurrence_gate_logits: Array, decay_logits: Array) -> Array:
    """log a_t = c r_t log σ(Λ) = -c σ(gate) softplus(-Λ), in float32 [B, T, N]."""
    gate = jax.nn.sigmoid(recurrence_gate_logits.astype(jnp.float32))
    return -GATE_EXPONENT * gate * jax.nn.softplus(-decay_logits.astype(jnp.float32))


def sequence_resets(at_start: Array, segment_starts: Array | None, length: int) -> Array:
    """[B, T] true at each segment start, and at position 0 of the rows whose state has seen
    no token yet (``at_start`` [B])."""
    resets = jnp.zeros((at_start.shape[0], length), bool).at[:, 0].set(at_start)
    return resets if segment_starts is None else resets | segment_starts


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

    Options: ``lru_width`` N (None for D), ``conv_width``, ``num_heads`` (block-diagonal
    gates of N / num_heads per block, their kernel [H, N/H, 2 N/H] recurrence then input gate
    and bias [H, 2 N/H]; None: dense gates), ``min_decay``/``max_decay`` (the initial range of
    a = σ(Λ)), ``normalize_first_input`` (False, the default: the first token of a sequence
    or segment enters unscaled, as in recurrentgemma and transformers; True: scaled by
    √(1 - a_t²) like every other, and no "at_start" in the state) and ``implementation`` (of
    ``linear_recurrence``).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        lru_width: int | None = None,
        conv_width: int = 4,
        num_heads: int | None = None,
        min_decay: float = 0.9,
        max_decay: float = 0.999,
        normalize_first_input: bool = False,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(lru_width=lru_width, num_heads=num_heads)
        if not 0.0 < min_decay <= max_decay < 1.0:
            raise ValueError(
                f"need 0 < min_decay <= max_decay < 1, got {min_decay} and {max_decay}"
            )
        self.lru_width = width = lru_width or d_model
        self.num_heads = num_heads
        self.normalize_first_input = normalize_first_input
        self.implementation, self.sequence_split = implementation, sequence_split
        self.gate_proj = linear(d_model, width, EMBED, HEADS, rngs=rngs)
        self.input_proj = linear(d_model, width, EMBED, HEADS, rngs=rngs)
        self.conv = ShortConv(conv_width, width, sequence_split=sequence_split, rngs=rngs)
        if num_heads is None:
            self.gates = linear(width, 2 * width, None, HEADS, rngs=rngs)  # recurrence, input
        else:
            check_divides("num_heads", num_heads, "lru_width", width)
            block = width // num_heads
            kernel = jax.random.normal(rngs.params(), (num_heads, block, 2 * block)) * block**-0.5
            self.gate_kernel = param(kernel, HEADS, None, None)
            self.gate_bias = param(jnp.zeros((num_heads, 2 * block)), HEADS, None)
        decay_logits = decay_logits_init(rngs.params(), width, min_decay, max_decay)
        self.decay_logits = param(decay_logits, HEADS)
        self.out_proj = linear(width, d_model, HEADS, EMBED, rngs=rngs)

    def init_state(self, batch_size: int) -> PyTree:
        state = {
            "conv": self.conv.init_state(batch_size),
            "rnn": jnp.zeros((batch_size, self.lru_width), jnp.float32),
        }
        if not self.normalize_first_input:
            state["at_start"] = jnp.ones((batch_size,), bool)
        return state

    def gate_logits(self, u: Array) -> tuple[Array, Array]:
        """The recurrence and input gates' logits [B, T, N] of the conv output u."""
        if self.num_heads is None:
            return tuple(jnp.split(self.gates(u), 2, axis=-1))
        blocks = u.reshape(*u.shape[:-1], self.num_heads, self.lru_width // self.num_heads)
        logits = jnp.einsum("...hi,hio->...ho", blocks, self.gate_kernel[...])
        recurrence, input_ = jnp.split(logits + self.gate_bias[...], 2, axis=-1)
        return recurrence.reshape(u.shape), input_.reshape(u.shape)

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        gate = jax.nn.gelu(self.gate_proj(x))
        u, conv_state = self.conv(self.input_proj(x), state["conv"], segment_starts)
        recurrence_gate_logits, input_gate_logits = self.gate_logits(u)
        resets = None
        if not self.normalize_first_input:
            resets = sequence_resets(state["at_start"], segment_starts, x.shape[1])
        h, rnn_state = rg_lru(
            u,
            recurrence_gate_logits,
            input_gate_logits,
            self.decay_logits[...],
            resets=resets,
            initial_state=state["rnn"],
            segment_starts=segment_starts,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        new_state = {"conv": conv_state, "rnn": rnn_state}
        if not self.normalize_first_input:
            new_state["at_start"] = jnp.zeros_like(state["at_start"])
        return self.out_proj(h * gate), new_state
