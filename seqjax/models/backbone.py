"""The residual backbone shared by every model, and its heads.

    x = embed(inputs) · embedding_multiplier
    for each block:  x = x + mixer(norm(x));  x = x + mlp(norm(x))
    y = head(norm(x)),  capped to c · tanh(y / c) with a ``logit_soft_cap`` c

The mixer of block i is ``pattern[i % len(pattern)]``, so hybrids such as Griffin's
(rg_lru, rg_lru, local_attention) are configuration; ``mixer_options[name]`` configures
every block of that mixer and ``layer_options[i]`` updates them for block i alone (a
window of its own in one attention layer). Models take and return the stacked state (a
tuple with one mixer state per block), so decoding is the same ``__call__`` with T = 1
after a parallel prefill.

The rest is configuration the published models need, not copies of the backbone: the norm
kind and its epsilon, the MLP's hidden size, activation and biases (``mlp_hidden_size`` 0:
blocks with a mixer and no MLP), the embedding multiplier, an output layer tied to the embedding
or of its own, with or without a bias.

With ``bidirectional`` every mixer runs forward and over each segment reversed, merged by
``bidirectional_merge`` (seqjax/layers/bidirectional.py): an encoder or tagger, with no
state to decode with. A ``mask`` [B, T] (true at real tokens, rows right-padded) makes each
run of padding a segment of its own, so no real position reads padding in either direction
and right-padded rows equal the examples run one by one.

A mixer with a ``call_with_carry(x, carry, *, state, segment_starts) -> (y, state, carry)``
method is called through it: ``carry`` holds the arrays the blocks before it pass on to the
ones after (RWKV-7's first-layer values, which every later rwkv7 layer mixes into its own).

Every parameter declares its logical axis names where it is created (layers/partitioning.py)
and the residual stream is constrained to (batch, sequence), which training maps to mesh
axes. With ``sequence_split`` (seqjax.ops.sequence_parallel) every mixer runs its ops over
time sequence-parallel over that mesh axis; a mixer that cannot is refused by name when the
backbone is built. ``remat`` recomputes each block's activations in the backward pass:
"none", "full" (keep only the block inputs) or "dots" (also keep the results of matmuls
without batch dimensions).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax import layers
from seqjax.layers.bidirectional import MERGES, check_mask, padding_segment_starts
from seqjax.layers.checks import check_choice, check_number, check_size, check_type
from seqjax.layers.embeddings import InputProjection, TokenEmbedding
from seqjax.layers.mlp import ACTIVATIONS, GatedMLP
from seqjax.layers.norms import NORMS, create_norm
from seqjax.layers.partitioning import BATCH, EMBED, SEQUENCE, VOCAB, constrain, linear
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

POOLINGS = ("last", "mean", "attention")
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def parse_pattern(pattern: str | Sequence[str]) -> tuple[str, ...]:
    """``"gru"`` or ``"rg_lru,rg_lru,attention"`` (or a sequence) -> validated mixer names."""
    names = tuple(pattern.split(",")) if isinstance(pattern, str) else tuple(pattern)
    names = tuple(name.strip() for name in names)
    if not names or any(not name for name in names):
        raise ValueError(f"mixer pattern must name at least one mixer, got {pattern!r}")
    for name in names:
        layers.mixer_class(name)  # raises with the list of known mixers
    return names


class Block(nnx.Module):
    """Pre-norm residual block: token mixer, then (if ``mlp_hidden_size`` > 0) a gated MLP."""

    def __init__(
        self,
        mixer: str,
        d_model: int,
        *,
        mixer_options: Mapping[str, Any],
        mlp_hidden_size: int,
        norm: str,
        rngs: nnx.Rngs,
        norm_epsilon: float | None = None,
        mlp_activation: str = "silu",
        mlp_bias: bool = False,
        layer_index: int = 0,
        num_layers: int = 1,
        sequence_split: SequenceSplit | None = None,
        bidirectional: Mapping[str, Any] | None = None,
    ):
        self.mixer_norm = create_norm(norm, d_model, epsilon=norm_epsilon)
        self.mixer = layers.create(
            mixer,
            d_model=d_model,
            rngs=rngs,
            layer_index=layer_index,
            num_layers=num_layers,
            sequence_split=sequence_split,
            **(bidirectional or {}),
            **mixer_options,
        )
        if mlp_hidden_size:
            self.mlp_norm = create_norm(norm, d_model, epsilon=norm_epsilon)
            self.mlp = GatedMLP(
                d_model, mlp_hidden_size, activation=mlp_activation, use_bias=mlp_bias, rngs=rngs
            )
        else:
            self.mlp_norm = self.mlp = None

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        x, new_state, _ = self.call_with_carry(x, {}, state=state, segment_starts=segment_starts)
        return x, new_state

    def call_with_carry(
        self,
        x: Array,
        carry: dict[str, Array],
        *,
        state: PyTree | None = None,
        segment_starts: Array | None = None,
    ) -> tuple[Array, PyTree, dict[str, Array]]:
        """x, the mixer's new state and the carry for the next block (module docstring)."""
        normed = self.mixer_norm(x)
        if hasattr(self.mixer, "call_with_carry"):
            mixed, new_state, carry = self.mixer.call_with_carry(
                normed, carry, state=state, segment_starts=segment_starts
            )
        else:
            mixed, new_state = self.mixer(normed, state=state, segment_starts=segment_starts)
        x = x + mixed
        if self.mlp is not None:
            x = x + self.mlp(self.mlp_norm(x))
        return x, new_state, carry

    def init_state(self, batch_size: int) -> PyTree:
        return self.mixer.init_state(batch_size)


