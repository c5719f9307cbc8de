"""Builds a model from the ``model`` section of a config.

model.mixer          "gru", or a comma-separated pattern "rg_lru,rg_lru,attention"
model.num_layers     blocks; block i uses pattern[i % len(pattern)]
model.d_model        width D
model.mlp_expansion  gated MLP width as a multiple of D (0: no MLP)
model.mlp_hidden_size  the MLP's width itself (None: mlp_expansion * D; 0: no MLP)
model.mlp_activation "silu" (SwiGLU), "gelu", "gelu_tanh" (GeGLU) or "relu"
model.mlp_bias       biases in the MLP's projections (RecurrentGemma's)
model.norm           "rms", "rms_plus_one" (Gemma's) or "layer"
model.norm_epsilon   the norms' epsilon (None: the norm's default)
model.mixers.<name>  options for mixer <name>, passed to its constructor
model.layer_options.<i>  options that update those of layer i's mixer
model.embedding_multiplier  the embeddings' scale (Gemma's √D)
model.tie_embeddings a language model's logits read from its embedding table
model.head_bias      a bias in a head of its own
model.logit_soft_cap c: logits c · tanh(logits / c) (None: none)
model.head           what the model outputs, one of the task's heads (None: its first):
                     "token" (classes at every position), "crf" (tag scores and a linear
                     chain), "pooled" (one class per sequence), "regression" (real values at
                     every position), "ctc" (frame classes, 0 the blank) or "seq2seq"
model.bidirectional  every mixer run forward and over each segment reversed (an encoder or
                     tagger; no state, so no generation)
model.bidirectional_merge  "concat", "sum" or "gate" (with bidirectional)
model.bidirectional_shared_weights  one mixer for both directions (with bidirectional)
model.pooling        "last", "mean" or "attention": how a pooled head reads its sequence
model.regression_loss  "mse", "mae" or "gaussian_nll" (which also predicts a scale)
model.decoder_mixer, model.decoder_num_layers  a seq2seq model's causal decoder (None: the
                     encoder's pattern and depth; model.mixer and num_layers are the encoder)
model.cross_attention  how a seq2seq decoder reads the encoder: "additive" (Bahdanau),
                     "dot_product" (multi-head) or "final" (the source's last encoder output as
                     a fixed context, no attention); model.cross_attention_options its options
model.init_from      a Hugging Face checkpoint directory that training starts from (read by
                     training, not here: the other keys are its converter's recipe)

``remat`` (a training option, "none", "full" or "dots") recomputes block activations in the
backward pass, and ``sequence_split`` (set by the trainer for a mesh whose sequence axis is
split) runs every mixer sequence-parallel; neither changes a parameter.
"""

from collections.abc import Mapping
from typing import Any

from flax import nnx

from seqjax.models.backbone import (
    Backbone,
    Classifier,
    CRFTagger,
    LanguageModel,
    Regressor,
)
from seqjax.models.seq2seq import EncoderDecoder
from seqjax.ops.sequence_parallel import SequenceSplit

HEADS = ("token", "crf", "pooled", "regression", "ctc", "seq2seq")
REGRESSION_LOSSES = ("mse", "mae", "gaussian_nll")
BACKBONE_KEYS = (
    "mixer",
    "num_layers",
    "d_model",
    "mlp_expansion",
    "mlp_hidden_size",
    "mlp_activation",
    "mlp_bias",
    "norm",
    "norm_epsilon",
    "mixers",
    "layer_options",
    "embedding_multiplier",
    "head",
    "bidirectional",
    "bidirectional_merge",
    "bidirectional_shared_weights",
)
HEAD_KEYS = {
    "token": ("tie_embeddings", "head_bias", "logit_soft_cap", "init_from"),
    "crf": (),
    "pooled": ("pooling",),
    "regression": ("regression_loss",),
    "ctc": (),
    "seq2seq": (
        "decoder_mixer",
        "decoder_num_layers",
        "cross_attention",
        "cross_attention_options",
        "tie_embeddings",
        "head_bias",
    ),
}
_BACKBONE_OPTIONS = {
    "mlp_expansion": 4,
    "mlp_hidden_size": None,
    "mlp_activation": "silu",
    "mlp_bias": False,
    "norm": "rms",
    "norm_epsilon": None,
}


