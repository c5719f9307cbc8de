"""An encoder–decoder joined by cross-attention ("Sequence to Sequence Learning with Neural
Networks", Sutskever et al., 2014; Bahdanau et al., 2015; "Attention Is All You Need").

    h = encoder(source)                                    (once per source, [B, S, D])
    y = embed(target_inputs)
    for each decoder block:  y = y + mixer(norm(y))
                             y = y + cross_attention(norm(y), h, source_mask)
                             y = y + mlp(norm(y))
    logits = head(norm(y))

The encoder is a ``Backbone`` of any pattern; right padding (``source_mask`` False) is a
segment of its own, so a mixer that respects packing (every causal one, and the reverse pass
of a bidirectional one) never reads it into the true tokens, and cross-attention gives it
no weight. The decoder is a ``Backbone`` of mixers only (its embedding, mixer blocks and
final norm) with a cross-attention block after each mixer block, so it must be causal: it
carries the stacked mixer states and decodes one token at a time, the encoder's projected
memory computed once.
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqjax.layers.checks import check_size
from seqjax.layers.cross_attention import create_cross_attention
from seqjax.layers.embeddings import check_token_ids
from seqjax.layers.mlp import GatedMLP
from seqjax.layers.norms import create_norm
from seqjax.layers.partitioning import BATCH, EMBED, SEQUENCE, VOCAB, constrain, linear
from seqjax.models.backbone import Backbone
from seqjax.typing import Array, PyTree

STACK_KEYS = (
    "pattern",
    "num_layers",
    "mixer_options",
    "layer_options",
    "mlp_expansion",
    "mlp_hidden_size",
    "mlp_activation",
    "mlp_bias",
    "norm",
    "norm_epsilon",
    "bidirectional",
    "bidirectional_merge",
    "bidirectional_shared_weights",
)
_MLP_KEYS = ("mlp_expansion", "mlp_hidden_size", "mlp_activation", "mlp_bias")


class EncoderMemory(NamedTuple):
    """What the decoder reads of a source: the encoder outputs [B, S, D], the source mask
    bool [B, S] and each decoder block's projections of the outputs (keys, values)."""

    outputs: Array
    source_mask: Array
    layers: tuple[PyTree, ...]


def check_causal(backbone: Backbone, what: str) -> None:
    """Refuses a stack with a mixer that cannot carry a state (a bidirectional one, whose
    reverse pass needs the whole segment), where decoding runs one token at a time."""
    for i, block in enumerate(backbone.blocks):
        try:
            jax.eval_shape(lambda mixer=block.mixer: mixer.init_state(1))
        except ValueError as error:
            raise ValueError(
                f"{what} block {i} ({type(block.mixer).__name__}) cannot decode one token at "
                f"a time: {error}"
            ) from None


def check_source_mask(source_mask: Array, source_shape: tuple[int, ...]) -> None:
    """Refuses a source_mask other than a boolean [B, S] of right padding (True, then False)."""
    if jnp.result_type(source_mask) != jnp.bool_:
        raise ValueError(f"source_mask must be boolean, got {jnp.result_type(source_mask)}")
    if jnp.shape(source_mask) != tuple(source_shape):
        raise ValueError(
            f"source_mask must be [B, S] = {tuple(source_shape)} like source, got "
            f"{jnp.shape(source_mask)}"
        )
    if isinstance(source_mask, jax.core.Tracer):
        return
    mask = np.asarray(source_mask)
    after_padding = np.any(mask[:, 1:] & ~mask[:, :-1], axis=1)
    if after_padding.any():
        rows = [int(i) for i in np.flatnonzero(after_padding)]
        raise ValueError(
            f"source_mask must be right padding (True for the tokens, then False), but rows "
            f"{rows} have a True after a False"
        )


def _stack_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    options = dict(options)
    unknown = sorted(set(options) - set(STACK_KEYS))
    if unknown:
        raise ValueError(
            f"{name} has unknown key(s) {', '.join(unknown)}; expected {', '.join(STACK_KEYS)}"
        )
    missing = [key for key in ("pattern", "num_layers") if key not in options]
    if missing:
        raise ValueError(f"{name} must give {' and '.join(missing)}")
    return options


class CrossAttentionBlock(nnx.Module):
    """Pre-norm cross-attention over the encoder memory, then (if ``mlp_hidden_size`` > 0)
    a gated MLP, each with a residual: y += cross(norm(y), h); y += mlp(norm(y))."""

    def __init__(
        self,
        d_model: int,
        *,
        cross_attention: str,
        cross_attention_options: Mapping[str, Any],
        mlp_hidden_size: int,
        mlp_activation: str,
        mlp_bias: bool,
        norm: str,
        norm_epsilon: float | None,
        rngs: nnx.Rngs,
    ):
        self.cross_norm = create_norm(norm, d_model, epsilon=norm_epsilon)
        self.cross_attention = create_cross_attention(
            cross_attention, d_model, rngs=rngs, **cross_attention_options
        )
        if mlp_hidden_size:
            self.mlp_norm = create_norm(norm, d_model, epsilon=norm_epsilon)
            self.mlp = GatedMLP(
                d_model, mlp_hidden_size, activation=mlp_activation, use_bias=mlp_bias, rngs=rngs
            )
        else:
            self.mlp_norm = self.mlp = None

    def memory(self, encoder_outputs: Array) -> PyTree:
        return self.cross_attention.memory(encoder_outputs)

    def __call__(self, x: Array, memory: PyTree, source_mask: Array) -> Array:
        x = x + self.cross_attention(self.cross_norm(x), memory, source_mask)
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x


