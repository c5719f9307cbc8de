"""transformers' ``mamba`` and ``falcon_mamba``: blocks of RMSNorm → Mamba mixer → residual,
no MLP, a final RMSNorm, an output layer tied to the embedding by default. Falcon Mamba adds
weightless RMS norms of Δ's input, B and C (``mixer_rms_eps``)."""

import math
from typing import Any

from seqjax.interop.pretrained import (
    CheckpointConfig,
    Converter,
    PretrainedError,
    Tensor,
    conv_taps,
    register_converter,
    same,
    transposed,
)

# Settings of initialization, training or kernels: nothing the forward pass computes.
NOT_COMPUTED = (
    "rescale_prenorm_residual",
    "residual_in_fp32",
    "time_step_floor",
    "time_step_init_scheme",
    "time_step_max",
    "time_step_min",
    "time_step_scale",
    "use_associative_scan",
    "use_mambapy",
    "use_falcon_mambapy",
    "layer_types",
)


def recipe(config: CheckpointConfig) -> tuple[dict[str, Any], int]:
    hidden, expand = config["hidden_size"], config["expand"]
    if config["intermediate_size"] != expand * hidden:
        raise PretrainedError(
            f"{config.source}: intermediate_size={config['intermediate_size']} is not "
            f"expand * hidden_size = {expand * hidden}, which seqjax's mamba mixer computes"
        )
    config.require("hidden_act", "silu")
    config.require("use_bias", False)
    config.require("use_conv_bias", True)
    config.ignore(*NOT_COMPUTED)
    rank = config["time_step_rank"]
    options = dict(
        state_size=config["state_size"],
        expand=expand,
        conv_width=config["conv_kernel"],
        dt_rank=math.ceil(hidden / 16) if rank == "auto" else rank,
    )
    if config.model_type == "falcon_mamba":
        options["bc_dt_norm_epsilon"] = config["mixer_rms_eps"]
    model = dict(
        mixer="mamba",
        num_layers=config["num_hidden_layers"],
        d_model=hidden,
        mlp_hidden_size=0,
        norm="rms",
        norm_epsilon=config["layer_norm_epsilon"],
        mixers={"mamba": options},
        tie_embeddings=config.get("tie_word_embeddings", True),
        head_bias=False,
    )
    return model, config["vocab_size"]


def tensors(config: CheckpointConfig, model: dict[str, Any]) -> tuple[list[Tensor], set[str]]:
    result = [same("backbone.embed.embedding", "backbone.embeddings.weight")]
    for i in range(model["num_layers"]):
        ours, theirs = f"backbone.blocks.{i}", f"backbone.layers.{i}"
        mixer = f"{theirs}.mixer"
        result += [
            same(f"{ours}.mixer_norm.scale", f"{theirs}.norm.weight"),
            transposed(f"{ours}.mixer.in_proj.kernel", f"{mixer}.in_proj.weight"),
            conv_taps(f"{ours}.mixer.conv.kernel", f"{mixer}.conv1d.weight"),
            same(f"{ours}.mixer.conv.bias", f"{mixer}.conv1d.bias"),
            transposed(f"{ours}.mixer.x_proj.kernel", f"{mixer}.x_proj.weight"),
            transposed(f"{ours}.mixer.dt_proj.kernel", f"{mixer}.dt_proj.weight"),
            same(f"{ours}.mixer.dt_proj.bias", f"{mixer}.dt_proj.bias"),
            same(f"{ours}.mixer.log_decay_rate", f"{mixer}.A_log"),
            same(f"{ours}.mixer.skip", f"{mixer}.D"),
            transposed(f"{ours}.mixer.out_proj.kernel", f"{mixer}.out_proj.weight"),
        ]
    result.append(same("backbone.final_norm.scale", "backbone.norm_f.weight"))
    if model["tie_embeddings"]:
        return result, {"lm_head.weight"}
    return result + [transposed("head.kernel", "lm_head.weight")], set()


def export(model: dict[str, Any], vocab_size: int, original: dict | None) -> dict[str, Any]:
    options = model["mixers"]["mamba"]
    hidden = model["d_model"]
    values = dict(original or {})
    values.update(
        hidden_size=hidden,
        num_hidden_layers=model["num_layers"],
        vocab_size=vocab_size,
        state_size=options["state_size"],
        expand=options["expand"],
        intermediate_size=options["expand"] * hidden,
        conv_kernel=options["conv_width"],
        time_step_rank=options["dt_rank"] or math.ceil(hidden / 16),
        layer_norm_epsilon=model["norm_epsilon"],
        hidden_act="silu",
        use_bias=False,
        use_conv_bias=True,
        tie_word_embeddings=model["tie_embeddings"],
    )
    if options.get("bc_dt_norm_epsilon") is not None:
        values["mixer_rms_eps"] = options["bc_dt_norm_epsilon"]
    return values


for model_type, architecture in (
    ("mamba", "MambaForCausalLM"),
    ("falcon_mamba", "FalconMambaForCausalLM"),
):
    register_converter(Converter(model_type, architecture, recipe, tensors, export))
