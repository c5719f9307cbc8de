"""The backbone, its heads and generation: hybrids by pattern, stacked state in and out,
prefill + decode equal to recomputation, sampling rules and clear input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tolerances import FLOAT32

from seqjax.models import Backbone, Classifier, LanguageModel, generate, parse_pattern

VOCAB = 11


def language_model(pattern="gru,attention", num_layers=3, **mixer_options):
    backbone = Backbone(
        d_model=16,
        num_layers=num_layers,
        pattern=pattern,
        vocab_size=VOCAB,
        mlp_expansion=2,
        mixer_options={"attention": dict(num_heads=2, cache_length=32), **mixer_options},
        rngs=nnx.Rngs(0),
    )
    return LanguageModel(backbone, VOCAB, rngs=nnx.Rngs(1))


@nnx.jit
def apply(model, inputs, state=None):
    return model(inputs, state=state)


def tokens(batch, length, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


def test_pattern_repeats_over_the_layers():
    model = language_model("gru,gru,attention", num_layers=5)
    kinds = [type(block.mixer).__name__ for block in model.backbone.blocks]
    assert kinds == ["GRU", "GRU", "Attention", "GRU", "GRU"]
    assert parse_pattern(" lstm , attention") == ("lstm", "attention")
    with pytest.raises(ValueError, match="unknown mixer 'rg_lur'"):
        parse_pattern("gru,rg_lur")
    with pytest.raises(ValueError, match="at least one mixer"):
        parse_pattern("gru,,attention")


def test_stacked_state_pieces_and_steps_equal_the_whole_sequence():
    model = language_model()
    inputs = tokens(2, 10)
    whole, whole_state = apply(model, inputs)
    first, state = apply(model, inputs[:, :6])
    second, state = apply(model, inputs[:, 6:], state)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, **FLOAT32)
    state, outputs = model.init_state(2), []
    for t in range(10):
        logits, state = apply(model, inputs[:, t : t + 1], state)
        outputs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outputs, 1), whole, **FLOAT32)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **FLOAT32), state, whole_state)


def test_greedy_generation_equals_recomputing_the_whole_sequence():
    model = language_model()
    prompt = tokens(2, 5, seed=3)
    generated = generate(model, prompt, max_new_tokens=6)
    assert generated.shape == (2, 11)
    np.testing.assert_array_equal(generated[:, :5], prompt)
    # Each new token is the argmax of the whole model run on everything before it.
    logits, _ = apply(model, generated[:, :-1])
    np.testing.assert_array_equal(generated[:, 5:], jnp.argmax(logits[:, 4:], axis=-1))


def test_sampling_respects_top_k_and_the_key():
    model = language_model("lstm", num_layers=1)
    prompt = tokens(4, 3)
    key = jax.random.key(7)
    sampled = generate(model, prompt, max_new_tokens=8, key=key, temperature=1.0, top_k=3)
    again = generate(model, prompt, max_new_tokens=8, key=key, temperature=1.0, top_k=3)
    np.testing.assert_array_equal(sampled, again)
    greedy = generate(model, prompt, max_new_tokens=8)
    top1 = generate(model, prompt, max_new_tokens=8, key=key, temperature=1.0, top_k=1)
    np.testing.assert_array_equal(top1, greedy)
    # Every sampled token is among the 3 most likely given the sequence before it.
    logits, _ = apply(model, sampled[:, :-1])
    top3 = jax.lax.top_k(logits[:, 2:], 3)[1]
    assert np.all(np.any(top3 == sampled[:, 3:, None], axis=-1))
    different = generate(model, prompt, max_new_tokens=8, key=jax.random.key(8), temperature=1.0)
    assert not np.array_equal(different, sampled)


def test_classifier_head_pools_over_time():
    backbone = Backbone(d_model=8, num_layers=1, pattern="gru", input_dim=3, rngs=nnx.Rngs(0))
    classifier = Classifier(backbone, 5, pooling="mean", rngs=nnx.Rngs(1))
    features = jax.random.normal(jax.random.key(0), (2, 7, 3))
    logits, state = classifier(features)
    assert logits.shape == (2, 5) and state[0].shape == (2, 8)
    with pytest.raises(ValueError, match=r"inputs must be \[B, T, F\] with F = 3 features"):
        classifier(jnp.ones((2, 7, 4)))
    with pytest.raises(ValueError, match="inputs must be floating point, got int32"):
        classifier(jnp.ones((2, 7, 3), jnp.int32))
    with pytest.raises(ValueError, match="pooling must be one of 'last', 'mean', 'attention', got"):
        Classifier(backbone, 5, pooling="max", rngs=nnx.Rngs(1))


def test_bad_inputs_raise_clear_errors():
    model = language_model("gru", num_layers=1)
    with pytest.raises(ValueError, match=r"tokens must be token ids in \[0, 11\), got values"):
        model(jnp.array([[1, 2, 11]]))
    with pytest.raises(ValueError, match=r"prompt must be token ids in \[0, 11\)"):
        generate(model, jnp.array([[-1, 2]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        generate(model, tokens(1, 2), max_new_tokens=2, temperature=0.5)
    attention = language_model("attention", num_layers=1)
    with pytest.raises(ValueError, match="more than the attention cache holds"):
        generate(attention, tokens(1, 30), max_new_tokens=5)
    with pytest.raises(ValueError, match="give exactly one of vocab_size"):
        Backbone(d_model=8, num_layers=1, pattern="gru", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"tokens must be \[B, T\] with at least one sequence"):
        model(jnp.zeros((1, 0), jnp.int32))
    with pytest.raises(ValueError, match="tokens must be integer token ids, got dtype float32"):
        model(jnp.zeros((1, 3)))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(d_model=-8), "d_model must be an integer >= 1, got -8"),
        (dict(d_model="64"), "d_model must be an integer >= 1, got '64'"),
        (dict(num_layers=0), "num_layers must be an integer >= 1, got 0"),
        (dict(mlp_expansion=-1), "mlp_expansion must be an integer >= 0, got -1"),
        (dict(mlp_expansion=1.5), "mlp_expansion must be an integer >= 0, got 1.5"),
        (dict(norm="batch"), "norm must be one of 'rms', 'rms_plus_one', 'layer', got 'batch'"),
        (dict(remat="some"), "remat must be one of 'none', 'full', 'dots', got 'some'"),
        (dict(vocab_size=0), "vocab_size must be an integer >= 1, got 0"),
        (dict(mixer_options={"gru": {"hidden_size": "abc"}}), "mixer 'gru': hidden_size must"),
        (dict(mlp_hidden_size=-3), "mlp_hidden_size must be an integer >= 0, got -3"),
        (dict(mlp_activation="swish"), "mlp_activation must be one of 'silu', 'gelu', 'gelu_t"),
        (dict(norm_epsilon=0.0), "epsilon must be a finite number > 0, got 0.0"),
        (dict(embedding_multiplier=-1.0), "embedding_multiplier must be a finite number > 0"),
        (
            dict(layer_options={3: {"hidden_size": 4}}),
            r"layer_options has entries for layers \[3\]",
        ),
    ],
)
def test_bad_backbone_settings_are_named(options, message):
    settings = {**dict(d_model=8, num_layers=1, pattern="gru", vocab_size=VOCAB), **options}
    with pytest.raises(ValueError, match=message):
        Backbone(rngs=nnx.Rngs(0), **settings)


def test_bad_head_settings_are_named():
    backbone = Backbone(d_model=8, num_layers=1, pattern="gru", vocab_size=VOCAB, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 1, got 0"):
        LanguageModel(backbone, 0, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1, got -2"):
        Classifier(backbone, -2, rngs=nnx.Rngs(1))
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1, got 0"):
        generate(LanguageModel(backbone, VOCAB, rngs=nnx.Rngs(1)), tokens(1, 2), max_new_tokens=0)


def test_published_model_options_compute_what_they_say():
    """The options of converted checkpoints: per-layer mixer options, blocks without an MLP,
    Gemma's (1 + w) norm, the embedding multiplier, a tied head and logit soft-capping."""
    settings = dict(d_model=8, num_layers=2, pattern="attention", vocab_size=VOCAB)
    backbone = Backbone(
        **settings, rngs=nnx.Rngs(0), mlp_hidden_size=0, norm="rms_plus_one",
        norm_epsilon=1e-3, embedding_multiplier=8**0.5,
        mixer_options={"attention": {"num_heads": 2, "window": 5}},
        layer_options={1: {"window": 3}},
    )  # fmt: skip
    assert [block.mixer.window for block in backbone.blocks] == [5, 3]
    assert all(block.mlp is None and block.mlp_norm is None for block in backbone.blocks)
    norm = backbone.final_norm
    assert norm.epsilon == 1e-3 and float(jnp.max(jnp.abs(norm.scale[...]))) == 0.0
    x = jax.random.normal(jax.random.key(0), (2, 3, 8))
    expected = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(norm(x), expected, **FLOAT32)

    model = LanguageModel(
        backbone, VOCAB, tie_embeddings=True, logit_soft_cap=2.0, rngs=nnx.Rngs(1)
    )
    assert model.head is None
    inputs = tokens(2, 6)
    logits, _ = model(inputs)
    hidden, _ = backbone(inputs)
    table = backbone.embed.embedding[...]
    np.testing.assert_allclose(logits, 2.0 * jnp.tanh(hidden @ table.T / 2.0), **FLOAT32)
    assert float(jnp.max(jnp.abs(logits))) < 2.0
    x = backbone.embed(inputs) * 8**0.5  # what the first block reads
    for block in backbone.blocks:
        x, _ = block(x)
    np.testing.assert_allclose(hidden, backbone.final_norm(x), **FLOAT32)

    with pytest.raises(ValueError, match=r"tie_embeddings needs the embedding's vocab_size"):
        LanguageModel(backbone, VOCAB + 1, tie_embeddings=True, rngs=nnx.Rngs(1))
    untied = LanguageModel(backbone, VOCAB, head_bias=False, rngs=nnx.Rngs(1))
    assert untied.head.bias is None
    biased = Backbone(**settings, mlp_bias=True, rngs=nnx.Rngs(0))
    mlp = biased.blocks[0].mlp
    assert mlp.gate_and_up.bias.shape == (2 * 4 * 8,) and mlp.down.bias.shape == (8,)
    without_bias = mlp(x)
    mlp.down.bias[...] = jnp.full((8,), 0.5)
    np.testing.assert_allclose(mlp(x), without_bias + 0.5, **FLOAT32)
    assert Backbone(**settings, rngs=nnx.Rngs(0)).blocks[0].mlp.down.bias is None


def test_hgrn_forget_lower_bound_rises_with_depth():
    backbone = Backbone(d_model=8, num_layers=4, pattern="hgrn", vocab_size=VOCAB, rngs=nnx.Rngs(0))
    bounds = [block.mixer.forget_lower_bound for block in backbone.blocks]
    assert bounds == [0.0, 0.25, 0.5, 0.75]
    fixed = Backbone(
        d_model=8, num_layers=2, pattern="hgrn", vocab_size=VOCAB, rngs=nnx.Rngs(0),
        mixer_options={"hgrn": {"forget_lower_bound": 0.3}},
    )  # fmt: skip
    assert [block.mixer.forget_lower_bound for block in fixed.blocks] == [0.3, 0.3]
