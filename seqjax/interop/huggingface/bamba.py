"""transformers' ``bamba``: a hybrid of Mamba-2 mixers and attention layers (those of
``attn_layer_indices``; a full-length mixer pattern), every block RMSNorm → mixer → residual,
RMSNorm → SwiGLU MLP → residual, a final RMSNorm and an output layer of its own by default.

The Mamba-2 mixer is mamba2's (huggingface/mamba2.py: the gated norm over all channels, with
``rms_norm_eps``); attention is Llama's with grouped-query heads and a rotary embedding on the
leading ``partial_rotary_factor`` of each head (transformers sets 0.5 for Bamba unless
``rope_parameters`` names another; the ``attn_rotary_emb`` of IBM's configs, which transformers
does not read, must agree), its key and value projections fused (keys, then values).
"""

from typing import Any

from seqjax.interop.huggingface.mamba2 import (
    check_exportable,
    check_heads,
    exported_mixer,
    mixer_tensors,
    read_time_step_limit,
    written_time_step_limit,
)
from seqjax.interop.pretrained import (
    CheckpointConfig,
    Converter,
    PretrainedError,
    Tensor,
    joined,
    register_converter,
    same,
    transposed,
)

# Settings of initialization, training, generation or kernels: nothing the forward pass
# computes. transformers replaces a top-level partial_rotary_factor by 0.5 (only the one in
# rope_parameters counts); max_position_embeddings only sizes caches for the default rope.
NOT_COMPUTED = (
    "attention_dropout",
    "mamba_chunk_size",
    "max_position_embeddings",
    "num_logits_to_keep",
    "partial_rotary_factor",
    "z_loss_coefficient",
)
BAMBA_ROTARY_FRACTION = 0.5
ROPE_KEYS = ("rope_type", "rope_theta", "partial_rotary_factor")


def _rotary(config: CheckpointConfig) -> dict[str, float]:
    """rotary_base and rotary_fraction of ``rope_parameters`` (or a legacy ``rope_theta``)."""
    legacy, rope = config.get("rope_scaling"), config.get("rope_parameters")
    rope = legacy or rope or {}  # transformers' order
    unknown = sorted(set(rope) - set(ROPE_KEYS))
    if unknown:
        raise PretrainedError(
            f"{config.source}: rope_parameters {', '.join(unknown)} are not supported for "
            "bamba (seqjax computes the default rotary embedding)"
        )
    if rope.get("rope_type", "default") != "default":
        raise PretrainedError(
            f"{config.source}: rope_type={rope['rope_type']!r} is not supported for bamba "
            "(seqjax computes 'default')"
        )
    return dict(
        rotary_base=float(rope.get("rope_theta", config.get("rope_theta", 10_000.0))),
        rotary_fraction=float(rope.get("partial_rotary_factor", BAMBA_ROTARY_FRACTION)),
    )


def _mixer_options(config: CheckpointConfig, hidden: int) -> dict[str, Any]:
    expand, num_heads = config["mamba_expand"], config["mamba_n_heads"]
    if not isinstance(expand, int):
        raise PretrainedError(f"{config.source}: mamba_expand={expand!r} is not an integer")
    head_dim = config["mamba_d_head"]
    if head_dim == "auto":
        head_dim = expand * hidden // num_heads
    check_heads(config, expand * hidden, num_heads, head_dim)
    return dict(
        state_size=config["mamba_d_state"],
        head_dim=head_dim,
        expand=expand,
        num_groups=config["mamba_n_groups"],
        conv_width=config["mamba_d_conv"],
        **read_time_step_limit(config),
        norm_groups=1,
        norm_epsilon=config["rms_norm_eps"],
        conv_bias=config.get("mamba_conv_bias", True),
        projection_bias=config.get("mamba_proj_bias", False),
    )


def recipe(config: CheckpointConfig) -> tuple[dict[str, Any], int]:
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    config.require("hidden_act", "silu")  # the MLP's and the mixer conv's activation
    config.require("attention_bias", False)
    config.ignore(*NOT_COMPUTED)
    heads = config["num_attention_heads"]
    attention = dict(
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        **_rotary(config),
    )
    rotated = int(attention["head_dim"] * attention["rotary_fraction"])
    if config.get("attn_rotary_emb", rotated) != rotated:
        raise PretrainedError(
            f"{config.source}: attn_rotary_emb={config['attn_rotary_emb']!r} is not the "
            f"{rotated} rotated dimensions per head that transformers computes (head_dim * "
            "partial_rotary_factor)"
        )
    indices = set(config.get("attn_layer_indices") or ())
    model = dict(
        mixer=",".join("attention" if i in indices else "mamba2" for i in range(layers)),
        num_layers=layers,
        d_model=hidden,
        mlp_hidden_size=config["intermediate_size"],
        mlp_activation="silu",
        mlp_bias=config.get("mlp_bias", False),
        norm="rms",
        norm_epsilon=config["rms_norm_eps"],
        mixers={"mamba2": _mixer_options(config, hidden), "attention": attention},
        tie_embeddings=config.get("tie_word_embeddings", False),
        head_bias=False,
    )
    return model, config["vocab_size"]


