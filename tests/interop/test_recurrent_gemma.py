"""The recurrent_gemma converter against transformers' RecurrentGemmaForCausalLM (Griffin):
Griffin's pattern with a tied output layer, and attention first with an output layer of its
own. The attention window (8) is shorter than the longer test length and than prompt plus
generation (22 tokens), so both compare what the window drops."""

import pytest

from seqjax.interop import PretrainedError, from_pretrained, save_pretrained
from tests.interop.hf_testing import (
    check_generation,
    check_logits,
    check_round_trip,
    reference_model,
    transformers,
)

VOCAB = 64
WINDOW = 8


def config(**overrides):
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        lru_width=48,
        attention_window_size=WINDOW,
        conv1d_width=4,
        logits_soft_cap=5.0,
        # No end token: generate's min_new_tokens would forbid it to transformers alone.
        eos_token_id=None,
    )
    return transformers.RecurrentGemmaConfig(**{**settings, **overrides})


VARIANTS = {
    "griffin": dict(),
    "attention_first_untied": dict(
        num_hidden_layers=2,
        block_types=["attention", "recurrent"],
        num_key_value_heads=1,
        tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=500.0, partial_rotary_factor=0.5),
    ),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    reference = reference_model(config(**VARIANTS[request.param]), directory)
    return reference, directory


def test_logits_equal_transformers(checkpoint):
    check_logits(*checkpoint, VOCAB)


def test_greedy_generation_equals_transformers(checkpoint):
    check_generation(*checkpoint, VOCAB)


def test_save_load_round_trip(checkpoint, tmp_path):
    check_round_trip(*checkpoint, tmp_path, VOCAB)


def written_config(tmp_path, **overrides):
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    config(**overrides).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(attention_bias=True), r"attention_bias=True is not supported for recurrent_gemma"),
        (dict(hidden_activation="gelu"), r"hidden_activation='gelu' is not supported"),
    ],
)
def test_options_seqjax_does_not_compute_are_refused_by_name(tmp_path, overrides, message):
    with pytest.raises(PretrainedError, match=message):
        from_pretrained(written_config(tmp_path, **overrides))


def test_a_model_that_is_not_a_recurrent_gemma_is_not_saved_as_one(checkpoint, tmp_path):
    model = from_pretrained(checkpoint[1])
    other = {**model.pretrained.model_config, "norm": "rms"}
    with pytest.raises(PretrainedError, match=r"its norm differ"):
        save_pretrained(model, tmp_path / "out", model_type="recurrent_gemma", model_config=other)
    assert not (tmp_path / "out").exists()


def test_a_config_of_transformers_4_reads_its_top_level_rotary_keys():
    """google/recurrentgemma-2b's config.json (transformers 4.40): rope_theta and
    partial_rotary_factor at the top level, embeddings_scale_by_sqrt_dim."""
    from seqjax.interop.huggingface.recurrent_gemma import recipe
    from seqjax.interop.pretrained import CheckpointConfig

    values = config().to_dict()
    del values["rope_parameters"]
    values.update(rope_theta=500.0, partial_rotary_factor=0.25, embeddings_scale_by_sqrt_dim=True)
    model, _ = recipe(CheckpointConfig(values, "config.json"))
    attention = model["mixers"]["attention"]
    assert (attention["rotary_base"], attention["rotary_fraction"]) == (500.0, 0.25)
