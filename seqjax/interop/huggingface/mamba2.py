"""transformers' ``mamba2``: blocks of RMSNorm → Mamba-2 mixer → residual, no MLP, a final
RMSNorm, an output layer of its own by default. The mixer is seqjax's ``mamba2``:
in_proj → (z, x, B, C, dt), a depthwise conv and SiLU over (x, B, C), Δ = softplus(dt +
dt_bias) clipped to ``time_step_limit``, A = -exp(A_log), the SSD scan with skip D, and a
gated RMSNorm over all E channels at once (transformers' ``MambaRMSNormGated`` does not group
them by ``n_groups``) with the blocks' epsilon.

The mixer's part is shared with Bamba (huggingface/bamba.py): ``mixer_tensors`` and the
``time_step_limit`` read and written here."""

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
from seqjax.layers.mamba2 import NORM_EPSILON

# Settings of initialization, training or kernels: nothing the forward pass computes
# (time_step_rank is stored by transformers' mixer and never used).
NOT_COMPUTED = (
    "chunk_size",
    "rescale_prenorm_residual",
    "residual_in_fp32",
    "time_step_floor",
    "time_step_max",
    "time_step_min",
    "time_step_rank",
    "layer_types",
)
# transformers writes an infinite float of config.json as this object.
FLOAT_TAG = "__float__"


def read_time_step_limit(config: CheckpointConfig) -> dict:
    """``time_step_limit`` [low, high] (high may be ∞) as the mixer's dt_limit_min/max."""
    limit = config.get("time_step_limit", [0.0, math.inf])
    if not isinstance(limit, list | tuple) or len(limit) != 2:
        raise PretrainedError(f"{config.source}: time_step_limit={limit!r} is not [low, high]")
    low, high = (
        float(bound[FLOAT_TAG]) if isinstance(bound, dict) and set(bound) == {FLOAT_TAG} else bound
        for bound in limit
    )
    if not all(isinstance(b, int | float) and not isinstance(b, bool) for b in (low, high)):
        raise PretrainedError(f"{config.source}: time_step_limit={limit!r} is not two numbers")
    if not 0.0 <= low <= high:
        raise PretrainedError(f"{config.source}: time_step_limit={limit!r} is not 0 <= low <= high")
    return dict(dt_limit_min=float(low), dt_limit_max=None if math.isinf(high) else float(high))


def written_time_step_limit(options: dict[str, Any]) -> list:
    high = options.get("dt_limit_max")
    return [options.get("dt_limit_min", 0.0), {FLOAT_TAG: "Infinity"} if high is None else high]


def check_heads(config: CheckpointConfig, inner: int, num_heads: int, head_dim: int) -> None:
    if num_heads * head_dim != inner:
        raise PretrainedError(
            f"{config.source}: {num_heads} heads of {head_dim} do not fill the mixer's width "
            f"expand * hidden_size = {inner}, as seqjax's mamba2 mixer computes them"
        )


def recipe(config: CheckpointConfig) -> tuple[dict[str, Any], int]:
    hidden, expand = config["hidden_size"], config["expand"]
    if not isinstance(expand, int):
        raise PretrainedError(f"{config.source}: expand={expand!r} is not an integer")
    check_heads(config, expand * hidden, config["num_heads"], config["head_dim"])
    config.require("hidden_act", "silu")
    config.ignore(*NOT_COMPUTED)
    epsilon = config["layer_norm_epsilon"]
    options = dict(
        state_size=config["state_size"],
        head_dim=config["head_dim"],
        expand=expand,
        num_groups=config["n_groups"],
        conv_width=config["conv_kernel"],
        **read_time_step_limit(config),
        norm_groups=1,
        norm_epsilon=epsilon,
        conv_bias=config.get("use_conv_bias", True),
        projection_bias=config.get("use_bias", False),
    )
    model = dict(
        mixer="mamba2",
        num_layers=config["num_hidden_layers"],
        d_model=hidden,
        mlp_hidden_size=0,
        norm="rms",
        norm_epsilon=epsilon,
        mixers={"mamba2": options},
        tie_embeddings=config.get("tie_word_embeddings", False),
        head_bias=False,
    )
    return model, config["vocab_size"]


