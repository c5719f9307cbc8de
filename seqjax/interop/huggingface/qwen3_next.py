"""transformers' Qwen3-Next linear-attention layer (``Qwen3NextGatedDeltaNet``) as seqjax's
``gated_deltanet`` mixer, and back: a layer-level conversion of a state_dict (NumPy arrays).

The whole Qwen3-Next model (attention layers with gated outputs and partial rotary
embeddings between the linear-attention ones, sparse mixture-of-experts MLPs) is not a model
the backbone expresses, so this is not a ``from_pretrained`` model type. The layer is Gated
DeltaNet exactly: H key heads, H_v value heads (value head h reads key head h // (H_v / H)),
a causal depthwise conv without bias and SiLU over q, k, v, L2-normalized q and k, the query
scale 1/√K, β = σ(b), log α = -exp(A_log) softplus(a + dt_bias), a per-head RMSNorm with
``rms_norm_eps`` times SiLU(z), the output projection.

Its fused projections hold, per key head, [q (K), k (K), v (H_v/H · V), z (H_v/H · V)] rows
(``in_proj_qkvz``) and [b (H_v/H), a (H_v/H)] rows (``in_proj_ba``).
"""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from seqjax import layers
from seqjax.interop.pretrained import (
    CheckpointConfig,
    PretrainedError,
    conv_taps,
    parameter_name,
    same,
    transposed,
)
from seqjax.layers.deltanet import GatedDeltaNet

# Fused weight -> the mixer's kernels it holds, in their order within each key head's rows.
FUSED = {
    "in_proj_qkvz.weight": ("q_proj.kernel", "k_proj.kernel", "v_proj.kernel", "gate_proj.kernel"),
    "in_proj_ba.weight": ("beta_proj.kernel", "decay_proj.kernel"),
}


TENSORS = (
    conv_taps("conv.kernel", "conv1d.weight"),
    same("log_decay_rate", "A_log"),
    same("dt_bias", "dt_bias"),
    same("norm.scale", "norm.weight"),
    transposed("out_proj.kernel", "out_proj.weight"),
)


def split_per_key_head(weight: np.ndarray, widths: tuple[int, ...], num_key_heads: int):
    """A fused weight [H · Σ w_i, D] whose rows hold each key head's pieces in turn as the
    kernels [D, H · w_i] of the pieces."""
    blocks = weight.reshape(num_key_heads, sum(widths), weight.shape[-1])
    pieces = np.split(blocks, np.cumsum(widths)[:-1], axis=1)
    return [piece.reshape(-1, weight.shape[-1]).T for piece in pieces]


def fuse_per_key_head(kernels: list[np.ndarray], num_key_heads: int) -> np.ndarray:
    """The inverse of ``split_per_key_head``."""
    width = kernels[0].shape[0]
    blocks = [kernel.T.reshape(num_key_heads, -1, width) for kernel in kernels]
    return np.concatenate(blocks, axis=1).reshape(-1, width)


