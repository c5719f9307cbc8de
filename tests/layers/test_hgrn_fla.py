"""The hgrn and hgrn2 mixers with ``form="fla"`` equal flash-linear-attention's HGRNAttention
and HGRN2Attention (fla 0.5.2) given the same random weights: outputs and final states, at
the first layer (no lower bound) and at layer 1 of 2 (the bound fla's model gives there
from its initial Γ = 0), with and without the short conv.

fla's Triton kernels need a GPU, so each layer runs its PyTorch path: the recurrences are
fla's naive references (naive_recurrent_hgrn, naive_recurrent_gla), the fused gated norm,
norm-linear, activations and short conv the PyTorch they fuse (fla's rms_norm_ref, the
module's own Conv1d).
"""

import numpy as np
import pytest
from flax import nnx
from layer_testing import apply
from tolerances import FLOAT32

from seqjax import layers

torch = pytest.importorskip("torch", reason="fla's layers are the reference")
pytest.importorskip("fla", reason="flash-linear-attention's layers are the reference")

import torch.nn.functional as F  # noqa: E402
from fla.layers import hgrn as fla_hgrn  # noqa: E402
from fla.layers import hgrn2 as fla_hgrn2  # noqa: E402
from fla.models.utils import Cache  # noqa: E402
from fla.modules import ShortConvolution  # noqa: E402
from fla.modules.layernorm import rms_norm_ref  # noqa: E402
from fla.ops.gla.naive import naive_recurrent_gla  # noqa: E402
from fla.ops.hgrn.naive import naive_recurrent_hgrn  # noqa: E402

D_MODEL, BATCH, LENGTH, NUM_LAYERS = 32, 2, 70, 2
EXPAND_RATIO = 8  # hgrn2: 4 heads of 8 keys and 8 values
CONV_WIDTH = 4
# (layer index, conv width): layer 0 has no bound; layer 1 of 2 has γ = 1/2.
CASES = [(0, 0), (1, CONV_WIDTH)]


def hgrn_reference(x, g, initial_state=None, output_final_state=False, cu_seqlens=None):
    return naive_recurrent_hgrn(x, g, initial_state, output_final_state)


def gla_reference(
    q,
    k,
    v,
    gk=None,
    g=None,
    initial_state=None,
    output_final_state=False,
    state_v_first=False,
    cu_seqlens=None,
    **_,
):
    """naive_recurrent_gla in the layout the layer asks for ([V, K] states if v first)."""
    if state_v_first and initial_state is not None:
        initial_state = initial_state.transpose(-1, -2)
    o, state = naive_recurrent_gla(
        q, k, v, g if gk is None else gk, initial_state, output_final_state
    )
    if state_v_first and state is not None:
        state = state.transpose(-1, -2)
    return o, state


def gated_rms_norm(self, x, g, **_):
    """FusedRMSNormGated (swish): RMSNorm(x) ⊙ SiLU(g)."""
    return rms_norm_ref(x.float(), self.weight, None, eps=self.eps) * F.silu(g.float())


def rms_norm_linear(x, norm_weight, norm_bias, linear_weight, linear_bias, eps=1e-5, **_):
    return F.linear(
        rms_norm_ref(x.float(), norm_weight, norm_bias, eps=eps), linear_weight, linear_bias
    )


def short_conv(self, x, **_):
    """ShortConvolution without activation: its Conv1d (padding W - 1) cut to be causal."""
    return torch.nn.Conv1d.forward(self, x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2), None


@pytest.fixture(scope="module", autouse=True)
def torch_path():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fla_hgrn, "chunk_hgrn", hgrn_reference)
        patch.setattr(fla_hgrn, "fused_recurrent_hgrn", hgrn_reference)
        patch.setattr(fla_hgrn, "swiglu", lambda x, y: F.silu(x) * y)
        patch.setattr(fla_hgrn.FusedRMSNormGated, "forward", gated_rms_norm)
        patch.setattr(fla_hgrn2, "chunk_gla", gla_reference)
        patch.setattr(fla_hgrn2, "fused_recurrent_gla", gla_reference)
        patch.setattr(fla_hgrn2, "swish", F.silu)
        patch.setattr(fla_hgrn2, "rms_norm_linear", rms_norm_linear)
        patch.setattr(ShortConvolution, "forward", short_conv)
        yield