def mixer_tensors(ours: str, theirs: str, options: dict[str, Any]) -> list[Tensor]:
    """seqjax's mamba2 mixer at ``ours`` from transformers' Mamba2Mixer (or BambaMixer) at
    ``theirs``: in_proj [(z, x, B, C, dt), D], conv1d [C, 1, W], dt_bias, A_log, D [H], the
    gated norm [E], out_proj [D, E]; biases as the options ask."""
    result = [
        transposed(f"{ours}.in_proj.kernel", f"{theirs}.in_proj.weight"),
        conv_taps(f"{ours}.conv.kernel", f"{theirs}.conv1d.weight"),
        same(f"{ours}.dt_bias", f"{theirs}.dt_bias"),
        same(f"{ours}.log_decay_rate", f"{theirs}.A_log"),
        same(f"{ours}.skip", f"{theirs}.D"),
        same(f"{ours}.norm_scale", f"{theirs}.norm.weight"),
        transposed(f"{ours}.out_proj.kernel", f"{theirs}.out_proj.weight"),
    ]
    if options.get("conv_bias", True):
        result.append(same(f"{ours}.conv.bias", f"{theirs}.conv1d.bias"))
    if options.get("projection_bias", False):
        result += [
            same(f"{ours}.in_proj.bias", f"{theirs}.in_proj.bias"),
            same(f"{ours}.out_proj.bias", f"{theirs}.out_proj.bias"),
        ]
    return result


def tensors(config: CheckpointConfig, model: dict[str, Any]) -> tuple[list[Tensor], set[str]]:
    options = model["mixers"]["mamba2"]
    result = [same("backbone.embed.embedding", "backbone.embeddings.weight")]
    for i in range(model["num_layers"]):
        ours, theirs = f"backbone.blocks.{i}", f"backbone.layers.{i}"
        result.append(same(f"{ours}.mixer_norm.scale", f"{theirs}.norm.weight"))
        result += mixer_tensors(f"{ours}.mixer", f"{theirs}.mixer", options)
    result.append(same("backbone.final_norm.scale", "backbone.norm_f.weight"))
    if model["tie_embeddings"]:
        return result, {"lm_head.weight"}
    return result + [transposed("head.kernel", "lm_head.weight")], set()


def check_exportable(model: dict[str, Any], model_type: str, **fixed: Any) -> None:
    """Refuses a model whose ``fixed`` model-config keys differ from what ``model_type``
    computes (a default where the key is absent, as factory.py reads it)."""
    defaults = dict(norm="rms", mlp_hidden_size=None, mlp_activation="silu", head_bias=True)
    defaults.update(embedding_multiplier=1.0, logit_soft_cap=None)
    for key, value in fixed.items():
        if model.get(key, defaults.get(key)) != value:
            raise PretrainedError(
                f"a {model_type} has {key}={value!r}, not {model.get(key, defaults.get(key))!r}"
            )


def exported_mixer(options: dict[str, Any], norm_epsilon: float, model_type: str) -> None:
    """Refuses mixer options transformers' Mamba2Mixer and BambaMixer cannot compute."""
    norm_groups = options.get("norm_groups") or options.get("num_groups", 1)
    if norm_groups != 1:
        raise PretrainedError(
            f"transformers' {model_type} normalizes the gated output over all channels at once "
            f"(norm_groups=1), not in {norm_groups} groups"
        )
    if options.get("norm_epsilon", NORM_EPSILON) != norm_epsilon:
        raise PretrainedError(
            f"transformers' {model_type} has one epsilon for the block norms and the gated norm, "
            f"not {norm_epsilon!r} and {options.get('norm_epsilon', NORM_EPSILON)!r}"
        )


def export(model: dict[str, Any], vocab_size: int, original: dict | None) -> dict[str, Any]:
    options = model["mixers"]["mamba2"]
    check_exportable(
        model,
        "mamba2",
        mixer="mamba2",
        norm="rms",
        mlp_hidden_size=0,
        embedding_multiplier=1.0,
        logit_soft_cap=None,
    )
    if not model.get("tie_embeddings", False):
        check_exportable(model, "mamba2", head_bias=False)
    exported_mixer(options, model["norm_epsilon"], "mamba2")
    hidden, expand, head_dim = model["d_model"], options["expand"], options["head_dim"]
    values = dict(original or {})
    values.update(
        hidden_size=hidden,
        num_hidden_layers=model["num_layers"],
        vocab_size=vocab_size,
        state_size=options["state_size"],
        head_dim=head_dim,
        num_heads=expand * hidden // head_dim,
        expand=expand,
        n_groups=options.get("num_groups", 1),
        conv_kernel=options["conv_width"],
        time_step_limit=written_time_step_limit(options),
        layer_norm_epsilon=model["norm_epsilon"],
        hidden_act="silu",
        use_bias=options.get("projection_bias", False),
        use_conv_bias=options.get("conv_bias", True),
        tie_word_embeddings=model.get("tie_embeddings", False),
    )
    return values


register_converter(Converter("mamba2", "Mamba2ForCausalLM", recipe, tensors, export))