class Backbone(nnx.Module):
    """Embedding (token ids [B, T]) or projection (features [B, T, F]) -> blocks -> norm.

    Returns hidden states [B, T, D] and the stacked state. ``sequence_split`` reaches every
    mixer (a ValueError names a mixer that has no sequence-parallel form). ``bidirectional``
    runs every mixer both ways, merged by ``bidirectional_merge`` ("concat", "sum" or
    "gate"), with one mixer for both directions if ``bidirectional_shared_weights``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_layers: int,
        pattern: str | Sequence[str],
        rngs: nnx.Rngs,
        vocab_size: int | None = None,
        input_dim: int | None = None,
        mixer_options: Mapping[str, Mapping[str, Any]] | None = None,
        layer_options: Mapping[int, Mapping[str, Any]] | None = None,
        mlp_expansion: int = 4,
        mlp_hidden_size: int | None = None,
        mlp_activation: str = "silu",
        mlp_bias: bool = False,
        norm: str = "rms",
        norm_epsilon: float | None = None,
        embedding_multiplier: float = 1.0,
        remat: str = "none",
        sequence_split: SequenceSplit | None = None,
        bidirectional: bool = False,
        bidirectional_merge: str | None = None,
        bidirectional_shared_weights: bool | None = None,
    ):
        if (vocab_size is None) == (input_dim is None):
            raise ValueError("give exactly one of vocab_size (token inputs) or input_dim")
        check_size("d_model", d_model)
        check_size("num_layers", num_layers)
        check_size("mlp_expansion", mlp_expansion, minimum=0)
        if mlp_hidden_size is None:
            mlp_hidden_size = mlp_expansion * d_model
        check_size("mlp_hidden_size", mlp_hidden_size, minimum=0)
        check_choice("mlp_activation", mlp_activation, ACTIVATIONS)
        check_choice("norm", norm, NORMS)
        check_choice("remat", remat, REMAT_POLICIES)
        check_number("embedding_multiplier", embedding_multiplier)
        check_type("bidirectional", bidirectional, bool)
        if bidirectional:
            merge = "concat" if bidirectional_merge is None else bidirectional_merge
            check_choice("bidirectional_merge", merge, MERGES)
            shared = bidirectional_shared_weights
            check_type("bidirectional_shared_weights", shared, bool | None)
            both_ways = {"bidirectional": True, "merge": merge, "shared_weights": bool(shared)}
        else:
            given = {
                "bidirectional_merge": bidirectional_merge,
                "bidirectional_shared_weights": bidirectional_shared_weights,
            }
            given = [f"{key}={value!r}" for key, value in given.items() if value is not None]
            if given:
                raise ValueError(f"{', '.join(given)} given, but bidirectional is False")
            both_ways = None
        self.bidirectional = bidirectional
        self.d_model = d_model
        self.remat = remat
        self.embedding_multiplier = embedding_multiplier
        self.pattern = parse_pattern(pattern)
        mixer_options = dict(mixer_options or {})
        unknown = sorted(set(mixer_options) - set(layers.available()))
        if unknown:
            raise ValueError(
                f"mixer_options has entries for unknown mixer(s) {', '.join(unknown)}; "
                f"available mixers: {', '.join(layers.available())}"
            )
        layer_options = {int(i): dict(options) for i, options in (layer_options or {}).items()}
        outside = sorted(i for i in layer_options if not 0 <= i < num_layers)
        if outside:
            raise ValueError(
                f"layer_options has entries for layers {outside}, outside 0..{num_layers - 1}"
            )
        self.embed = (
            TokenEmbedding(vocab_size, d_model, rngs=rngs)
            if vocab_size is not None
            else InputProjection(input_dim, d_model, rngs=rngs)
        )
        mixers = [self.pattern[i % len(self.pattern)] for i in range(num_layers)]
        self.blocks = nnx.List(
            [
                Block(
                    mixer,
                    d_model,
                    mixer_options={**mixer_options.get(mixer, {}), **layer_options.get(i, {})},
                    mlp_hidden_size=mlp_hidden_size,
                    mlp_activation=mlp_activation,
                    mlp_bias=mlp_bias,
                    norm=norm,
                    norm_epsilon=norm_epsilon,
                    rngs=rngs,
                    layer_index=i,
                    num_layers=num_layers,
                    sequence_split=sequence_split,
                    bidirectional=both_ways,
                )
                for i, mixer in enumerate(mixers)
            ]
        )
        self.final_norm = create_norm(norm, d_model, epsilon=norm_epsilon)

    def __call__(
        self,
        inputs: Array,
        *,
        state: PyTree | None = None,
        segment_starts: Array | None = None,
        mask: Array | None = None,
    ) -> tuple[Array, tuple[PyTree, ...]]:
        states = (None,) * len(self.blocks) if state is None else state
        if len(states) != len(self.blocks):
            raise ValueError(f"state must hold {len(self.blocks)} block states, got {len(states)}")
        if mask is not None:
            check_mask("", mask, jnp.shape(inputs)[:2])
            segment_starts = padding_segment_starts(segment_starts, mask)
        x = self.embed(inputs)
        if self.embedding_multiplier != 1.0:
            x = x * jnp.asarray(self.embedding_multiplier, x.dtype)
        x = constrain(x, BATCH, SEQUENCE, None)
        new_states, carry = [], {}
        for block, block_state in zip(self.blocks, states, strict=True):
            x, new_state, carry = self.run_block(block, x, block_state, segment_starts, carry)
            new_states.append(new_state)
            x = constrain(x, BATCH, SEQUENCE, None)
        return self.final_norm(x), tuple(new_states)

    def run_block(
        self,
        block: Block,
        x: Array,
        state: PyTree | None,
        segment_starts: Array | None,
        carry: dict[str, Array],
    ) -> tuple[Array, PyTree, dict[str, Array]]:
        """``block.call_with_carry``, its activations recomputed in the backward pass as
        ``remat`` says."""
        if self.remat == "none":
            return block.call_with_carry(x, carry, state=state, segment_starts=segment_starts)

        def run(block, x, state, segment_starts, carry):
            return block.call_with_carry(x, carry, state=state, segment_starts=segment_starts)

        return nnx.remat(run, policy=REMAT_POLICIES[self.remat])(
            block, x, state, segment_starts, carry
        )

    def init_state(self, batch_size: int) -> tuple[PyTree, ...]:
        if self.bidirectional:
            raise ValueError(
                "a bidirectional model has no state to decode with: its reverse passes need "
                "the whole sequence, so it cannot generate or run step by step"
            )
        return tuple(block.init_state(batch_size) for block in self.blocks)

    @property
    def context_limit(self) -> int | None:
        """The longest context every mixer's state can hold, or None if unbounded."""
        limits = [getattr(block.mixer, "context_limit", None) for block in self.blocks]
        limits = [limit for limit in limits if limit is not None]
        return min(limits) if limits else None