class EncoderDecoder(nnx.Module):
    """Encoder stack over source token ids, causal decoder stack with cross-attention, and a
    next-token head: ``model(source, source_mask, target_inputs)`` -> logits [B, T, V].

    ``encoder`` and ``decoder`` take the keys of ``STACK_KEYS`` (``pattern`` and
    ``num_layers`` required; the rest as in ``Backbone``). ``cross_attention`` is
    "dot_product" (options ``num_heads``, ``head_dim``, ``output_bias``) or "additive"
    (option ``attention_size``). ``tie_embeddings`` reads the logits from the target
    embedding; ``head_bias`` gives a head of its own a bias.
    """

    def __init__(
        self,
        *,
        source_vocab_size: int,
        target_vocab_size: int,
        d_model: int,
        encoder: Mapping[str, Any],
        decoder: Mapping[str, Any],
        rngs: nnx.Rngs,
        cross_attention: str = "dot_product",
        cross_attention_options: Mapping[str, Any] | None = None,
        tie_embeddings: bool = False,
        head_bias: bool = True,
        remat: str = "none",
    ):
        check_size("source_vocab_size", source_vocab_size)
        check_size("target_vocab_size", target_vocab_size)
        encoder = _stack_options("encoder", encoder)
        decoder = _stack_options("decoder", decoder)
        self.source_vocab_size, self.target_vocab_size = source_vocab_size, target_vocab_size
        self.d_model = d_model
        self.encoder = Backbone(
            d_model=d_model, vocab_size=source_vocab_size, remat=remat, rngs=rngs, **encoder
        )
        mlp = {key: decoder.pop(key) for key in _MLP_KEYS if key in decoder}
        self.decoder = Backbone(
            d_model=d_model,
            vocab_size=target_vocab_size,
            mlp_hidden_size=0,
            remat=remat,
            rngs=rngs,
            **decoder,
        )
        check_causal(self.decoder, "decoder")
        mlp_expansion = mlp.get("mlp_expansion", 4)
        check_size("decoder mlp_expansion", mlp_expansion, minimum=0)
        mlp_hidden_size = mlp.get("mlp_hidden_size")
        if mlp_hidden_size is None:
            mlp_hidden_size = mlp_expansion * d_model
        check_size("decoder mlp_hidden_size", mlp_hidden_size, minimum=0)
        self.cross_blocks = nnx.List(
            [
                CrossAttentionBlock(
                    d_model,
                    cross_attention=cross_attention,
                    cross_attention_options=dict(cross_attention_options or {}),
                    mlp_hidden_size=mlp_hidden_size,
                    mlp_activation=mlp.get("mlp_activation", "silu"),
                    mlp_bias=mlp.get("mlp_bias", False),
                    norm=decoder.get("norm", "rms"),
                    norm_epsilon=decoder.get("norm_epsilon"),
                    rngs=rngs,
                )
                for _ in self.decoder.blocks
            ]
        )
        self.tie_embeddings = tie_embeddings
        self.head = (
            None
            if tie_embeddings
            else linear(d_model, target_vocab_size, EMBED, VOCAB, use_bias=head_bias, rngs=rngs)
        )

    def encode(self, source: Array, source_mask: Array | None = None) -> EncoderMemory:
        """Source ids [B, S] (``source_mask`` bool [B, S], right padding False; None: no
        padding) -> the memory every decoding step reads."""
        check_token_ids(source, self.source_vocab_size, "source")
        if source_mask is None:
            source_mask = jnp.ones(jnp.shape(source), bool)
        check_source_mask(source_mask, jnp.shape(source))
        outputs, _ = self.encoder(source, mask=source_mask)
        projections = tuple(block.memory(outputs) for block in self.cross_blocks)
        return EncoderMemory(outputs, source_mask, projections)

    def decode(
        self, target_inputs: Array, memory: EncoderMemory, *, state: PyTree | None = None
    ) -> tuple[Array, tuple[PyTree, ...]]:
        """Target ids [B, T] after the decoder ``state`` (None: the start) -> logits [B, T, V]
        in float32 and the new stacked decoder state."""
        check_token_ids(target_inputs, self.target_vocab_size, "target_inputs")
        blocks = self.decoder.blocks
        states = (None,) * len(blocks) if state is None else state
        if len(states) != len(blocks):
            raise ValueError(f"state must hold {len(blocks)} block states, got {len(states)}")
        x = constrain(self.decoder.embed(target_inputs), BATCH, SEQUENCE, None)
        new_states = []
        for block, cross, block_state, layer_memory in zip(
            blocks, self.cross_blocks, states, memory.layers, strict=True
        ):
            x, new_state, _ = self.decoder.run_block(block, x, block_state, None, {})
            x = constrain(cross(x, layer_memory, memory.source_mask), BATCH, SEQUENCE, None)
            new_states.append(new_state)
        hidden = self.decoder.final_norm(x)
        logits = self.decoder.embed.attend(hidden) if self.head is None else self.head(hidden)
        return logits.astype(jnp.float32), tuple(new_states)

    def __call__(self, source: Array, source_mask: Array | None, target_inputs: Array) -> Array:
        """Teacher-forced logits [B, T, V]: the decoder reads target_inputs [B, T] (the
        targets shifted right behind a start token) and the encoded source [B, S]."""
        logits, _ = self.decode(target_inputs, self.encode(source, source_mask))
        return logits

    def init_state(self, batch_size: int) -> tuple[PyTree, ...]:
        """The decoder's stacked mixer states at the start of a target."""
        return self.decoder.init_state(batch_size)

    @property
    def context_limit(self) -> int | None:
        """The longest target the decoder's states can hold, or None if unbounded."""
        return self.decoder.context_limit
