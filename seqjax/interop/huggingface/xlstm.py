"""transformers' ``xlstm`` (xLSTMForCausalLM, xLSTM 7B of Beck et al., 2025): blocks of RMSNorm
→ mLSTM layer (seqjax's ``mlstm_7b``) → residual, RMSNorm → SwiGLU MLP → residual, a final
RMSNorm, an output layer of its own (transformers' xLSTMForCausalLM never ties it, whatever
``tie_word_embeddings`` says) and soft-capped logits.

``weight_mode`` "single" stores q, k, v, the output gate and the two gates as separate
linears, "fused" as one (q, k, v, o) and one (ĩ, f̃); both map to the same parameters. The
mLSTM's denominator ``eps`` (max(|nᵀq|, exp(-m)) + eps in the state's stabilized units) is
the mixer's ``normalizer_epsilon``.
"""

from typing import Any

import numpy as np

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
from seqjax.layers import default_options

# Kernel choices, chunkings and autocasting: the native torch kernels compute the same float32
# result whichever is named (the reduction flag rounds only a low-precision norm).
NOT_COMPUTED = (
    "mode",
    "chunkwise_kernel",
    "sequence_kernel",
    "step_kernel",
    "chunk_size",
    "return_last_states",
    "autocast_kernel_dtype",
    "max_inference_chunksize",
    "norm_reduction_force_float32",
)
MIXER = "mlstm_7b"


