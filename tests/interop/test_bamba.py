"""The bamba converter against transformers' BambaForCausalLM: three blocks, Mamba-2 (two
groups of B and C over eight heads, transformers' chunk size 32 below the longer test length),
grouped-query attention with Bamba's half rotary embedding, Mamba-2, each with a SwiGLU MLP;
and a second checkpoint, attention then Mamba-2, with the options seqjax took for it
(projection and MLP biases, no conv bias, wider attention heads, another rotary base and fraction,
another epsilon, tied embeddings)."""

import json

import pytest

from seqjax.interop import PretrainedError, from_pretrained
from tests.interop.hf_testing import (
    check_generation,
    check_logits,
    check_round_trip,
    reference_model,
    transformers,
)

VOCAB = 64


def config(**overrides):
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        attn_layer_indices=[1],
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_rotary_emb=4,  # IBM's configs state it; transformers computes 8 * 0.5
        mamba_n_heads=8,
        mamba_d_head=8,
        mamba_n_groups=2,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        mamba_chunk_size=32,
    )
    return transformers.BambaConfig(**{**settings, **overrides})


OPTIONS = dict(
    num_hidden_layers=2,
    attn_layer_indices=[0],
    mamba_proj_bias=True,
    mamba_conv_bias=False,
    mlp_bias=True,
    head_dim=16,
    attn_rotary_emb=4,
    rope_parameters=dict(rope_type="default", rope_theta=500.0, partial_rotary_factor=0.25),
    rms_norm_eps=1e-3,
    tie_word_embeddings=True,
)


@pytest.fixture(scope="module", params=["defaults", "options"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"bamba_{request.param}")
    overrides = OPTIONS if request.param == "options" else {}
    return reference_model(config(**overrides), directory), directory


def test_logits_equal_transformers(checkpoint):
    check_logits(*checkpoint, VOCAB)


def test_greedy_generation_equals_transformers(checkpoint):
    check_generation(*checkpoint, VOCAB)


def test_save_load_round_trip(checkpoint, tmp_path):
    check_round_trip(*checkpoint, tmp_path, VOCAB)


@pytest.mark.parametrize(
    "key, value, refusal",
    [
        ("attention_bias", True, "attention_bias"),
        ("hidden_act", "gelu", "hidden_act"),
        ("attn_rotary_emb", 8, "attn_rotary_emb"),
        ("rope_parameters", dict(rope_type="linear", factor=2.0, rope_theta=1e4), "factor"),
        ("rope_parameters", dict(rope_type="dynamic", rope_theta=1e4), "rope_type"),
    ],
)
def test_unrepresentable_config_is_refused_by_name(tmp_path, key, value, refusal):
    values = config().to_dict()
    values[key] = value
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(PretrainedError, match=refusal):
        from_pretrained(tmp_path)
