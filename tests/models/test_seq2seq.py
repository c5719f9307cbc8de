"""The encoder–decoder: cross-attention equal to NumPy forms of its equations, decoding with
the carried state equal to re-running the decoder, teacher-forced logits that see targets
up to t and the whole unpadded source only, beam search over it, and clear input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tolerances import FLOAT32

from seqjax.layers.cross_attention import AdditiveAttention, DotProductCrossAttention
from seqjax.models import EncoderDecoder, encoder_decoder_beam_search

SOURCE_VOCAB, TARGET_VOCAB, D = 13, 11, 16
STACK = dict(
    pattern="gru,attention",
    num_layers=2,
    mixer_options={"attention": dict(num_heads=2, cache_length=16)},
    mlp_expansion=2,
)


class WholeSegmentMixer(nnx.Module):
    """Stands for a mixer with no state, as a bidirectional one is."""

    def init_state(self, batch_size):
        raise ValueError("a bidirectional mixer cannot run step by step")


def encoder_decoder(cross_attention="dot_product", **options):
    return EncoderDecoder(
        source_vocab_size=SOURCE_VOCAB,
        target_vocab_size=TARGET_VOCAB,
        d_model=D,
        encoder=STACK,
        decoder=STACK,
        cross_attention=cross_attention,
        cross_attention_options=options,
        rngs=nnx.Rngs(0),
    )


@pytest.fixture(scope="module", params=["dot_product", "additive"])
def model(request):
    options = dict(num_heads=2) if request.param == "dot_product" else dict(attention_size=8)
    return encoder_decoder(request.param, **options)


@nnx.jit
def encode(model, source, source_mask):
    return model.encode(source, source_mask)


@nnx.jit
def decode(model, targets, memory, state=None):
    return model.decode(targets, memory, state=state)


@nnx.jit
def teacher_forced(model, source, source_mask, targets):
    return model(source, source_mask, targets)


def source_and_mask(seed=0):
    source = jax.random.randint(jax.random.key(seed), (2, 6), 0, SOURCE_VOCAB)
    return source, jnp.arange(6)[None] < jnp.array([[6], [4]])


def test_cross_attention_equals_its_equations_in_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, D)).astype(np.float32)
    encoded = rng.normal(size=(2, 5, D)).astype(np.float32)
    mask = np.array([[True] * 5, [True, True, False, False, False]])

    def softmax(scores):  # over s, the last axis of scores [B, ..., S]
        allowed = mask.reshape(2, *[1] * (scores.ndim - 2), 5)
        scores = np.where(allowed, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        return weights / weights.sum(-1, keepdims=True)

    dot = DotProductCrossAttention(D, num_heads=2, rngs=nnx.Rngs(2))
    w_q, w_kv, w_o = (np.asarray(p.kernel[...]) for p in (dot.query, dot.key_value, dot.output))
    q = (x @ w_q).reshape(2, 3, 2, 8)
    k, v = np.split((encoded @ w_kv).reshape(2, 5, 4, 8), 2, axis=2)
    weights = softmax(np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(8))
    expected = np.einsum("bhts,bshk->bthk", weights, v).reshape(2, 3, D) @ w_o
    actual = dot(jnp.asarray(x), dot.memory(jnp.asarray(encoded)), jnp.asarray(mask))
    np.testing.assert_allclose(actual, expected, **FLOAT32)

    additive = AdditiveAttention(D, attention_size=6, rngs=nnx.Rngs(3))
    w, u, w_o = (np.asarray(p.kernel[...]) for p in (additive.query, additive.key, additive.output))
    score_vector = np.asarray(additive.score_vector[...])
    # e_{t,s} = vᵀ tanh(W x_t + U h_s), α = softmax_s(e), o_t = W_o Σ_s α_{t,s} h_s
    scores = np.tanh((x @ w)[:, :, None] + (encoded @ u)[:, None]) @ score_vector
    expected = np.einsum("bts,bsd->btd", softmax(scores), encoded) @ w_o
    actual = additive(jnp.asarray(x), additive.memory(jnp.asarray(encoded)), jnp.asarray(mask))
    np.testing.assert_allclose(actual, expected, **FLOAT32)

    # A source with no true position reads nothing.
    empty = jnp.zeros((2, 5), bool)
    for layer in (dot, additive):
        read = layer(jnp.asarray(x), layer.memory(jnp.asarray(encoded)), empty)
        np.testing.assert_array_equal(read, 0.0)


def test_decoding_with_the_carried_state_equals_rerunning_the_prefix(model):
    source, mask = source_and_mask()
    targets = jax.random.randint(jax.random.key(1), (2, 4), 0, TARGET_VOCAB)
    memory = encode(model, source, mask)
    state = model.init_state(2)
    for t in range(4):
        step_logits, state = decode(model, targets[:, t : t + 1], memory, state)
        prefix_logits, _ = decode(model, targets[:, : t + 1], memory)
        np.testing.assert_allclose(step_logits[:, 0], prefix_logits[:, -1], **FLOAT32)
    np.testing.assert_allclose(
        teacher_forced(model, source, mask, targets)[:, -1], step_logits[:, 0], **FLOAT32
    )


def test_teacher_forced_logits_see_targets_up_to_t_and_the_unpadded_source(model):
    # One example with distinct token ids, so each embedding row belongs to one position.
    source, mask = jnp.arange(1, 7)[None], jnp.arange(6)[None] < 4
    targets = jnp.arange(2, 7)[None]
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def embedding_jacobians(params, source, mask, targets):
        def position_sums(params):  # [T]: the logits at each target position, summed
            return jnp.sum(nnx.merge(graphdef, params, rest)(source, mask, targets)[0], -1)

        jacobian = jax.jacrev(position_sums)(params)
        source_rows = jacobian["encoder"]["embed"]["embedding"][...][:, source[0]]
        target_rows = jacobian["decoder"]["embed"]["embedding"][...][:, targets[0]]
        return jnp.abs(source_rows).sum(-1), jnp.abs(target_rows).sum(-1)  # [T, S], [T, T]

    source_rows, target_rows = map(np.asarray, embedding_jacobians(params, source, mask, targets))
    assert np.all(source_rows[:, :4] > 0), "every true source token reaches every position"
    np.testing.assert_array_equal(source_rows[:, 4:], 0.0)  # padding reaches nothing
    causal = np.tril(np.ones((5, 5), bool))
    assert np.all(target_rows[causal] > 0)
    np.testing.assert_array_equal(target_rows[~causal], 0.0)


def test_a_padded_batch_equals_its_examples_run_alone(model):
    source, mask = source_and_mask(3)
    targets = jax.random.randint(jax.random.key(4), (2, 5), 0, TARGET_VOCAB)
    batched = teacher_forced(model, source, mask, targets)
    alone = teacher_forced(model, source[1:, :4], None, targets[1:])
    np.testing.assert_allclose(batched[1:], alone, **FLOAT32)
    # Other tokens in the padding change nothing.
    repadded = source.at[1, 4:].set(0)
    np.testing.assert_array_equal(teacher_forced(model, repadded, mask, targets), batched)


def test_beam_search_scores_are_the_models_and_beam_one_is_greedy(model):
    source, mask = source_and_mask(5)
    options = dict(start_token=0, end_token=1, max_length=6)
    beams = encoder_decoder_beam_search(model, source, mask, beam_size=3, **options)
    single = encoder_decoder_beam_search(model, source, mask, beam_size=1, **options)
    assert beams.sequences.shape == (2, 3, 6) and single.sequences.shape == (2, 1, 6)
    # Teacher-forced over [start] + hypothesis, the 6 beams and the 2 greedy rows at once.
    hypotheses = np.concatenate([np.reshape(beams.sequences, (6, 6)), single.sequences[:, 0]])
    lengths = np.concatenate([np.reshape(beams.lengths, 6), single.lengths[:, 0]])
    rows = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    inputs = np.concatenate([np.zeros((8, 1), np.int32), hypotheses[:, :-1]], axis=1)
    log_probs = jax.nn.log_softmax(
        teacher_forced(model, source[rows], mask[rows], jnp.asarray(inputs))
    )
    log_probs = np.asarray(log_probs)
    inside = np.arange(6) < lengths[:, None]
    chosen = np.take_along_axis(log_probs, hypotheses[..., None], axis=2)[..., 0]
    totals = np.sum(np.where(inside, chosen, 0.0), axis=1)
    np.testing.assert_allclose(np.reshape(beams.scores, 6), totals[:6], **FLOAT32)
    np.testing.assert_allclose(single.scores[:, 0], totals[6:], **FLOAT32)
    np.testing.assert_array_equal(
        np.where(inside, hypotheses, -1)[6:], np.where(inside, log_probs.argmax(-1), -1)[6:]
    )
    assert np.all(beams.scores[:, 0] >= single.scores[:, 0] - 1e-6)


def test_bad_inputs_are_named():
    model = encoder_decoder(num_heads=2)
    source, mask = source_and_mask()
    targets = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(ValueError, match="source_mask must be boolean"):
        model(source, mask.astype(jnp.int32), targets)
    with pytest.raises(ValueError, match=r"source_mask must be \[B, S\] = \(2, 6\)"):
        model(source, mask[:, :5], targets)
    with pytest.raises(ValueError, match=r"right padding .* rows \[1\]"):
        model(source, mask.at[1, 5].set(True), targets)
    with pytest.raises(ValueError, match=r"target_inputs must be token ids in \[0, 11\)"):
        model(source, mask, targets + TARGET_VOCAB)
    with pytest.raises(ValueError, match="x .* and the encoder memory must share B"):
        model.decode(targets[:1], model.encode(source, mask))
    with pytest.raises(ValueError, match="state must hold 2 block states, got 1"):
        model.decode(targets, model.encode(source, mask), state=(None,))
    with pytest.raises(ValueError, match="encoder has unknown key.* mixer;"):
        EncoderDecoder(
            source_vocab_size=5, target_vocab_size=5, d_model=D, rngs=nnx.Rngs(0),
            encoder=dict(mixer="gru", num_layers=1), decoder=dict(pattern="gru", num_layers=1),
        )  # fmt: skip
    with pytest.raises(ValueError, match="decoder must give num_layers"):
        EncoderDecoder(
            source_vocab_size=5, target_vocab_size=5, d_model=D, rngs=nnx.Rngs(0),
            encoder=dict(pattern="gru", num_layers=1), decoder=dict(pattern="gru"),
        )  # fmt: skip
    with pytest.raises(ValueError, match="cross_attention must be one of"):
        encoder_decoder("luong")
    with pytest.raises(ValueError, match="'additive' got unknown option.* num_heads"):
        encoder_decoder("additive", num_heads=2)
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide d_model \(16\)"):
        encoder_decoder(num_heads=3)
    options = dict(start_token=0, end_token=1, beam_size=2)
    with pytest.raises(ValueError, match=r"start_token must be a token id in \[0, 11\)"):
        encoder_decoder_beam_search(
            model, source, mask, max_length=4, **{**options, "start_token": 11}
        )
    with pytest.raises(ValueError, match="max_length is 17 tokens, more than the attention cache"):
        encoder_decoder_beam_search(model, source, mask, max_length=17, **options)
    # A decoder mixer with no state (a bidirectional one) cannot decode one token at a time.
    model.decoder.blocks[1].mixer = WholeSegmentMixer()
    with pytest.raises(ValueError, match=r"decoder block 1 \(WholeSegmentMixer\) cannot decode"):
        encoder_decoder_beam_search(model, source, mask, max_length=4, **options)


def test_remat_recomputes_both_stacks_without_changing_the_gradient():
    def loss_and_grads(remat):
        model = EncoderDecoder(
            source_vocab_size=SOURCE_VOCAB,
            target_vocab_size=TARGET_VOCAB,
            d_model=8,
            encoder=dict(pattern="gru", num_layers=1, bidirectional=True),
            decoder=dict(pattern="gru", num_layers=1),
            cross_attention="final",
            remat=remat,
            rngs=nnx.Rngs(0),
        )
        source = jnp.arange(10).reshape(2, 5) % SOURCE_VOCAB
        targets = jnp.arange(8).reshape(2, 4) % TARGET_VOCAB

        def loss(model, source, targets):
            return jnp.sum(model(source, None, targets) ** 2)

        graph = jax.make_jaxpr(nnx.grad(loss))(model, source, targets)
        return nnx.jit(nnx.value_and_grad(loss))(model, source, targets), str(graph)

    (value, grads), graph = loss_and_grads("none")
    (remat_value, remat_grads), remat_graph = loss_and_grads("full")
    assert "remat" in remat_graph and "remat" not in graph
    np.testing.assert_allclose(remat_value, value, **FLOAT32)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **FLOAT32), remat_grads, grads)
