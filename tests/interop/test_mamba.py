"""The mamba and falcon_mamba converters against transformers' MambaForCausalLM and
FalconMambaForCausalLM."""

import pytest

from tests.interop.hf_testing import (
    check_generation,
    check_logits,
    check_round_trip,
    reference_model,
    transformers,
)

VOCAB = 64


def config(model_type: str, **overrides):
    cls = transformers.MambaConfig if model_type == "mamba" else transformers.FalconMambaConfig
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        time_step_rank=4,
        intermediate_size=64,
    )
    return cls(**{**settings, **overrides})


@pytest.fixture(scope="module", params=["mamba", "falcon_mamba"])
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    tied = request.param == "mamba"
    reference = reference_model(config(request.param, tie_word_embeddings=tied), directory)
    return reference, directory


def test_logits_equal_transformers(checkpoint):
    check_logits(*checkpoint, VOCAB)


def test_greedy_generation_equals_transformers(checkpoint):
    check_generation(*checkpoint, VOCAB)


def test_save_load_round_trip(checkpoint, tmp_path):
    check_round_trip(*checkpoint, tmp_path, VOCAB)
