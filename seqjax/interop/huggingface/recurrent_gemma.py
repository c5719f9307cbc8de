"""transformers' ``recurrent_gemma`` (Griffin, De et al., 2024): blocks of Gemma's RMSNorm
x̂ ⊙ (1 + w) → temporal block → residual, RMSNorm → GeGLU MLP (tanh GeLU, with biases) →
residual. The temporal blocks cycle through ``block_types``: "recurrent" is the RG-LRU block
(rg_lru: gates block-diagonal, one block per attention head; the first token's input
unscaled), "attention" local attention over ``attention_window_size`` tokens with a rotary
embedding on the leading ``partial_rotary_factor`` of each head and an output bias. The
embeddings are scaled by √D rounded to bfloat16 (transformers' ``normalizer`` buffer), the
output layer is tied to the embedding by default, and the logits are soft-capped."""

import json
from typing import Any

import numpy as np
from ml_dtypes import bfloat16

from seqjax.interop.pretrained import (
    CheckpointConfig,
    Converter,
    PretrainedError,
    Tensor,
    conv_taps,
    joined,
    register_converter,
    same,
    transposed,
)

MIXERS = {"recurrent": "rg_lru", "attention": "attention"}
BLOCK_TYPES = {mixer: block for block, mixer in MIXERS.items()}
DEFAULT_BLOCK_TYPES = ("recurrent", "recurrent", "attention")
# transformers' defaults when a config has no rope_parameters (or legacy keys).
DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5}

# Settings of initialization or training: nothing the forward pass computes.
NOT_COMPUTED = ("w_init_variance_scale", "final_w_init_variance_scale", "attention_dropout")


def embedding_scale(hidden: int) -> float:
    """√D as transformers multiplies by it: a bfloat16 buffer, in the compute dtype."""
    return float(np.float32(bfloat16(hidden**0.5)))


def _rope(config: CheckpointConfig) -> dict[str, Any]:
    """rope_parameters, with the legacy top-level rope_theta and partial_rotary_factor."""
    given = config.get("rope_parameters") or {}
    rope = {**DEFAULT_ROPE, **given}
    for key in ("rope_theta", "partial_rotary_factor"):
        legacy = config.get(key)
        if legacy is not None and key in given and legacy != given[key]:
            raise PretrainedError(
                f"{config.source}: {key}={legacy!r} differs from rope_parameters' {given[key]!r}"
            )
        rope[key] = rope[key] if legacy is None else legacy
    if rope["rope_type"] != "default" or set(rope) != set(DEFAULT_ROPE):
        raise PretrainedError(
            f"{config.source}: rope_parameters {given} is not supported for recurrent_gemma "
            "(seqjax computes the default rotary embedding: rope_theta, partial_rotary_factor)"
        )
    return rope


