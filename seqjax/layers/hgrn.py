"""HGRN: a gated linear recurrence whose forget gates have a lower bound rising with depth.

"Hierarchically Gated Recurrent Neural Network for Sequence Modeling" (Qin et al., 2023),
real-valued form (without the complex phase):

    f_t = γ + (1 - γ) σ(W_f x_t + b_f),  c_t = SiLU(W_c x_t + b_c)
    h_t = f_t ⊙ h_{t-1} + (1 - f_t) ⊙ c_t
    o_t = W_o LayerNorm(σ(W_g x_t + b_g) ⊙ h_t) + b_o

γ ∈ [0, 1): the paper gives lower layers a small bound (fast forgetting, local features)
and upper layers a bound near 1 (long memory). Its learned bounds, cumsum(softmax(Γ)) over
layers, start at γ_l = l / L for Γ = 0; seqjax uses that schedule (the backbone tells each
mixer its ``layer_index`` l of ``num_layers`` L), or a fixed ``forget_lower_bound``.

``form="paper"`` (the default) is the block above. ``form="fla"`` is flash-linear-attention's
HGRNAttention: the same recurrence, projections without biases, and the output gate SiLU
after an RMSNorm of h (``norm_epsilon``; its learned bounds are a vector per layer, here the
scalar γ):

    o_t = W_o (RMSNorm(h_t) ⊙ SiLU(W_g x_t))

Either form may put a short causal depthwise conv of width ``conv_width`` (no bias, no
activation) over the candidate's and forget gate's logits, as fla's ``use_short_conv``.

State: h [B, N]; with a conv {"conv": the last W - 1 conv inputs [B, W-1, 2N], "recurrent": h}.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_choice, check_size, check_sizes
from seqjax.layers.conv import ShortConv
from seqjax.layers.norms import LayerNorm, RMSNorm
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.layers.registry import register
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

# "paper": the authors' block; "fla": flash-linear-attention's layer.
FORMS = ("paper", "fla")


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


def hgrn_output(h: Array, gate_logits: Array, norm: nnx.Module, form: str) -> Array:
    """The gated, normalized h: LayerNorm(σ(g) ⊙ h) ("paper") or RMSNorm(h) ⊙ SiLU(g) ("fla")."""
    gate_logits = gate_logits.astype(jnp.float32)
    if form == "fla":
        return norm(h) * jax.nn.silu(gate_logits)
    return norm(jax.nn.sigmoid(gate_logits) * h)


@register("hgrn")
class HGRN(nnx.Module):
    """The HGRN token mixer (Qin et al., 2023); see the module docstring. x: [B, T, D].

    Options: ``hidden_size`` N (None for D; fla's expand_ratio · D), ``implementation`` (of
    ``linear_recurrence``), ``forget_lower_bound`` γ (None: layer_index / num_layers),
    ``form`` ("paper", the default, or "fla"), ``conv_width`` W (0: no short conv) and
    ``norm_epsilon`` (the ε of the output norm).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int | None = None,
        implementation: str | None = None,
        forget_lower_bound: float | None = None,
        form: str = "paper",
        conv_width: int = 0,
        norm_epsilon: float = 1e-5,
        layer_index: int = 0,
        num_layers: int = 1,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(hidden_size=hidden_size)
        check_choice("form", form, FORMS)
        check_size("conv_width", conv_width, minimum=0)
        self.hidden_size = hidden = hidden_size or d_model
        self.implementation, self.sequence_split = implementation, sequence_split
        self.forget_lower_bound = depth_lower_bound(forget_lower_bound, layer_index, num_layers)
        self.form, use_bias = form, form == "paper"
        # Candidate, forget gate and output gate logits from one projection.
        self.input_proj = linear(d_model, 3 * hidden, EMBED, HEADS, use_bias=use_bias, rngs=rngs)
        self.out_proj = linear(hidden, d_model, HEADS, EMBED, use_bias=use_bias, rngs=rngs)
        norm = RMSNorm if form == "fla" else LayerNorm
        self.norm = norm(hidden, logical_axis=HEADS, epsilon=norm_epsilon)
        self.conv = nnx.data(None)
        if conv_width:
            self.conv = ShortConv(
                conv_width, 2 * hidden, bias=None, sequence_split=sequence_split, rngs=rngs
            )

    def init_state(self, batch_size: int) -> PyTree:
        h = jnp.zeros((batch_size, self.hidden_size), jnp.float32)
        if self.conv is None:
            return h
        return {"conv": self.conv.init_state(batch_size), "recurrent": h}

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        logits, hidden, recurrent_state = self.input_proj(x), self.hidden_size, state
        if self.conv is not None:
            conv_state = recurrent_state = None
            if state is not None:
                conv_state, recurrent_state = state["conv"], state["recurrent"]
            convolved, conv_state = self.conv(logits[..., : 2 * hidden], conv_state, segment_starts)
            logits = jnp.concatenate([convolved, logits[..., 2 * hidden :]], axis=-1)
        candidate_logits, forget_logits, gate_logits = jnp.split(logits, 3, axis=-1)
        h, final_state = hgrn_recurrence(
            candidate_logits,
            forget_logits,
            lower_bound=self.forget_lower_bound,
            initial_state=recurrent_state,
            segment_starts=segment_starts,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        y = self.out_proj(hgrn_output(h, gate_logits, self.norm, self.form).astype(x.dtype))
        if self.conv is not None:
            final_state = {"conv": conv_state, "recurrent": final_state}
        return y, final_state