class _HeadedModel(nnx.Module):
    """A backbone and a linear head over what ``read`` takes of its hidden states [B, T, D];
    logits in float32 whatever the compute dtype, soft-capped if ``logit_soft_cap`` is set."""

    logit_soft_cap: float | None = None

    def read(self, hidden: Array, mask: Array | None) -> Array:
        return hidden

    def project(self, hidden: Array) -> Array:
        return self.head(hidden)

    def __call__(
        self,
        inputs: Array,
        *,
        state: PyTree | None = None,
        segment_starts: Array | None = None,
        mask: Array | None = None,
    ) -> tuple[Array, tuple[PyTree, ...]]:
        """Outputs and the new stacked state; ``mask`` [B, T] marks the real positions of
        right-padded rows (Backbone)."""
        hidden, new_state = self.backbone(
            inputs, state=state, segment_starts=segment_starts, mask=mask
        )
        logits = self.project(self.read(hidden, mask)).astype(jnp.float32)
        if self.logit_soft_cap is not None:
            logits = self.logit_soft_cap * jnp.tanh(logits / self.logit_soft_cap)
        return logits, new_state

    def init_state(self, batch_size: int) -> tuple[PyTree, ...]:
        return self.backbone.init_state(batch_size)


class LanguageModel(_HeadedModel):
    """Backbone with a head at every position: inputs [B, T(, F)] -> logits [B, T, vocab_size]
    (the next token of a causal stack; a tag, or CTC's frame classes, on a bidirectional one).

    ``tie_embeddings`` reads the logits from the embedding table (no head of its own);
    ``head_bias`` gives a head of its own a bias.
    """

    def __init__(
        self,
        backbone: Backbone,
        vocab_size: int,
        *,
        rngs: nnx.Rngs,
        tie_embeddings: bool = False,
        head_bias: bool = True,
        logit_soft_cap: float | None = None,
    ):
        check_size("vocab_size", vocab_size)
        if logit_soft_cap is not None:
            check_number("logit_soft_cap", logit_soft_cap)
        self.backbone = backbone
        self.vocab_size = vocab_size
        self.tie_embeddings = tie_embeddings
        self.logit_soft_cap = logit_soft_cap
        if tie_embeddings:
            if not isinstance(backbone.embed, TokenEmbedding):
                raise ValueError("tie_embeddings needs a backbone with a token embedding")
            if backbone.embed.vocab_size != vocab_size:
                raise ValueError(
                    f"tie_embeddings needs the embedding's vocab_size "
                    f"({backbone.embed.vocab_size}) to equal the head's ({vocab_size})"
                )
            self.head = None
        else:
            self.head = linear(
                backbone.d_model, vocab_size, EMBED, VOCAB, use_bias=head_bias, rngs=rngs
            )

    def project(self, hidden: Array) -> Array:
        return self.backbone.embed.attend(hidden) if self.head is None else self.head(hidden)


