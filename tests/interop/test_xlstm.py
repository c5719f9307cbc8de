"""The xlstm converter against transformers' xLSTMForCausalLM (xLSTM 7B's architecture).

The reference runs transformers' own torch kernels (the xlstm package is not installed):
mode "inference", which runs "chunkwise--native_autograd" over whole chunks of 64, then
"native_sequence__native" (the recurrent step, one token at a time) over the rest, and the
"native" step when decoding. Widths are multiples of 64 because transformers sizes its cache
by qk_dim and v_dim rounded up to 64.

transformers cannot build or load a ``weight_mode="fused"`` model (its weight initializer
fails on the fused gate bias), so the fused checkpoint is the single one's tensors fused, and
transformers loads it with that initializer switched off: its fused forward pass is the one
compared.
"""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from seqjax.interop import PretrainedError, from_pretrained
from tests.interop.hf_testing import (
    LENGTHS,
    check_generation,
    check_logits,
    check_round_trip,
    randomized,
    reference_logits,
    reference_model,
    token_batch,
    torch,
    transformers,
)

VOCAB, LAYERS = 64, 2
# (module, fused tensor, its parts) of each block, stacked along the output axis.
FUSED = (
    ("mlstm_layer", "qkv_opreact.weight", ("q", "k", "v", "ogate_preact")),
    ("mlstm_layer", "ifgate_preact.weight", ("igate_preact", "fgate_preact")),
    ("mlstm_layer", "ifgate_preact.bias", ("igate_preact", "fgate_preact")),
    ("ffn", "proj_up_gate_z.weight", ("proj_up_gate", "proj_up")),
)


def config(**overrides):
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=128,
        num_hidden_layers=LAYERS,
        num_heads=4,
        # Far above xLSTM 7B's 1e-6, so that the ε in the mLSTM's denominator shows.
        eps=1e-2,
        # Smaller caps than xLSTM 7B's (15 and 30), so that the random gates and logits reach
        # the tanh's curve (at a gate cap of 4 both bfloat16 sides are 4% apart, 2% at 8).
        gate_soft_cap=8.0,
        output_logit_soft_cap=3.0,
        # No end-of-sequence token: generate(min_new_tokens=...) forbids xLSTM's default one
        # (2), which seqjax's greedy decoding may choose.
        eos_token_id=None,
    )
    return transformers.xLSTMConfig(**{**settings, **overrides})


def spread_gates(model, seed):
    """Random weights, with gate biases moved off xLSTM 7B's initial ones (input -10, forget
    3 to 6, with which the stabilizer only decays and the normalizer's floor nearly always wins):
    input biases N(-1, 1), forget biases N(5, 1). With input gates near -10, transformers'
    bfloat16 logits are 9% of the largest logit away from seqjax's (transformers rounds the
    gate pre-activations to bfloat16 before exp; seqjax computes them in float32)."""
    model = randomized(model, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            for gate, mean, spread in (("igate", -1.0, 1.0), ("fgate", 5.0, 1.0)):
                if f"{gate}_preact.bias" in name:
                    noise = torch.randn(tensor.shape, generator=generator)
                    tensor.copy_(mean + spread * noise)
    return model


def fuse(directory):
    """The checkpoint at ``directory`` rewritten with weight_mode "fused"'s tensors."""
    tensors = load_file(directory / "model.safetensors")
    for i in range(LAYERS):
        block = f"backbone.blocks.{i}"
        for module, fused, parts in FUSED:
            kind = fused.split(".")[-1]
            names = [f"{block}.{module}.{part}.{kind}" for part in parts]
            tensors[f"{block}.{module}.{fused}"] = np.concatenate([tensors.pop(n) for n in names])
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    values = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**values, "weight_mode": "fused"}))


@pytest.fixture(scope="module", params=["single", "fused"])
def checkpoint(request, tmp_path_factory):
    """Spread gates; the fused case also sets tie_word_embeddings, which does not tie
    xLSTMForCausalLM's output layer (the converter reads lm_head)."""
    directory = tmp_path_factory.mktemp(f"xlstm_{request.param}")
    fused = request.param == "fused"
    reference = reference_model(
        config(tie_word_embeddings=fused), directory, randomize=spread_gates
    )
    if not fused:
        yield reference, directory
        return
    fuse(directory)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.xLSTMPreTrainedModel, "_init_weights", lambda self, module: None)
        fused_reference = transformers.xLSTMForCausalLM.from_pretrained(directory).eval()
        tokens = token_batch(VOCAB, LENGTHS[-1])
        np.testing.assert_array_equal(
            reference_logits(fused_reference, tokens), reference_logits(reference, tokens)
        )
        yield fused_reference, directory


def test_logits_equal_transformers(checkpoint):
    check_logits(*checkpoint, VOCAB)


def test_greedy_generation_equals_transformers(checkpoint):
    check_generation(*checkpoint, VOCAB)


def test_save_load_round_trip(checkpoint, tmp_path):
    check_round_trip(*checkpoint, tmp_path, VOCAB)


def edited(directory, tmp_path, **changes):
    """A copy of the checkpoint at ``directory`` whose config.json has ``changes``."""
    copy = tmp_path / "edited"
    copy.mkdir()
    values = json.loads((directory / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**values, **changes}))
    (copy / "model.safetensors").symlink_to(directory / "model.safetensors")
    return copy


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(use_bias=True), "use_bias=True is not supported"),
        (dict(inference_state_dtype="bfloat16"), "inference_state_dtype='bfloat16'"),
        (dict(add_out_norm=False), "add_out_norm=False is not supported"),
        (dict(embedding_dim=64), "embedding_dim=64 differs from 128"),
        (dict(residual_scale=2.0), "residual_scale not understood by the xlstm converter"),
    ],
)
def test_options_seqjax_does_not_compute_are_refused_by_name(
    checkpoint, tmp_path, changes, message
):
    _, directory = checkpoint
    with pytest.raises(PretrainedError, match=message):
        from_pretrained(edited(directory, tmp_path, **changes))
