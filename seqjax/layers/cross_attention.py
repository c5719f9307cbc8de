"""Cross-attention: a decoder stream [B, T, D] reads the encoder outputs [B, S, D].

Multi-head dot-product attention ("Attention Is All You Need", Vaswani et al., 2017), the
queries from the decoder, the keys and values from the encoder:

    o_t = W_o concat_h Σ_{s: mask_s} softmax_s(q_{t,h}·k_{s,h} / √K) v_{s,h}

Additive attention ("Neural Machine Translation by Jointly Learning to Align and Translate",
Bahdanau et al., 2015), one score per (decoder position, source position):

    e_{t,s} = vᵀ tanh(W x_t + U h_s)    α_{t,s} = softmax_s(e_{t,s})    o_t = W_o Σ_s α_{t,s} h_s

The fixed context of the encoder–decoder without attention ("Learning Phrase Representations
using RNN Encoder–Decoder", Cho et al., 2014): every decoder position reads the same summary,
the encoder output at the source's last real position,

    o_t = W_o h_{S_b - 1}

Positions of the source where ``source_mask`` [B, S] is False (padding) get no weight; a row
with no true position reads 0. The projections of the encoder outputs depend on the source
alone, so ``memory`` computes them once and every decoding step reuses them.
"""

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_choice, check_divides, check_sizes
from seqjax.layers.heads import merge_heads, split_heads
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.ops import checks
from seqjax.ops.attention import softmax_attention
from seqjax.typing import Array, PyTree


def dot_product_cross_attention(
    queries: Array, keys: Array, values: Array, source_mask: Array
) -> Array:
    """Non-causal softmax attention with a key mask: queries [B, T, H, K], keys [B, S, H, K],
    values [B, S, H, V], source_mask bool [B, S] -> [B, T, H, V], scores scaled by K^-1/2.

    Masked keys are the empty slots (negative positions) of ``softmax_attention``."""
    batch, length = queries.shape[:2]
    return softmax_attention(
        queries,
        keys,
        values,
        q_positions=jnp.zeros((batch, length), jnp.int32),
        kv_positions=jnp.where(source_mask, 0, -1).astype(jnp.int32),
        causal=False,
    )