def mixer_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The ``gated_deltanet`` options (and d_model) of a Qwen3NextConfig's linear-attention
    layer, given as a mapping (``config.to_dict()``)."""
    config = CheckpointConfig(config, "the Qwen3-Next config")
    config.require("hidden_act", "silu")
    return dict(
        d_model=config["hidden_size"],
        num_heads=config["linear_num_key_heads"],
        num_value_heads=config["linear_num_value_heads"],
        head_dim=config["linear_key_head_dim"],
        value_dim=config["linear_value_head_dim"],
        conv_width=config["linear_conv_kernel_dim"],
        output_gate=True,
        output_norm_epsilon=config["rms_norm_eps"],
    )


def layer_config(mixer: GatedDeltaNet) -> dict[str, Any]:
    """The Qwen3NextConfig keys that describe ``mixer`` as a linear-attention layer."""
    _check_exportable(mixer)
    return dict(
        hidden_size=mixer.out_proj.kernel.shape[-1],
        linear_num_key_heads=mixer.num_heads,
        linear_num_value_heads=mixer.num_value_heads,
        linear_key_head_dim=mixer.head_dim,
        linear_value_head_dim=mixer.value_dim,
        linear_conv_kernel_dim=mixer.conv.width,
        rms_norm_eps=mixer.norm.epsilon,
        hidden_act="silu",
    )


def load_linear_attention(
    state_dict: Mapping[str, np.ndarray], config: Mapping[str, Any], *, dtype: Any = None
) -> GatedDeltaNet:
    """The ``gated_deltanet`` mixer of a ``Qwen3NextGatedDeltaNet`` state_dict (its own
    names, ``in_proj_qkvz.weight`` ...). ``dtype`` None keeps each array's dtype."""
    options = mixer_options(config)
    mixer = nnx.eval_shape(lambda: layers.create("gated_deltanet", rngs=nnx.Rngs(0), **options))
    graphdef, params, rest = nnx.split(mixer, nnx.Param, ...)
    variables = {parameter_name(path): v for path, v in nnx.to_flat_state(params)}
    expected = set(FUSED) | {name for tensor in TENSORS for name in tensor.names}
    missing, extra = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or extra:
        raise PretrainedError(
            f"a Qwen3NextGatedDeltaNet state_dict lacks {missing or 'nothing'} and holds "
            f"{extra or 'nothing'} beyond it"
        )
    values = {}
    for name, paths in FUSED.items():
        widths = tuple(variables[path].shape[-1] // mixer.num_heads for path in paths)
        weight = np.asarray(state_dict[name])
        if weight.shape != (mixer.num_heads * sum(widths), options["d_model"]):
            raise PretrainedError(f"{name} has shape {weight.shape}, which the config does not")
        kernels = split_per_key_head(weight, widths, mixer.num_heads)
        values.update(zip(paths, kernels, strict=True))
    for tensor in TENSORS:
        values[tensor.path] = tensor.load(*(np.asarray(state_dict[n]) for n in tensor.names))
    for path, variable in variables.items():
        value = values[path]
        if value.shape != variable.shape:
            raise PretrainedError(
                f"{path} of shape {value.shape} from the state_dict; the config asks for "
                f"{variable.shape}"
            )
        variable.set_value(jnp.asarray(value, dtype=dtype or value.dtype))
    return nnx.merge(graphdef, params, rest)


def save_linear_attention(mixer: GatedDeltaNet) -> dict[str, np.ndarray]:
    """The ``Qwen3NextGatedDeltaNet`` state_dict (NumPy arrays) of a ``gated_deltanet``
    mixer; ``load_linear_attention`` of it gives the mixer back bit for bit."""
    _check_exportable(mixer)
    params = nnx.state(mixer, nnx.Param)
    values = {parameter_name(path): np.asarray(v[...]) for path, v in nnx.to_flat_state(params)}
    state_dict = {
        name: fuse_per_key_head([values[path] for path in paths], mixer.num_heads)
        for name, paths in FUSED.items()
    }
    for tensor in TENSORS:
        state_dict.update(zip(tensor.names, tensor.save(values[tensor.path]), strict=True))
    return {name: np.ascontiguousarray(array) for name, array in state_dict.items()}


def _check_exportable(mixer: nnx.Module) -> None:
    """Refuses a mixer that is not Qwen3-Next's form of Gated DeltaNet, by what differs."""
    if type(mixer) is not GatedDeltaNet:
        raise PretrainedError(f"{type(mixer).__name__} is not a gated_deltanet mixer")
    if mixer.negative_eigenvalues:
        raise PretrainedError("Qwen3-Next takes β = σ(b): negative_eigenvalues must be False")
    if mixer.gate_proj is None:
        raise PretrainedError("Qwen3-Next gates its outputs: output_gate must be True")