def randomized(module, seed):
    """Every parameter redrawn (norm weights of ones would hide a mapping error)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor.shape[-1] ** 0.5)
    return module.eval()


def kernel(*linears):
    """nnx kernels [D, ΣN] from torch Linear weights [N, D], concatenated in order."""
    return np.concatenate([layer.weight.detach().numpy().T for layer in linears], axis=1)


def conv_kernel(*convs):
    """A ShortConv kernel [W, ΣC] from depthwise Conv1d weights [C, 1, W]."""
    return np.concatenate([conv.weight.detach().numpy()[:, 0].T for conv in convs], axis=1)


def model_lower_bound(layer_index):
    """The bound fla's HGRN/HGRN2 model gives layer ``layer_index`` from its Γ = 0 [L, D]."""
    bounds = torch.zeros(NUM_LAYERS, D_MODEL).softmax(0)
    return (bounds.cumsum(0) - bounds[0])[layer_index]


def fla_hgrn_layer(layer_index, conv_width):
    """fla's HGRNAttention and the seqjax hgrn mixer with its weights."""
    reference = randomized(
        fla_hgrn.HGRNAttention(
            hidden_size=D_MODEL,
            use_short_conv=bool(conv_width),
            conv_size=conv_width or 4,
            layer_idx=layer_index,
        ),
        seed=layer_index,
    )
    mixer = layers.create(
        "hgrn",
        d_model=D_MODEL,
        rngs=nnx.Rngs(0),
        form="fla",
        conv_width=conv_width,
        layer_index=layer_index,
        num_layers=NUM_LAYERS,
    )
    mixer.input_proj.kernel[...] = kernel(reference.i_proj, reference.f_proj, reference.g_proj)
    mixer.norm.scale[...] = reference.g_norm.weight.detach().numpy()
    mixer.out_proj.kernel[...] = kernel(reference.o_proj)
    if conv_width:
        mixer.conv.kernel[...] = conv_kernel(reference.i_conv1d, reference.f_conv1d)
    return reference, mixer


def fla_hgrn2_layer(layer_index, conv_width):
    """fla's HGRN2Attention and the seqjax hgrn2 mixer with its weights."""
    reference = randomized(
        fla_hgrn2.HGRN2Attention(
            hidden_size=D_MODEL,
            expand_ratio=EXPAND_RATIO,
            use_short_conv=bool(conv_width),
            conv_size=conv_width or 4,
            layer_idx=layer_index,
        ),
        seed=10 + layer_index,
    )
    mixer = layers.create(
        "hgrn2",
        d_model=D_MODEL,
        rngs=nnx.Rngs(0),
        form="fla",
        expand_ratio=EXPAND_RATIO,
        conv_width=conv_width,
        layer_index=layer_index,
        num_layers=NUM_LAYERS,
    )
    mixer.input_proj.kernel[...] = kernel(reference.q_proj, reference.f_proj, reference.i_proj)
    mixer.norm.scale[...] = reference.g_norm.weight.detach().numpy()
    mixer.out_proj.kernel[...] = kernel(reference.o_proj)
    if conv_width:
        mixer.conv.kernel[...] = conv_kernel(
            reference.q_conv1d, reference.f_conv1d, reference.i_conv1d
        )
    return reference, mixer


def run_both(reference, mixer, layer_index):
    """(seqjax y, state), (fla y, its cache of the layer) on the same x [B, T, D]."""
    x = np.random.default_rng(layer_index).normal(size=(BATCH, LENGTH, D_MODEL))
    x = x.astype(np.float32)
    cache = Cache()
    with torch.no_grad():
        expected, _, cache = reference(
            torch.from_numpy(x),
            past_key_values=cache,
            use_cache=True,
            lower_bound=model_lower_bound(layer_index),
        )
    return apply(mixer, x), (expected.numpy(), cache[layer_index])


@pytest.mark.parametrize("layer_index, conv_width", CASES)
def test_hgrn_fla_form_equals_fla(layer_index, conv_width):
    reference, mixer = fla_hgrn_layer(layer_index, conv_width)
    assert mixer.forget_lower_bound == float(model_lower_bound(layer_index)[0])
    (y, state), (expected, cache) = run_both(reference, mixer, layer_index)
    np.testing.assert_allclose(y, expected, **FLOAT32)
    recurrent = state["recurrent"] if conv_width else state
    np.testing.assert_allclose(recurrent, cache["recurrent_state"].numpy(), **FLOAT32)


@pytest.mark.parametrize("layer_index, conv_width", CASES)
def test_hgrn2_fla_form_equals_fla(layer_index, conv_width):
    reference, mixer = fla_hgrn2_layer(layer_index, conv_width)
    (y, state), (expected, cache) = run_both(reference, mixer, layer_index)
    np.testing.assert_allclose(y, expected, **FLOAT32)
    recurrent = state["recurrent"] if conv_width else state
    # fla's state is [B, H, V, K] (state_v_first), seqjax's [B, H, K, V].
    expected_state = cache["recurrent_state"].numpy().transpose(0, 1, 3, 2)
    np.testing.assert_allclose(recurrent, expected_state, **FLOAT32)