def additive_attention_weights(
    query_features: Array, key_features: Array, score_vector: Array, source_mask: Array
) -> Array:
    """Bahdanau's alignment: α_{t,s} = softmax_s(vᵀ tanh(W x_t + U h_s)) over unmasked s.

    query_features W x [B, T, A], key_features U h [B, S, A], score_vector v [A],
    source_mask bool [B, S] -> weights [B, T, S] in float32 (a row with no true position is 0).
    """
    hidden = jnp.tanh(
        query_features.astype(jnp.float32)[:, :, None]
        + key_features.astype(jnp.float32)[:, None, :]
    )
    scores = hidden @ score_vector.astype(jnp.float32)
    allowed = source_mask[:, None, :]
    scores = jnp.where(allowed, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    # A fully masked row has max -inf; shifting by 0 keeps its weights at exactly 0.
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    weights = jnp.where(allowed, jnp.exp(scores - shift), 0.0)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    return weights / jnp.where(total > 0, total, 1.0)


def check_cross_inputs(where: str, x: Array, encoder_outputs: Array, source_mask: Array) -> None:
    """Refuses anything but a floating x [B, T, D], encoder outputs [B, S, ...] and a boolean
    source_mask [B, S] that share B."""
    checks.floating(where, "x", x)
    if jnp.ndim(x) != 3:
        raise ValueError(f"{where}: x must be [B, T, D], got shape {jnp.shape(x)}")
    batch, source_length = jnp.shape(encoder_outputs)[:2]
    if jnp.shape(x)[0] != batch:
        raise ValueError(
            f"{where}: x [B, T, D] and the encoder memory must share B, got x "
            f"{jnp.shape(x)} and memory for {batch} sequences"
        )
    checks.shape(where, "source_mask", source_mask, (batch, source_length), "[B, S]")
    if jnp.result_type(source_mask) != jnp.bool_:
        raise ValueError(
            f"{where}: source_mask must be boolean, got {jnp.result_type(source_mask)}"
        )


class DotProductCrossAttention(nnx.Module):
    """Multi-head dot-product cross-attention; see the module docstring.

    Options: ``num_heads`` H, ``head_dim`` K (None: D / H), ``output_bias``.
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_heads: int = 4,
        head_dim: int | None = None,
        output_bias: bool = False,
    ):
        check_sizes(d_model=d_model, num_heads=num_heads, head_dim=head_dim)
        if head_dim is None:
            check_divides("num_heads", num_heads, "d_model", d_model)
            head_dim = d_model // num_heads
        self.d_model, self.num_heads, self.head_dim = d_model, num_heads, head_dim
        width = num_heads * head_dim
        self.query = linear(d_model, width, EMBED, HEADS, use_bias=False, rngs=rngs)
        self.key_value = linear(d_model, 2 * width, EMBED, HEADS, use_bias=False, rngs=rngs)
        self.output = linear(width, d_model, HEADS, EMBED, use_bias=output_bias, rngs=rngs)

    def memory(self, encoder_outputs: Array) -> PyTree:
        """Keys and values [B, S, H, K] of the encoder outputs [B, S, D]."""
        keys, values = jnp.split(
            split_heads(self.key_value(encoder_outputs), 2 * self.num_heads), 2, axis=2
        )
        return {"keys": keys, "values": values}

    def __call__(self, x: Array, memory: PyTree, source_mask: Array) -> Array:
        """x [B, T, D] attends over ``memory`` (from ``memory``) -> [B, T, D] in x's dtype."""
        check_cross_inputs("dot-product cross-attention", x, memory["keys"], source_mask)
        queries = split_heads(self.query(x), self.num_heads)
        attended = dot_product_cross_attention(
            queries, memory["keys"].astype(queries.dtype), memory["values"], source_mask
        )
        return self.output(merge_heads(attended)).astype(x.dtype)


class AdditiveAttention(nnx.Module):
    """Bahdanau's additive attention; see the module docstring.

    Options: ``attention_size`` A, the width of W x + U h (None: D).
    """

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, attention_size: int | None = None):
        check_sizes(d_model=d_model, attention_size=attention_size)
        attention_size = attention_size or d_model
        self.d_model, self.attention_size = d_model, attention_size
        self.query = linear(d_model, attention_size, EMBED, HEADS, use_bias=False, rngs=rngs)
        self.key = linear(d_model, attention_size, EMBED, HEADS, use_bias=False, rngs=rngs)
        score_vector = nnx.initializers.normal(stddev=attention_size**-0.5)(
            rngs.params(), (attention_size,)
        )
        self.score_vector = param(score_vector, HEADS)
        self.output = linear(d_model, d_model, EMBED, EMBED, use_bias=False, rngs=rngs)

    def memory(self, encoder_outputs: Array) -> PyTree:
        """U h [B, S, A] and the encoder outputs h [B, S, D] that the weights average."""
        return {"keys": self.key(encoder_outputs), "values": encoder_outputs}

    def __call__(self, x: Array, memory: PyTree, source_mask: Array) -> Array:
        """x [B, T, D] attends over ``memory`` (from ``memory``) -> [B, T, D] in x's dtype."""
        check_cross_inputs("additive attention", x, memory["keys"], source_mask)
        weights = additive_attention_weights(
            self.query(x), memory["keys"], self.score_vector[...], source_mask
        )
        context = jnp.einsum("bts,bsd->btd", weights, memory["values"].astype(jnp.float32))
        return self.output(context.astype(x.dtype)).astype(x.dtype)


class FinalContext(nnx.Module):
    """No attention: every decoder position reads the encoder output at the source's last
    real position (Cho et al. 2014); see the module docstring. No options."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs):
        check_sizes(d_model=d_model)
        self.d_model = d_model
        self.output = linear(d_model, d_model, EMBED, EMBED, use_bias=False, rngs=rngs)

    def memory(self, encoder_outputs: Array) -> PyTree:
        return {"keys": encoder_outputs}

    def __call__(self, x: Array, memory: PyTree, source_mask: Array) -> Array:
        """x [B, T, D] -> the projected final context [B, T, D] in x's dtype (0 for a row with
        no real position)."""
        check_cross_inputs("final context", x, memory["keys"], source_mask)
        last = jnp.maximum(jnp.sum(source_mask, axis=1) - 1, 0)
        final = jnp.take_along_axis(memory["keys"], last[:, None, None], axis=1)
        final = jnp.where(jnp.any(source_mask, axis=1)[:, None, None], final, 0)
        context = self.output(final.astype(x.dtype))
        return jnp.broadcast_to(context, x.shape).astype(x.dtype)


CROSS_ATTENTIONS = {
    "dot_product": DotProductCrossAttention,
    "additive": AdditiveAttention,
    "final": FinalContext,
}


def create_cross_attention(
    kind: str, d_model: int, *, rngs: nnx.Rngs, **options: Any
) -> DotProductCrossAttention | AdditiveAttention | FinalContext:
    """A cross-attention by name (a key of ``CROSS_ATTENTIONS``) with its ``options``."""
    check_choice("cross_attention", kind, CROSS_ATTENTIONS)
    cls = CROSS_ATTENTIONS[kind]
    parameters = inspect.signature(cls.__init__).parameters
    known = [name for name in parameters if name not in ("self", "d_model", "rngs")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"cross_attention {kind!r} got unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(known)}"
        )
    return cls(d_model, rngs=rngs, **options)