class Classifier(_HeadedModel):
    """Backbone with a sequence-level head: inputs [B, T(, F)] -> logits [B, num_classes].

    Pooling over the real positions (``mask``; None: all of them): ``"last"`` reads the
    last one (works when streaming with a state); ``"mean"`` averages them; ``"attention"``
    weighs them by softmax_t(w · h_t), a learned w (Yang et al. 2016, "Hierarchical Attention
    Networks for Document Classification").
    """

    def __init__(
        self, backbone: Backbone, num_classes: int, *, pooling: str = "last", rngs: nnx.Rngs
    ):
        check_size("num_classes", num_classes)
        check_choice("pooling", pooling, POOLINGS)
        self.backbone = backbone
        self.pooling = pooling
        self.head = linear(backbone.d_model, num_classes, EMBED, None, rngs=rngs)
        self.attention = (
            linear(backbone.d_model, 1, EMBED, None, use_bias=False, rngs=rngs)
            if pooling == "attention"
            else None
        )

    def read(self, hidden: Array, mask: Array | None) -> Array:
        if mask is None:
            mask = jnp.ones(hidden.shape[:2], bool)
        if self.pooling == "last":
            last = jnp.maximum(jnp.sum(mask, axis=1) - 1, 0)
            return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        if self.pooling == "mean":
            weights = mask.astype(hidden.dtype)
            counts = jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), 1)
            return jnp.einsum("bt,btd->bd", weights, hidden) / counts
        scores = self.attention(hidden)[..., 0].astype(jnp.float32)
        weights = jax.nn.softmax(jnp.where(mask, scores, -jnp.inf), axis=1)
        weights = jnp.where(mask, weights, 0).astype(hidden.dtype)  # rows of padding only
        return jnp.einsum("bt,btd->bd", weights, hidden)


class CRFTagger(_HeadedModel):
    """Backbone with tag scores at every position and a linear chain over them (Lafferty et
    al. 2001; the BiLSTM-CRF of Huang et al. 2015 and Lample et al. 2016): emissions
    [B, T, num_tags], and ``transitions`` [num_tags, num_tags] (i followed by j), ``start``
    and ``end`` [num_tags] scores, which seqjax.ops.crf's likelihood and Viterbi decoding
    read."""

    def __init__(self, backbone: Backbone, num_tags: int, *, rngs: nnx.Rngs):
        check_size("num_tags", num_tags)
        self.backbone = backbone
        self.num_tags = num_tags
        self.head = linear(backbone.d_model, num_tags, EMBED, None, rngs=rngs)
        self.transitions = nnx.Param(jnp.zeros((num_tags, num_tags)))
        self.start = nnx.Param(jnp.zeros((num_tags,)))
        self.end = nnx.Param(jnp.zeros((num_tags,)))


class Regressor(_HeadedModel):
    """Backbone with real-valued outputs at every position: inputs [B, T(, F)] -> predictions
    [B, T, num_outputs]; with ``predict_scale`` [B, T, num_outputs, 2], a mean and a log
    standard deviation (for the Gaussian negative log-likelihood)."""

    def __init__(
        self, backbone: Backbone, num_outputs: int, *, predict_scale: bool = False, rngs: nnx.Rngs
    ):
        check_size("num_outputs", num_outputs)
        check_type("predict_scale", predict_scale, bool)
        self.backbone = backbone
        self.num_outputs = num_outputs
        self.predict_scale = predict_scale
        width = num_outputs * (2 if predict_scale else 1)
        self.head = linear(backbone.d_model, width, EMBED, None, rngs=rngs)

    def project(self, hidden: Array) -> Array:
        outputs = self.head(hidden)
        if self.predict_scale:
            return outputs.reshape(*outputs.shape[:-1], self.num_outputs, 2)
        return outputs
