"""Beam search: equal to exhaustive search when the beam holds every prefix, to a plain list
implementation at small beams, greedy as a beam of one, the state reordered with the beams
(a scoring function whose state is the whole prefix), and clear input errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tolerances import FLOAT32

from seqjax.models import (
    Backbone,
    LanguageModel,
    beam_search,
    greedy,
    language_model_beam_search,
)

VOCAB, HIDDEN, MAX_LENGTH, END = 4, 5, 4, 2
BATCH = 3

_rng = np.random.default_rng(0)
EMBED = _rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32)
RECURRENT = _rng.normal(size=(HIDDEN, HIDDEN)).astype(np.float32)
OUTPUT = 2.0 * _rng.normal(size=(HIDDEN, VOCAB)).astype(np.float32)
INITIAL = _rng.normal(size=(BATCH, HIDDEN)).astype(np.float32)
START = np.array([0, 1, 3])


def step_fn(tokens, state):
    """A fixed random recurrent scorer: h' = tanh(h W + E[token]), log_softmax(h' O)."""
    hidden = jnp.tanh(state["hidden"] @ RECURRENT + jnp.asarray(EMBED)[tokens])
    return jax.nn.log_softmax(hidden @ OUTPUT), {"hidden": hidden}


def numpy_step(token, hidden):
    hidden = np.tanh(hidden.astype(np.float64) @ RECURRENT + EMBED[token])
    logits = hidden @ OUTPUT
    return logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max(), hidden


def penalty(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


def exhaustive(example, alpha):
    """Every complete hypothesis (ends with END, or reaches MAX_LENGTH) and its score."""
    hypotheses = []

    def extend(prefix, log_prob, token, hidden):
        log_probs, hidden = numpy_step(token, hidden)
        for next_token in range(VOCAB):
            sequence, total = (*prefix, next_token), log_prob + log_probs[next_token]
            if next_token == END or len(sequence) == MAX_LENGTH:
                hypotheses.append((total / penalty(len(sequence), alpha), sequence))
            else:
                extend(sequence, total, next_token, hidden)

    extend((), 0.0, START[example], INITIAL[example])
    return sorted(hypotheses, key=lambda h: -h[0])


def list_beam_search(example, beam_size, alpha):
    """Beam search written over Python lists, for every step up to MAX_LENGTH."""
    alive, finished = [(0.0, (), START[example], INITIAL[example])], []
    for step in range(MAX_LENGTH):
        extensions = []
        for log_prob, sequence, token, hidden in alive:
            log_probs, next_hidden = numpy_step(token, hidden)
            extensions += [
                (log_prob + log_probs[t], (*sequence, t), t, next_hidden) for t in range(VOCAB)
            ]
        extensions = sorted(extensions, key=lambda e: -e[0])[: 2 * beam_size]
        ends = [e for e in extensions[:beam_size] if e[2] == END or step == MAX_LENGTH - 1]
        finished += [(e[0] / penalty(len(e[1]), alpha), e[1]) for e in ends]
        finished = sorted(finished, key=lambda h: -h[0])[:beam_size]
        alive = [e for e in extensions if not (e[2] == END or step == MAX_LENGTH - 1)]
        alive = alive[:beam_size]
    return finished


@functools.partial(jax.jit, static_argnames=("beam_size", "alpha"))
def search(beam_size, alpha):
    return beam_search(
        step_fn,
        {"hidden": jnp.asarray(INITIAL)},
        jnp.asarray(START),
        beam_size=beam_size,
        max_length=MAX_LENGTH,
        end_token=END,
        length_penalty=alpha,
    )


def assert_hypotheses(result, example, expected):
    for k, (score, sequence) in enumerate(expected):
        padded = list(sequence) + [END] * (MAX_LENGTH - len(sequence))
        np.testing.assert_array_equal(result.sequences[example, k], padded)
        assert int(result.lengths[example, k]) == len(sequence)
        np.testing.assert_allclose(result.scores[example, k], score, **FLOAT32)


@pytest.mark.parametrize("alpha", [0.0, 0.8])
def test_a_beam_holding_every_prefix_equals_exhaustive_search(alpha):
    # Before the last step a step has at most 9 prefixes that have not ended, so 36
    # extensions: a beam of 36 never drops a hypothesis that could be among the best 36.
    beam_size = VOCAB * (VOCAB - 1) ** (MAX_LENGTH - 2)
    result = search(beam_size, alpha)
    assert result.sequences.shape == (BATCH, beam_size, MAX_LENGTH)
    for example in range(BATCH):
        everything = exhaustive(example, alpha)
        assert len(everything) == 1 + 3 + 9 + 27 * VOCAB
        assert_hypotheses(result, example, everything[:beam_size])


@pytest.mark.parametrize("beam_size, alpha", [(2, 0.0), (3, 0.0), (3, 1.5)])
def test_small_beams_equal_a_list_implementation(beam_size, alpha):
    result = search(beam_size, alpha)
    for example in range(BATCH):
        expected = list_beam_search(example, beam_size, alpha)
        assert len(expected) == beam_size
        assert_hypotheses(result, example, expected)


def test_a_beam_of_one_is_greedy_argmax_decoding():
    result = jax.jit(
        lambda: greedy(
            step_fn,
            {"hidden": jnp.asarray(INITIAL)},
            jnp.asarray(START),
            max_length=MAX_LENGTH,
            end_token=END,
        )
    )()
    assert result.sequences.shape == (BATCH, MAX_LENGTH)
    lengths = set()
    for example in range(BATCH):
        token, hidden, total, sequence = START[example], INITIAL[example], 0.0, []
        while len(sequence) < MAX_LENGTH and (not sequence or sequence[-1] != END):
            log_probs, hidden = numpy_step(token, hidden)
            token = int(np.argmax(log_probs))
            total += log_probs[token]
            sequence.append(token)
        lengths.add(len(sequence))
        padded = sequence + [END] * (MAX_LENGTH - len(sequence))
        np.testing.assert_array_equal(result.sequences[example], padded)
        assert int(result.lengths[example]) == len(sequence)
        np.testing.assert_allclose(result.scores[example], total, **FLOAT32)
    assert min(lengths) < MAX_LENGTH  # the end token's rule is exercised
    searched = search(1, 0.0)
    np.testing.assert_array_equal(searched.sequences[:, 0], result.sequences)


def test_slots_without_a_hypothesis_score_minus_infinity():
    # With max_length 1 there are only VOCAB hypotheses for a beam of 6.
    result = beam_search(
        step_fn,
        {"hidden": jnp.asarray(INITIAL)},
        jnp.asarray(START),
        beam_size=6,
        max_length=1,
        end_token=END,
    )
    assert np.all(np.isfinite(result.scores[:, :VOCAB]))
    assert np.all(result.scores[:, VOCAB:] == -np.inf)
    np.testing.assert_array_equal(result.lengths[:, VOCAB:], 0)
    np.testing.assert_array_equal(
        np.sort(result.sequences[:, :VOCAB, 0], axis=1), [[0, 1, 2, 3]] * 3
    )


class WholeSegmentMixer(nnx.Module):
    """Stands for a mixer with no state, as a bidirectional one is."""

    def init_state(self, batch_size):
        raise ValueError("a bidirectional mixer cannot run step by step")


def language_model():
    backbone = Backbone(
        d_model=16,
        num_layers=2,
        pattern="gru,attention",
        vocab_size=7,
        mlp_expansion=2,
        mixer_options={"attention": dict(num_heads=2, cache_length=16)},
        rngs=nnx.Rngs(0),
    )
    return LanguageModel(backbone, 7, rngs=nnx.Rngs(1))


@nnx.jit
def lm_log_probs(model, tokens):
    logits, _ = model(tokens)
    return jax.nn.log_softmax(logits)


def test_language_model_beams_score_their_continuations_and_beam_one_is_greedy():
    model = language_model()
    prompt = np.asarray(jax.random.randint(jax.random.key(2), (2, 4), 0, 7))
    beams = language_model_beam_search(
        model, prompt, beam_size=3, max_new_tokens=5, end_token=5, length_penalty=0.5
    )
    single = language_model_beam_search(model, prompt, beam_size=1, max_new_tokens=5, end_token=5)
    assert beams.sequences.shape == (2, 3, 5) and single.sequences.shape == (2, 1, 5)
    # The whole model run once over prompt + continuation, for the 6 beams and the 2 greedy
    # rows (tokens after an end are padding that a causal model's earlier outputs ignore).
    continuations = np.concatenate([np.reshape(beams.sequences, (6, 5)), single.sequences[:, 0]])
    prompts = np.concatenate([np.repeat(prompt, 3, axis=0), prompt])
    full = np.concatenate([prompts, continuations], axis=1)
    log_probs = np.asarray(lm_log_probs(model, jnp.asarray(full[:, :-1])))[:, 3:]
    lengths = np.concatenate([np.reshape(beams.lengths, 6), single.lengths[:, 0]])
    inside = np.arange(5) < lengths[:, None]
    assert lengths.min() < 5  # some hypotheses end early

    # Each beam's score is its log-probability under the whole model, length-penalized.
    chosen = np.take_along_axis(log_probs, continuations[..., None], axis=2)[..., 0]
    totals = np.sum(np.where(inside, chosen, 0.0), axis=1)
    np.testing.assert_allclose(
        np.reshape(beams.scores, 6), totals[:6] / penalty(lengths[:6], 0.5), **FLOAT32
    )
    assert np.all(np.diff(np.asarray(beams.scores), axis=1) <= 0)
    # A beam of one picks the argmax of the whole model at every step, as generate does.
    np.testing.assert_array_equal(
        np.where(inside, continuations, -1)[6:], np.where(inside, log_probs.argmax(-1), -1)[6:]
    )


def test_bad_inputs_are_named():
    state, start = {"hidden": jnp.asarray(INITIAL)}, jnp.asarray(START)
    options = dict(beam_size=2, max_length=3, end_token=END)
    with pytest.raises(ValueError, match="beam_size must be an integer >= 1"):
        beam_search(step_fn, state, start, **{**options, "beam_size": 0})
    with pytest.raises(ValueError, match="max_length must be an integer >= 1"):
        beam_search(step_fn, state, start, **{**options, "max_length": 0})
    with pytest.raises(ValueError, match=r"end_token must be in \[0, 4\)"):
        beam_search(step_fn, state, start, **{**options, "end_token": 4})
    with pytest.raises(ValueError, match="length_penalty must be a finite number >= 0"):
        beam_search(step_fn, state, start, **options, length_penalty=-1.0)
    with pytest.raises(ValueError, match="start_tokens must be integer ids"):
        beam_search(step_fn, state, start.astype(jnp.float32), **options)
    with pytest.raises(ValueError, match=r"initial_state leaf \['hidden'\] must be batch first"):
        beam_search(step_fn, {"hidden": jnp.asarray(INITIAL[:2])}, start, **options)
    with pytest.raises(ValueError, match=r"step_fn must return log-probabilities \[B \* K, V\]"):
        beam_search(lambda t, s: (step_fn(t, s)[0][:1], s), state, start, **options)

    model = language_model()
    prompt = jnp.zeros((1, 3), jnp.int32)
    with pytest.raises(ValueError, match=r"end_token must be a token id in \[0, 7\)"):
        language_model_beam_search(model, prompt, beam_size=2, max_new_tokens=3, end_token=7)
    with pytest.raises(ValueError, match="more than the attention cache holds"):
        language_model_beam_search(model, prompt, beam_size=2, max_new_tokens=14, end_token=1)
    model.backbone.blocks[0].mixer = WholeSegmentMixer()
    with pytest.raises(ValueError, match="language model block 0 .* cannot decode one token"):
        language_model_beam_search(model, prompt, beam_size=2, max_new_tokens=3, end_token=1)
