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
model.pooling        "last" or "mean": how a classifier reads its sequence (a classifier's
                     key only; a language model reads every position)
model.init_from      a Hugging Face checkpoint directory that training starts from (read by
                     training, not here: the other keys are its converter's recipe)

``remat`` (a training option, "none", "full" or "dots") recomputes block activations in the
backward pass, and ``sequence_split`` (set by the trainer for a mesh whose sequence axis is
split) runs every mixer sequence-parallel; neither changes a parameter.
"""

from collections.abc import Mapping
from typing import Any

from flax import nnx

from seqjax.models.backbone import Backbone, Classifier, LanguageModel
from seqjax.ops.sequence_parallel import SequenceSplit

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
)
MODEL_KEYS = (*BACKBONE_KEYS, "tie_embeddings", "head_bias", "logit_soft_cap", "init_from")
CLASSIFIER_KEYS = (*BACKBONE_KEYS, "pooling")


def create_model(
    model_config: Mapping[str, Any],
    *,
    rngs: nnx.Rngs,
    vocab_size: int | None = None,
    input_dim: int | None = None,
    num_classes: int | None = None,
    remat: str = "none",
    sequence_split: SequenceSplit | None = None,
) -> LanguageModel | Classifier:
    """A language model over ``vocab_size`` tokens, or a classifier into ``num_classes``.

    With ``input_dim`` the inputs are real-valued features [B, T, input_dim], projected instead
    of embedded, and ``vocab_size`` is the number of output classes at each position.
    """
    keys = MODEL_KEYS if num_classes is None else CLASSIFIER_KEYS
    unknown = sorted(set(model_config) - set(keys))
    if "pooling" in unknown:
        raise ValueError(
            "model.pooling is set, but this model is a language model (an output at every "
            "position) and has no pooling; pooling is for a classifier (num_classes)"
        )
    if unknown:
        raise ValueError(
            f"unknown model config key(s) {', '.join(unknown)}; expected {', '.join(keys)}"
        )
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
        mlp_expansion=model_config.get("mlp_expansion", 4),
        mlp_hidden_size=model_config.get("mlp_hidden_size"),
        mlp_activation=model_config.get("mlp_activation", "silu"),
        mlp_bias=model_config.get("mlp_bias", False),
        norm=model_config.get("norm", "rms"),
        norm_epsilon=model_config.get("norm_epsilon"),
        embedding_multiplier=model_config.get("embedding_multiplier", 1.0),
        remat=remat,
        sequence_split=sequence_split,
        rngs=rngs,
    )
    if num_classes is not None:
        return Classifier(
            backbone, num_classes, pooling=model_config.get("pooling", "last"), rngs=rngs
        )
    if vocab_size is None:
        raise ValueError("a language model needs vocab_size; give num_classes for a classifier")
    return LanguageModel(
        backbone,
        vocab_size,
        tie_embeddings=model_config.get("tie_embeddings", False),
        head_bias=model_config.get("head_bias", True),
        logit_soft_cap=model_config.get("logit_soft_cap"),
        rngs=rngs,
    )
