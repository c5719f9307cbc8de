"""The Qwen3-Next linear-attention layer conversion against transformers'
Qwen3NextGatedDeltaNet itself (its torch chunked and recurrent gated delta rules): outputs in
float32 and bfloat16, with more value heads than key heads and with as many, in one call
and in pieces with the carried state; the state_dict back bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqjax.interop.huggingface.qwen3_next import (
    layer_config,
    load_linear_attention,
    mixer_options,
    save_linear_attention,
)
from seqjax.interop.pretrained import PretrainedError
from tests.interop.hf_testing import randomized, torch, transformers
from tests.tolerances import (
    PRETRAINED_BFLOAT16_RELATIVE,
    PRETRAINED_FLOAT32_RELATIVE,
    relative_error,
)

qwen3_next = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")

BATCH, LENGTH, HIDDEN = 2, 70, 32
# A chunked prefill, a chunked continuation of the same length, one decoding step.
PIECES = (0, 32, 64, 65)


def config(num_value_heads: int):
    return transformers.Qwen3NextConfig(
        hidden_size=HIDDEN,
        linear_num_key_heads=2,
        linear_num_value_heads=num_value_heads,
        linear_key_head_dim=8,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        rms_norm_eps=1e-6,
    )


@pytest.fixture(scope="module", autouse=True)
def torch_reference_functions():
    """transformers' own torch forms of the delta rule, not flash-linear-attention's
    kernels, which it picks when that package is installed."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule"):
            function = getattr(qwen3_next, name)
            patch.setattr(qwen3_next, name, getattr(function, "__wrapped__", function))
        yield


def reference_layer(num_value_heads: int):
    layer_config_ = config(num_value_heads)
    torch.manual_seed(0)
    layer = qwen3_next.Qwen3NextGatedDeltaNet(layer_config_, layer_idx=0).float().eval()
    return randomized(layer, seed=num_value_heads), layer_config_


@pytest.fixture(scope="module")
def reference():
    """Four value heads, two per key head."""
    return reference_layer(4)


@nnx.jit
def run_mixer(mixer, x, state):
    return mixer(x, state=state)


def state_dict(layer) -> dict[str, np.ndarray]:
    return {name: t.detach().float().numpy() for name, t in layer.state_dict().items()}


def inputs(dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((BATCH, LENGTH, HIDDEN)).astype(dtype)


def run_reference(layer, x, cache=None) -> np.ndarray:
    with torch.no_grad():
        return layer(torch.as_tensor(x), cache_params=cache).float().numpy()


@pytest.mark.parametrize("num_value_heads", [4, 2])
def test_outputs_equal_transformers_float32(num_value_heads):
    layer, layer_config_ = reference_layer(num_value_heads)
    mixer = load_linear_attention(state_dict(layer), layer_config_.to_dict())
    assert mixer.num_value_heads == num_value_heads
    x = inputs()
    y, _ = run_mixer(mixer, jnp.asarray(x), None)
    error = relative_error(y, run_reference(layer, x))
    assert error < PRETRAINED_FLOAT32_RELATIVE, error


def test_outputs_equal_transformers_bfloat16(reference):
    layer, layer_config_ = reference
    half = qwen3_next.Qwen3NextGatedDeltaNet(layer_config_, layer_idx=0).eval()
    half.load_state_dict(layer.state_dict())
    half = half.to(torch.bfloat16)
    mixer = load_linear_attention(state_dict(half), layer_config_.to_dict(), dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(mixer))
    x = torch.as_tensor(inputs()).to(torch.bfloat16)
    with torch.no_grad():
        expected = half(x).float().numpy()
    y, _ = run_mixer(mixer, jnp.asarray(x.float().numpy(), jnp.bfloat16), None)
    error = relative_error(np.asarray(y, np.float32), expected)
    assert error < PRETRAINED_BFLOAT16_RELATIVE, error


def test_pieces_with_carried_state_equal_transformers_cache(reference):
    """The sequence in pieces (a prefill, a continuation, one decoding token): each piece's
    outputs and the carried delta-rule state S [B, H_v, K, V] equal transformers' with its
    cache."""
    layer, layer_config_ = reference
    mixer = load_linear_attention(state_dict(layer), layer_config_.to_dict())
    x = inputs()
    cache = transformers.DynamicCache(config=layer_config_)
    state = mixer.init_state(BATCH)
    for start, stop in zip(PIECES[:-1], PIECES[1:], strict=True):
        expected = run_reference(layer, x[:, start:stop], cache)
        y, state = run_mixer(mixer, jnp.asarray(x[:, start:stop]), state)
        error = relative_error(y, expected)
        assert error < PRETRAINED_FLOAT32_RELATIVE, (start, error)
        carried = cache.layers[0].recurrent_states[0].numpy()
        error = relative_error(state["recurrent"], carried)
        assert error < PRETRAINED_FLOAT32_RELATIVE, (start, error)


def test_state_dict_round_trip_is_bit_identical(reference):
    layer, layer_config_ = reference
    original = state_dict(layer)
    mixer = load_linear_attention(original, layer_config_.to_dict())
    saved = save_linear_attention(mixer)
    assert saved.keys() == original.keys()
    for name, array in original.items():
        assert saved[name].dtype == array.dtype and saved[name].shape == array.shape, name
        np.testing.assert_array_equal(saved[name], array, err_msg=name)
    exported = {**layer_config_.to_dict(), **layer_config(mixer)}
    assert mixer_options(exported) == mixer_options(layer_config_.to_dict())
    # transformers takes the saved arrays back as they are.
    layer.load_state_dict({name: torch.tensor(a) for name, a in saved.items()}, strict=True)


def test_refusals_name_the_difference(reference):
    layer, layer_config_ = reference
    values = layer_config_.to_dict()
    with pytest.raises(PretrainedError, match="hidden_act"):
        load_linear_attention(state_dict(layer), {**values, "hidden_act": "gelu"})
    incomplete = state_dict(layer)
    del incomplete["A_log"]
    with pytest.raises(PretrainedError, match="A_log"):
        load_linear_attention(incomplete, values)
    misshapen = {**state_dict(layer), "in_proj_ba.weight": np.zeros((2, HIDDEN), np.float32)}
    with pytest.raises(PretrainedError, match="in_proj_ba"):
        load_linear_attention(misshapen, values)