def create_model(
    model_config: Mapping[str, Any],
    *,
    rngs: nnx.Rngs,
    head: str = "token",
    vocab_size: int | None = None,
    input_dim: int | None = None,
    source_vocab_size: int | None = None,
    num_outputs: int | None = None,
    remat: str = "none",
    sequence_split: SequenceSplit | None = None,
) -> LanguageModel | CRFTagger | Classifier | Regressor | EncoderDecoder:
    """The model of ``head`` over the task's inputs: token ids (``input_dim`` None) or
    features [B, T, input_dim]; ``vocab_size`` output classes (a seq2seq model's target
    vocabulary, ``source_vocab_size`` its source's), or ``num_outputs`` real values for
    regression. ``model_config["head"]``, when set, must be ``head``; a key that ``head``
    does not read is an error unless it is None.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    if model_config.get("head") not in (None, head):
        raise ValueError(f"model.head is {model_config['head']!r}, but the model built is {head!r}")
    keys = (*BACKBONE_KEYS, *HEAD_KEYS[head])
    # A key set to None is unset, so one config can hold the keys of several heads.
    unknown = sorted(
        key for key, value in model_config.items() if key not in keys and value is not None
    )
    if unknown:
        readers = {
            key: [name for name, head_keys in HEAD_KEYS.items() if key in head_keys]
            for key in unknown
        }
        described = [
            f"model.{key}" + (f" (a key of head {' or '.join(heads)})" if heads else "")
            for key, heads in readers.items()
        ]
        raise ValueError(
            f"{', '.join(described)} set, but head {head!r} does not read "
            f"{'it' if len(unknown) == 1 else 'them'}; its keys: {', '.join(keys)}"
        )
    if head == "seq2seq":
        if sequence_split is not None:
            raise ValueError(
                "a seq2seq model cannot run sequence-parallel: its cross-attention reads the "
                "whole source; map the mesh's sequence axis to 1 device"
            )
        return _encoder_decoder(model_config, rngs, vocab_size, source_vocab_size, remat)
    if head == "regression":
        if num_outputs is None:
            raise ValueError("a regression model needs num_outputs")
    elif vocab_size is None:
        raise ValueError(f"a {head!r} model needs vocab_size (its number of output classes)")
    mixers = model_config.get("mixers", {})
    layer_options = model_config.get("layer_options") or {}
    backbone = Backbone(
        d_model=model_config["d_model"],
        num_layers=model_config["num_layers"],
        pattern=model_config["mixer"],
        vocab_size=vocab_size if input_dim is None else None,
        input_dim=input_dim,
        mixer_options={name: dict(options) for name, options in mixers.items()},
        layer_options={int(i): dict(options) for i, options in layer_options.items()},
        **{key: model_config.get(key, default) for key, default in _BACKBONE_OPTIONS.items()},
        embedding_multiplier=model_config.get("embedding_multiplier", 1.0),
        bidirectional=model_config.get("bidirectional", False),
        bidirectional_merge=model_config.get("bidirectional_merge"),
        bidirectional_shared_weights=model_config.get("bidirectional_shared_weights"),
        remat=remat,
        sequence_split=sequence_split,
        rngs=rngs,
    )
    if head == "pooled":
        return Classifier(
            backbone, vocab_size, pooling=model_config.get("pooling", "last"), rngs=rngs
        )
    if head == "crf":
        return CRFTagger(backbone, vocab_size, rngs=rngs)
    if head == "regression":
        loss = model_config.get("regression_loss", "mse")
        if loss not in REGRESSION_LOSSES:
            raise ValueError(
                f"model.regression_loss must be one of {', '.join(REGRESSION_LOSSES)}, got {loss!r}"
            )
        return Regressor(backbone, num_outputs, predict_scale=loss == "gaussian_nll", rngs=rngs)
    return LanguageModel(
        backbone,
        vocab_size,
        tie_embeddings=model_config.get("tie_embeddings", False),
        head_bias=model_config.get("head_bias", True),
        logit_soft_cap=model_config.get("logit_soft_cap"),
        rngs=rngs,
    )


def _encoder_decoder(
    model_config: Mapping[str, Any],
    rngs: nnx.Rngs,
    vocab_size: int | None,
    source_vocab_size: int | None,
    remat: str,
) -> EncoderDecoder:
    """The seq2seq model: model.mixer/num_layers/bidirectional the encoder, decoder_* the
    causal decoder, the MLP, norm and mixer options shared."""
    if vocab_size is None or source_vocab_size is None:
        raise ValueError("a seq2seq model needs vocab_size and source_vocab_size")
    mixers = {name: dict(options) for name, options in model_config.get("mixers", {}).items()}
    if model_config.get("layer_options"):
        raise ValueError("model.layer_options is not supported by a seq2seq model")
    if model_config.get("embedding_multiplier", 1.0) != 1.0:
        raise ValueError("model.embedding_multiplier is not supported by a seq2seq model")
    shared = {
        key: model_config.get(key, default)
        for key, default in _BACKBONE_OPTIONS.items()
        if model_config.get(key, default) is not None
    }
    encoder = dict(
        shared,
        pattern=model_config["mixer"],
        num_layers=model_config["num_layers"],
        mixer_options=mixers,
        bidirectional=model_config.get("bidirectional", False),
    )
    for key in ("bidirectional_merge", "bidirectional_shared_weights"):
        if model_config.get(key) is not None:
            encoder[key] = model_config[key]
    decoder_mixer = model_config.get("decoder_mixer") or model_config["mixer"]
    decoder = dict(
        shared,
        pattern=decoder_mixer,
        num_layers=model_config.get("decoder_num_layers") or model_config["num_layers"],
        mixer_options=mixers,
    )
    return EncoderDecoder(
        source_vocab_size=source_vocab_size,
        target_vocab_size=vocab_size,
        d_model=model_config["d_model"],
        encoder=encoder,
        decoder=decoder,
        cross_attention=model_config.get("cross_attention", "additive"),
        cross_attention_options=dict(model_config.get("cross_attention_options") or {}),
        tie_embeddings=model_config.get("tie_embeddings", False),
        head_bias=model_config.get("head_bias", True),
        remat=remat,
        rngs=rngs,
    )
