"""The mamba2 converter against transformers' Mamba2ForCausalLM: two groups of B and C over
eight heads, transformers' chunk size (32) below the longer test length; and a second
checkpoint with the options seqjax's mixer took for it (projection biases, no conv bias, a
Δ limit that clips, another epsilon, tied embeddings)."""

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
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        num_heads=8,
        head_dim=8,
        n_groups=2,
        conv_kernel=4,
        chunk_size=32,
    )
    return transformers.Mamba2Config(**{**settings, **overrides})


OPTIONS = dict(
    use_bias=True,
    use_conv_bias=False,
    time_step_limit=(0.0, 0.05),
    layer_norm_epsilon=1e-3,
    tie_word_embeddings=True,
)


@pytest.fixture(scope="module", params=["defaults", "options"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"mamba2_{request.param}")
    overrides = OPTIONS if request.param == "options" else {}
    return reference_model(config(**overrides), directory), directory


def test_logits_equal_transformers(checkpoint):
    check_logits(*checkpoint, VOCAB)


def test_greedy_generation_equals_transformers(checkpoint):
    reference, directory = checkpoint
    if reference.config.time_step_limit != (0.0, float("inf")):
        # transformers' one-token step (mamba2_selective_state_update) leaves Δ unclipped, so
        # its generate() disagrees with its own forward pass under a Δ limit.
        pytest.skip("transformers' decoding step ignores time_step_limit")
    check_generation(reference, directory, VOCAB)


def test_save_load_round_trip(checkpoint, tmp_path):
    check_round_trip(*checkpoint, tmp_path, VOCAB)


@pytest.mark.parametrize(
    "key, value",
    [("hidden_act", "gelu"), ("num_heads", 4), ("time_step_limit", [0.5, 0.1])],
)
def test_unrepresentable_config_is_refused_by_name(tmp_path, key, value):
    values = config().to_dict()
    values[key] = value
    (tmp_path / "config.json").write_text(json.dumps(values))
    with pytest.raises(PretrainedError, match=key if key != "num_heads" else "4 heads of 8"):
        from_pretrained(tmp_path)
