"""HGRN2: HGRN with its state expanded by an outer product, a gated linear attention.

"HGRN2: Gated Linear RNNs with State Expansion" (Qin et al., 2024). HGRN's forget gate
f_t ∈ [γ, 1]^K with a lower bound γ rising with depth, its input gate tied as 1 - f_t, and
its output gate o_t read out an expanded state per head:

    f_t = γ + (1 - γ) σ(W_f x_t),  i_t = SiLU(W_i x_t),  o_t = σ(W_o x_t)
    S_t = diag(f_t) S_{t-1} + (1 - f_t) i_tᵀ,    y_t = S_tᵀ o_t                S_t: [K, V]

that is ``gated_linear_attention(q=o, k=1 - f, v=i, log_decay=log f)`` with a decay per key
dimension [B, T, H, K]: the forget gate is the decay, its complement the key, the output gate
the query. The expand ratio K (the paper's 128) is each head's key size; the D input
channels are split into H = D / K heads of V = K values, so the state holds D · K numbers
where HGRN's holds D. Then a LayerNorm over the D outputs and an output projection:

    out = W_out LayerNorm(y) + b_out

As in HGRN (``hgrn.py``), the lower bound of layer l of L is γ_l = l / L (the paper's learned
bounds cumsum(softmax(Γ)) at Γ = 0), or a fixed ``forget_lower_bound``.

``form="paper"`` (the default) is the block above. ``form="fla"`` is flash-linear-attention's
HGRN2Attention: projections without biases, the output gate SiLU instead of σ, the input
taken as it is (no SiLU), the readout scaled by K^-1/2 and an RMSNorm (ε 1e-5) in place of
the LayerNorm (its learned bounds are a vector per layer, here the scalar γ):

    o_t = SiLU(W_o x_t),  i_t = W_i x_t,  y_t = K^-1/2 S_tᵀ o_t,  out = W_out RMSNorm(y)

Either form may put a short causal depthwise conv of width ``conv_width`` (no bias, no
activation) over the three logits W_o x, W_f x, W_i x, as fla's ``use_short_conv``.

State: S [B, H, K, K]; with a conv {"conv": the last W - 1 conv inputs [B, W-1, 3D],
"recurrent": S}.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_choice, check_divides, check_size, check_sizes
from seqjax.layers.conv import ShortConv
from seqjax.layers.heads import merge_heads, split_heads
from seqjax.layers.hgrn import FORMS, depth_lower_bound
from seqjax.layers.norms import LayerNorm, RMSNorm
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.layers.registry import register
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree


def hgrn2_gates(forget_logits: Array, lower_bound: float) -> tuple[Array, Array]:
    """(log f_t, 1 - f_t) for f_t = γ + (1 - γ) σ(logits) ∈ [γ, 1], in float32.

    Both stay accurate at the ends: log f = log(γ + (1 - γ) σ) is a logaddexp of log γ and
    log(1 - γ) + log σ, and 1 - f = (1 - γ) σ(-logits) does not subtract numbers near 1.
    """
    logits = forget_logits.astype(jnp.float32)
    log_forget = jax.nn.log_sigmoid(logits)
    if lower_bound > 0.0:
        log_forget = jnp.logaddexp(jnp.log(lower_bound), jnp.log1p(-lower_bound) + log_forget)
    return log_forget, (1.0 - lower_bound) * jax.nn.sigmoid(-logits)


def hgrn2_recurrence(
    query_logits: Array,
    forget_logits: Array,
    input_logits: Array,
    *,
    lower_bound: float = 0.0,
    form: str = "paper",
    **op_options,
) -> tuple[Array, Array]:
    """HGRN2's recurrence of the module docstring; returns ``(y [B, T, H, V], S_T)``.

    Args:
      query_logits: W_o x [B, T, H, K] (o_t = σ of it; SiLU in the fla form).
      forget_logits: W_f x [B, T, H, K].
      input_logits: W_i x [B, T, H, V] (i_t = SiLU of it; itself in the fla form).
      lower_bound: γ, the least value of the forget gate.
      form: "paper" or "fla" (module docstring); the fla form scales y by K^-1/2.
      op_options: of ``gated_linear_attention`` (initial_state S [B, H, K, V],
        segment_starts, chunk_size, implementation, sequence_split).
    """
    log_forget, key = hgrn2_gates(forget_logits, lower_bound)
    query_logits, input_logits = query_logits.astype(jnp.float32), input_logits.astype(jnp.float32)
    if form == "fla":
        query, value = jax.nn.silu(query_logits), input_logits
        scale = query_logits.shape[-1] ** -0.5
    else:
        query, value, scale = jax.nn.sigmoid(query_logits), jax.nn.silu(input_logits), None
    return gated_linear_attention(
        query, key, value, log_decay=log_forget, scale=scale, **op_options
    )


@register("hgrn2")
class HGRN2(nnx.Module):
    """The HGRN2 layer (Qin et al., 2024); see the module docstring. x: [B, T, D].

    Options: ``expand_ratio`` K (the state expansion: heads of K keys and K values, H = D / K),
    ``forget_lower_bound`` γ (None: layer_index / num_layers), ``chunk_size`` and
    ``implementation`` (of ``gated_linear_attention``), ``form`` ("paper", the default, or
    "fla") and ``conv_width`` W (0: no short conv).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        expand_ratio: int = 16,
        forget_lower_bound: float | None = None,
        chunk_size: int = 64,
        implementation: str | None = None,
        form: str = "paper",
        conv_width: int = 0,
        layer_index: int = 0,
        num_layers: int = 1,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(expand_ratio=expand_ratio, chunk_size=chunk_size)
        check_divides("expand_ratio", expand_ratio, "d_model", d_model)
        check_choice("form", form, FORMS)
        check_size("conv_width", conv_width, minimum=0)
        self.num_heads, self.expand_ratio = d_model // expand_ratio, expand_ratio
        self.forget_lower_bound = depth_lower_bound(forget_lower_bound, layer_index, num_layers)
        self.chunk_size, self.implementation = chunk_size, implementation
        self.sequence_split = sequence_split
        self.form, use_bias = form, form == "paper"
        # Query (output gate), forget gate and input from one projection.
        self.input_proj = linear(d_model, 3 * d_model, EMBED, HEADS, use_bias=use_bias, rngs=rngs)
        norm = RMSNorm if form == "fla" else LayerNorm
        self.norm = norm(d_model, logical_axis=HEADS, epsilon=1e-5)
        self.out_proj = linear(d_model, d_model, HEADS, EMBED, use_bias=use_bias, rngs=rngs)
        self.conv = nnx.data(None)
        if conv_width:
            self.conv = ShortConv(
                conv_width, 3 * d_model, bias=None, sequence_split=sequence_split, rngs=rngs
            )

    def init_state(self, batch_size: int) -> PyTree:
        size = self.expand_ratio
        recurrent = jnp.zeros((batch_size, self.num_heads, size, size), jnp.float32)
        if self.conv is None:
            return recurrent
        return {"conv": self.conv.init_state(batch_size), "recurrent": recurrent}

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        logits, recurrent_state = self.input_proj(x), state
        if self.conv is not None:
            conv_state = recurrent_state = None
            if state is not None:
                conv_state, recurrent_state = state["conv"], state["recurrent"]
            logits, conv_state = self.conv(logits, conv_state, segment_starts)
        query_logits, forget_logits, input_logits = (
            split_heads(t, self.num_heads) for t in jnp.split(logits, 3, axis=-1)
        )
        y, final_state = hgrn2_recurrence(
            query_logits,
            forget_logits,
            input_logits,
            lower_bound=self.forget_lower_bound,
            form=self.form,
            initial_state=recurrent_state,
            segment_starts=segment_starts,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        y = self.norm(merge_heads(y)).astype(x.dtype)
        if self.conv is not None:
            final_state = {"conv": conv_state, "recurrent": final_state}
        return self.out_proj(y), final_state