def recipe(config: CheckpointConfig) -> tuple[dict[str, Any], int]:
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    config.require("hidden_activation", "gelu_pytorch_tanh")
    config.require("attention_bias", False)
    config.require("embeddings_scale_by_sqrt_dim", True, default=True)
    config.require("head_dim", (hidden // heads, None))
    config.ignore(*NOT_COMPUTED)
    block_types = list(config.get("block_types") or DEFAULT_BLOCK_TYPES)
    unknown = sorted(set(block_types) - set(MIXERS))
    if unknown:
        raise PretrainedError(
            f"{config.source}: block_types {unknown} are not supported for recurrent_gemma "
            f"(seqjax computes {' and '.join(map(repr, MIXERS))})"
        )
    rope, window = _rope(config), config["attention_window_size"]
    options = {
        "rg_lru": dict(
            lru_width=config.get("lru_width") or hidden,
            conv_width=config["conv1d_width"],
            num_heads=heads,
            normalize_first_input=False,
        ),
        "attention": dict(
            num_heads=heads,
            num_kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=hidden // heads,
            window=window,
            cache_length=window,
            rotary_base=float(rope["rope_theta"]),
            rotary_fraction=float(rope["partial_rotary_factor"]),
            output_bias=True,
        ),
    }
    pattern = [MIXERS[block] for block in block_types]
    model = dict(
        mixer=",".join(pattern),
        num_layers=config["num_hidden_layers"],
        d_model=hidden,
        mlp_hidden_size=config["intermediate_size"] // 2,
        mlp_activation="gelu_tanh",
        mlp_bias=True,
        norm="rms_plus_one",
        norm_epsilon=config["rms_norm_eps"],
        mixers={name: options[name] for name in dict.fromkeys(pattern)},
        embedding_multiplier=embedding_scale(hidden),
        tie_embeddings=config.get("tie_word_embeddings", True),
        head_bias=False,
        logit_soft_cap=float(config["logits_soft_cap"]),
    )
    return model, config["vocab_size"]


def dense(ours: str, theirs: str) -> list[Tensor]:
    """An ``nnx.Linear`` with a bias from a PyTorch ``nn.Linear``."""
    return [
        transposed(f"{ours}.kernel", f"{theirs}.weight"),
        same(f"{ours}.bias", f"{theirs}.bias"),
    ]


def recurrent_block(ours: str, theirs: str) -> list[Tensor]:
    lru = f"{theirs}.rg_lru"
    return [
        *dense(f"{ours}.gate_proj", f"{theirs}.linear_y"),
        *dense(f"{ours}.input_proj", f"{theirs}.linear_x"),
        conv_taps(f"{ours}.conv.kernel", f"{theirs}.conv_1d.weight"),
        same(f"{ours}.conv.bias", f"{theirs}.conv_1d.bias"),
        joined(f"{ours}.gate_kernel", f"{lru}.recurrent_gate_weight", f"{lru}.input_gate_weight"),
        joined(f"{ours}.gate_bias", f"{lru}.recurrent_gate_bias", f"{lru}.input_gate_bias"),
        # a = σ(Λ) = exp(-softplus(recurrent_param)): Λ = -recurrent_param.
        Tensor(f"{ours}.decay_logits", (f"{lru}.recurrent_param",), np.negative, lambda d: (-d,)),
        *dense(f"{ours}.out_proj", f"{theirs}.linear_out"),
    ]


def attention_block(ours: str, theirs: str) -> list[Tensor]:
    return [
        transposed(f"{ours}.query.kernel", f"{theirs}.q_proj.weight"),
        joined(
            f"{ours}.key_value.kernel",
            f"{theirs}.k_proj.weight",
            f"{theirs}.v_proj.weight",
            kernels=True,
        ),
        *dense(f"{ours}.output", f"{theirs}.o_proj"),
    ]


def tensors(config: CheckpointConfig, model: dict[str, Any]) -> tuple[list[Tensor], set[str]]:
    pattern = model["mixer"].split(",")
    blocks = {"rg_lru": recurrent_block, "attention": attention_block}
    result = [same("backbone.embed.embedding", "model.embed_tokens.weight")]
    for i in range(model["num_layers"]):
        ours, theirs = f"backbone.blocks.{i}", f"model.layers.{i}"
        mlp = f"{theirs}.mlp_block"
        result += [
            same(f"{ours}.mixer_norm.scale", f"{theirs}.temporal_pre_norm.weight"),
            *blocks[pattern[i % len(pattern)]](f"{ours}.mixer", f"{theirs}.temporal_block"),
            same(f"{ours}.mlp_norm.scale", f"{theirs}.channel_pre_norm.weight"),
            joined(
                f"{ours}.mlp.gate_and_up.kernel",
                f"{mlp}.gate_proj.weight",
                f"{mlp}.up_proj.weight",
                kernels=True,
            ),
            joined(f"{ours}.mlp.gate_and_up.bias", f"{mlp}.gate_proj.bias", f"{mlp}.up_proj.bias"),
            *dense(f"{ours}.mlp.down", f"{mlp}.down_proj"),
        ]
    result.append(same("backbone.final_norm.scale", "model.final_norm.weight"))
    if model["tie_embeddings"]:
        return result, {"lm_head.weight"}
    return result + [transposed("head.kernel", "lm_head.weight")], set()


def export(model: dict[str, Any], vocab_size: int, original: dict | None) -> dict[str, Any]:
    """The config.json of ``model``; one whose recipe would not give ``model`` back (another
    norm, activation or option than a RecurrentGemma has) is refused, naming what differs."""
    pattern = model["mixer"].split(",")
    unknown = sorted(set(pattern) - set(BLOCK_TYPES))
    if unknown:
        raise PretrainedError(f"a recurrent_gemma has no {' or '.join(unknown)} blocks")
    lru = model["mixers"].get("rg_lru", {})
    attention = model["mixers"].get("attention", {})
    hidden = model["d_model"]
    heads = attention.get("num_heads", lru.get("num_heads"))
    fraction = attention.get("rotary_fraction", DEFAULT_ROPE["partial_rotary_factor"])
    rope = dict(
        DEFAULT_ROPE,
        rope_theta=attention.get("rotary_base", DEFAULT_ROPE["rope_theta"]),
        partial_rotary_factor=fraction,
    )
    values = dict(original or {})
    values.update(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=model["num_layers"],
        intermediate_size=2 * model["mlp_hidden_size"],
        num_attention_heads=heads,
        num_key_value_heads=attention.get("num_kv_heads", heads),
        head_dim=hidden // heads,
        lru_width=lru.get("lru_width", hidden),
        conv1d_width=lru.get("conv_width", 4),
        attention_window_size=attention.get("window", values.get("attention_window_size", 2048)),
        block_types=[BLOCK_TYPES[name] for name in pattern],
        rms_norm_eps=model["norm_epsilon"],
        logits_soft_cap=model["logit_soft_cap"],
        hidden_activation="gelu_pytorch_tanh",
        attention_bias=False,
        rope_parameters=rope,
        partial_rotary_factor=fraction,
        tie_word_embeddings=model["tie_embeddings"],
    )
    if "rope_theta" in values:
        values["rope_theta"] = rope["rope_theta"]
    described, _ = recipe(CheckpointConfig(values, "the exported config"))
    given, described = (json.loads(json.dumps(m)) for m in (model, described))
    if given != described:
        differ = sorted(
            k for k in given.keys() | described.keys() if given.get(k) != described.get(k)
        )
        raise PretrainedError(
            f"this model is not a recurrent_gemma: its {', '.join(differ)} differ from those of "
            f"the config it would be saved with ({ {k: described.get(k) for k in differ} })"
        )
    return values


register_converter(
    Converter("recurrent_gemma", "RecurrentGemmaForCausalLM", recipe, tensors, export)
)