def _attention_tensors(ours: str, theirs: str) -> list[Tensor]:
    return [
        transposed(f"{ours}.query.kernel", f"{theirs}.q_proj.weight"),
        joined(
            f"{ours}.key_value.kernel",
            f"{theirs}.k_proj.weight",
            f"{theirs}.v_proj.weight",
            kernels=True,
        ),
        transposed(f"{ours}.output.kernel", f"{theirs}.o_proj.weight"),
    ]


def _mlp_tensors(ours: str, theirs: str, bias: bool) -> list[Tensor]:
    result = [
        joined(
            f"{ours}.gate_and_up.kernel",
            f"{theirs}.gate_proj.weight",
            f"{theirs}.up_proj.weight",
            kernels=True,
        ),
        transposed(f"{ours}.down.kernel", f"{theirs}.down_proj.weight"),
    ]
    if bias:
        result += [
            joined(
                f"{ours}.gate_and_up.bias", f"{theirs}.gate_proj.bias", f"{theirs}.up_proj.bias"
            ),
            same(f"{ours}.down.bias", f"{theirs}.down_proj.bias"),
        ]
    return result


def tensors(config: CheckpointConfig, model: dict[str, Any]) -> tuple[list[Tensor], set[str]]:
    result = [same("backbone.embed.embedding", "model.embed_tokens.weight")]
    for i, mixer in enumerate(model["mixer"].split(",")):
        ours, theirs = f"backbone.blocks.{i}", f"model.layers.{i}"
        result += [
            same(f"{ours}.mixer_norm.scale", f"{theirs}.input_layernorm.weight"),
            same(f"{ours}.mlp_norm.scale", f"{theirs}.pre_ff_layernorm.weight"),
            *_mlp_tensors(f"{ours}.mlp", f"{theirs}.feed_forward", model["mlp_bias"]),
        ]
        if mixer == "attention":
            result += _attention_tensors(f"{ours}.mixer", f"{theirs}.self_attn")
        else:
            result += mixer_tensors(f"{ours}.mixer", f"{theirs}.mamba", model["mixers"]["mamba2"])
    result.append(same("backbone.final_norm.scale", "model.final_layernorm.weight"))
    if model["tie_embeddings"]:
        return result, {"lm_head.weight"}
    return result + [transposed("head.kernel", "lm_head.weight")], set()


def export(model: dict[str, Any], vocab_size: int, original: dict | None) -> dict[str, Any]:
    pattern = model["mixer"].split(",")
    if len(pattern) != model["num_layers"] or set(pattern) - {"mamba2", "attention"}:
        raise PretrainedError(
            f"a bamba has one mamba2 or attention mixer named per layer, not {model['mixer']!r}"
        )
    check_exportable(
        model,
        "bamba",
        norm="rms",
        mlp_activation="silu",
        embedding_multiplier=1.0,
        logit_soft_cap=None,
    )
    if not model.get("tie_embeddings", False):
        check_exportable(model, "bamba", head_bias=False)
    options, attention = model["mixers"]["mamba2"], model["mixers"]["attention"]
    exported_mixer(options, model["norm_epsilon"], "bamba")
    if attention.get("window") or not attention.get("rotary", True) or attention.get("output_bias"):
        raise PretrainedError("a bamba's attention has rotary positions, no window, no output bias")
    hidden, expand, head_dim = model["d_model"], options["expand"], options["head_dim"]
    values = dict(original or {})
    values.pop("rope_scaling", None)  # written as rope_parameters
    rope = dict(values.get("rope_parameters") or {"rope_type": "default"})
    rope.update(
        rope_theta=attention.get("rotary_base", 10_000.0),
        partial_rotary_factor=attention.get("rotary_fraction", 1.0),
    )
    indices = [i for i, mixer in enumerate(pattern) if mixer == "attention"]
    heads = attention["num_heads"]
    attention_head_dim = attention.get("head_dim") or hidden // heads
    if attention_head_dim != hidden // heads:
        values["head_dim"] = attention_head_dim  # read by transformers' BambaAttention
    if "attn_rotary_emb" in values:
        values["attn_rotary_emb"] = int(attention_head_dim * rope["partial_rotary_factor"])
    values.update(
        hidden_size=hidden,
        num_hidden_layers=model["num_layers"],
        vocab_size=vocab_size,
        intermediate_size=model["mlp_hidden_size"],
        rms_norm_eps=model["norm_epsilon"],
        hidden_act="silu",
        mlp_bias=model.get("mlp_bias", False),
        attention_bias=False,
        attn_layer_indices=indices or None,
        num_attention_heads=heads,
        num_key_value_heads=attention.get("num_kv_heads") or heads,
        rope_parameters=rope,
        mamba_n_heads=expand * hidden // head_dim,
        mamba_d_head=head_dim,
        mamba_n_groups=options.get("num_groups", 1),
        mamba_d_state=options["state_size"],
        mamba_d_conv=options["conv_width"],
        mamba_expand=expand,
        mamba_conv_bias=options.get("conv_bias", True),
        mamba_proj_bias=options.get("projection_bias", False),
        time_step_limit=written_time_step_limit(options),
        tie_word_embeddings=model.get("tie_embeddings", False),
    )
    return values


register_converter(Converter("bamba", "BambaForCausalLM", recipe, tensors, export))