def round_up(x: float, multiple: int) -> int:
    """transformers' round_up_to_next_multiple_of, as it computes it (x may be a float)."""
    return int(((x + multiple - 1) // multiple) * multiple)


def _same_as(config: CheckpointConfig, key: str, value: Any) -> None:
    if config.get(key, value) != value:
        raise PretrainedError(
            f"{config.source}: {key}={config.get(key)!r} differs from {value!r}, which an "
            "xLSTMForCausalLM uses in its place; seqjax cannot tell which the weights follow"
        )


def recipe(config: CheckpointConfig) -> tuple[dict[str, Any], int]:
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    _same_as(config, "embedding_dim", hidden)
    _same_as(config, "num_blocks", layers)
    config.require("use_bias", False)
    config.require("add_out_norm", True)
    config.require("inference_state_dtype", "float32", "float32")
    config.require("weight_mode", ("single", "fused"), "single")
    config.get("tie_word_embeddings")  # ties nothing (the module docstring)
    config.ignore(*NOT_COMPUTED)
    norm_epsilon = config.get("norm_eps", 1e-6)
    options = dict(
        num_heads=config["num_heads"],
        qk_dim_factor=config.get("qk_dim_factor", 0.5),
        v_dim_factor=config.get("v_dim_factor", 1.0),
        gate_soft_cap=config.get("gate_soft_cap", 15.0),
        norm_epsilon=norm_epsilon,
        normalizer_epsilon=config.get("eps", 1e-6),
    )
    ffn_size = round_up(
        hidden * config.get("ffn_proj_factor", 2.667), config.get("ffn_round_up_to_multiple_of", 64)
    )
    model = dict(
        mixer=MIXER,
        num_layers=layers,
        d_model=hidden,
        mlp_hidden_size=ffn_size,
        mlp_activation="silu",
        norm="rms",
        norm_epsilon=norm_epsilon,
        mixers={MIXER: options},
        tie_embeddings=False,
        head_bias=False,
        logit_soft_cap=config.get("output_logit_soft_cap", 30.0),
    )
    return model, config["vocab_size"]


def _widths(model: dict[str, Any]) -> tuple[int, int]:
    options, hidden = model["mixers"][MIXER], model["d_model"]
    return int(hidden * options["qk_dim_factor"]), int(hidden * options["v_dim_factor"])


def _concatenated(path: str, names: tuple[str, ...], sizes: tuple[int, ...]) -> Tensor:
    """A kernel [in, Σ out] made of PyTorch weights [out_i, in] stacked along out."""
    cuts = np.cumsum(sizes)[:-1]
    return Tensor(
        path,
        names,
        lambda *weights: np.concatenate(weights, axis=0).T,
        lambda kernel: tuple(np.split(kernel.T, cuts, axis=0)),
    )


def tensors(config: CheckpointConfig, model: dict[str, Any]) -> tuple[list[Tensor], set[str]]:
    fused = config.get("weight_mode", "single") == "fused"
    qk, v = _widths(model)
    heads = model["mixers"][MIXER]["num_heads"]
    ffn = model["mlp_hidden_size"]
    result = [same("backbone.embed.embedding", "backbone.embeddings.weight")]
    for i in range(model["num_layers"]):
        block = f"backbone.blocks.{i}"  # the same name on both sides
        layer, ffn_layer = f"{block}.mlstm_layer", f"{block}.ffn"
        if fused:
            mixing = [
                transposed(f"{block}.mixer.in_proj.kernel", f"{layer}.qkv_opreact.weight"),
                transposed(f"{block}.mixer.gate_proj.kernel", f"{layer}.ifgate_preact.weight"),
                same(f"{block}.mixer.gate_proj.bias", f"{layer}.ifgate_preact.bias"),
                transposed(f"{block}.mlp.gate_and_up.kernel", f"{ffn_layer}.proj_up_gate_z.weight"),
            ]
        else:
            projections = tuple(
                f"{layer}.{name}.weight" for name in ("q", "k", "v", "ogate_preact")
            )
            gates = (f"{layer}.igate_preact", f"{layer}.fgate_preact")
            mixing = [
                _concatenated(f"{block}.mixer.in_proj.kernel", projections, (qk, qk, v, v)),
                _concatenated(
                    f"{block}.mixer.gate_proj.kernel",
                    tuple(f"{gate}.weight" for gate in gates),
                    (heads, heads),
                ),
                joined(f"{block}.mixer.gate_proj.bias", *(f"{g}.bias" for g in gates)),
                _concatenated(
                    f"{block}.mlp.gate_and_up.kernel",
                    (f"{ffn_layer}.proj_up_gate.weight", f"{ffn_layer}.proj_up.weight"),
                    (ffn, ffn),
                ),
            ]
        result += mixing + [
            same(f"{block}.mixer_norm.scale", f"{block}.norm_mlstm.weight"),
            same(f"{block}.mixer.norm_scale", f"{layer}.multihead_norm.weight"),
            transposed(f"{block}.mixer.out_proj.kernel", f"{layer}.out_proj.weight"),
            same(f"{block}.mlp_norm.scale", f"{block}.norm_ffn.weight"),
            transposed(f"{block}.mlp.down.kernel", f"{ffn_layer}.proj_down.weight"),
        ]
    result += [
        same("backbone.final_norm.scale", "backbone.out_norm.weight"),
        transposed("head.kernel", "lm_head.weight"),
    ]
    return result, set()


def _exportable(model: dict[str, Any]) -> dict[str, Any]:
    """The mixer's options (defaults filled in), once the model is known to be one an
    xLSTMForCausalLM computes."""
    options = {**default_options(MIXER), **model.get("mixers", {}).get(MIXER, {})}
    expected = dict(
        mixer=MIXER,
        mlp_activation="silu",
        norm="rms",
        norm_epsilon=options["norm_epsilon"],
        tie_embeddings=False,
        head_bias=False,
        layer_options={},
        embedding_multiplier=1.0,
    )
    differing = [key for key, value in expected.items() if model.get(key, value) != value]
    for key in ("mlp_hidden_size", "logit_soft_cap"):
        if not model.get(key):
            differing.append(key)
    if options["gate_soft_cap"] is None:
        differing.append(f"mixers.{MIXER}.gate_soft_cap")
    if differing:
        raise PretrainedError(
            f"an xLSTMForCausalLM cannot express this model's {', '.join(differing)} (it has "
            f"{MIXER} mixers, RMS norms of one epsilon, a SwiGLU MLP, an untied bias-free head "
            "and capped gates and logits)"
        )
    return options


def export(model: dict[str, Any], vocab_size: int, original: dict | None) -> dict[str, Any]:
    options, hidden = _exportable(model), model["d_model"]
    values = dict(original or {})
    ffn_size = model["mlp_hidden_size"]
    factor = values.get("ffn_proj_factor", 2.667)
    multiple = values.get("ffn_round_up_to_multiple_of", 64)
    if round_up(hidden * factor, multiple) != ffn_size:
        # round_up(D · (F / D), F) is F whichever way D · (F / D) rounds.
        factor, multiple = ffn_size / hidden, ffn_size
    values.update(
        vocab_size=vocab_size,
        hidden_size=hidden,
        embedding_dim=hidden,
        num_hidden_layers=model["num_layers"],
        num_blocks=model["num_layers"],
        num_heads=options["num_heads"],
        qk_dim_factor=options["qk_dim_factor"],
        v_dim_factor=options["v_dim_factor"],
        gate_soft_cap=options["gate_soft_cap"],
        norm_eps=options["norm_epsilon"],
        ffn_proj_factor=factor,
        ffn_round_up_to_multiple_of=multiple,
        output_logit_soft_cap=model["logit_soft_cap"],
        use_bias=False,
        add_out_norm=True,
        eps=options["normalizer_epsilon"],
        inference_state_dtype="float32",
        weight_mode=values.get("weight_mode", "single"),
        tie_word_embeddings=values.get("tie_word_embeddings", False),
    )
    return values


register_converter(Converter("xlstm", "xLSTMForCausalLM", recipe, tensors, export))
