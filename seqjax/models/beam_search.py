"""Beam search over any step function, and greedy decoding as a beam of one.

A hypothesis is complete when it emits ``end_token`` (kept as its last token) or reaches
``max_length`` tokens. Its score is its summed log-probability divided by GNMT's length
penalty ((5 + n) / 6)^α (Wu et al., 2016), n its length with the end token; α = 0 ranks by
log-probability alone.

Each step extends the K alive hypotheses of every example by every token and keeps the 2K
best extensions by log-probability (at most K of them end, so at least K stay alive). Those
of the K best that end join the K best complete hypotheses, so a beam of one is greedy
decoding (fairseq's rule, Ott et al., 2019); the K best that do not end stay alive. The
decoder's state is reordered by the parent beam of each survivor with a gather over the
flattened batch. The loop (``lax.while_loop``) stops once no alive hypothesis can beat the
K-th complete one of any example (log-probabilities only fall as a hypothesis grows, and
the length penalty at most divides them by ((5 + max_length) / 6)^α), or at ``max_length``.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from seqjax.layers.checks import check_size
from seqjax.layers.embeddings import check_token_ids
from seqjax.models.backbone import LanguageModel
from seqjax.models.seq2seq import EncoderDecoder, check_causal, check_source_mask
from seqjax.typing import Array, PyTree

StepFn = Callable[[Array, PyTree], tuple[Array, PyTree]]


class BeamSearchResult(NamedTuple):
    """The K best complete hypotheses of each example, best first.

    sequences [B, K, L] int32 (end_token after a hypothesis's end), scores [B, K] float32
    (-inf marks a slot with no hypothesis), lengths [B, K] int32 (the end token counted).
    ``greedy`` returns the same without the K axis.
    """

    sequences: Array
    scores: Array
    lengths: Array


class _Beams(NamedTuple):
    step: Array
    last_tokens: Array  # [B, K]
    alive_sequences: Array  # [B, K, L]
    alive_log_probs: Array  # [B, K]
    finished_sequences: Array  # [B, K, L]
    finished_scores: Array  # [B, K]
    finished_lengths: Array  # [B, K]
    state: PyTree  # leaves [B * K, ...]


def length_penalty_factor(length: Array, alpha: float) -> Array:
    """GNMT's length penalty ((5 + n) / 6)^α (Wu et al., 2016)."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _gather_beams(x: Array, indices: Array) -> Array:
    """x [B, M, ...] at beams indices [B, K] -> [B, K, ...]."""
    return jax.vmap(lambda row, index: row[index])(x, indices)


def beam_search(
    step_fn: StepFn,
    initial_state: PyTree,
    start_tokens: Array,
    *,
    beam_size: int,
    max_length: int,
    end_token: int,
    length_penalty: float = 0.0,
) -> BeamSearchResult:
    """Beam search; see the module docstring. Jittable (step_fn traced once).

    Args:
      step_fn: (tokens [B * K] int32, state) -> (log-probabilities [B * K, V], state); row
        b * K + k is beam k of example b. Log-probabilities must be <= 0 (a log-softmax).
      initial_state: the state before the first token, every leaf batch first [B, ...];
        each example's state is repeated for its K beams.
      start_tokens: [B] integers, the token the first step reads.
      beam_size: K >= 1.
      max_length: L >= 1, the most tokens a hypothesis has.
      end_token: the id that completes a hypothesis, in [0, V).
      length_penalty: α >= 0 of the length penalty.

    Returns:
      A BeamSearchResult with sequences [B, K, L].
    """
    check_size("beam_size", beam_size)
    check_size("max_length", max_length)
    check_size("end_token", end_token, minimum=0)
    length_penalty = float(length_penalty)
    if not (math.isfinite(length_penalty) and length_penalty >= 0):
        raise ValueError(f"length_penalty must be a finite number >= 0, got {length_penalty}")
    if (
        not jnp.issubdtype(jnp.result_type(start_tokens), jnp.integer)
        or jnp.ndim(start_tokens) != 1
    ):
        raise ValueError(
            f"start_tokens must be integer ids [B], got {jnp.result_type(start_tokens)} of "
            f"shape {jnp.shape(start_tokens)}"
        )
    batch, num_beams = jnp.shape(start_tokens)[0], beam_size
    for path, leaf in jax.tree_util.tree_leaves_with_path(initial_state):
        if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != batch:
            raise ValueError(
                f"initial_state leaf {jax.tree_util.keystr(path)} must be batch first with "
                f"B = {batch} (start_tokens' length), got shape {jnp.shape(leaf)}"
            )

    def step(beams: _Beams) -> _Beams:
        log_probs, state = step_fn(beams.last_tokens.reshape(-1), beams.state)
        if jnp.ndim(log_probs) != 2 or jnp.shape(log_probs)[0] != batch * num_beams:
            raise ValueError(
                f"step_fn must return log-probabilities [B * K, V] = [{batch * num_beams}, V], "
                f"got shape {jnp.shape(log_probs)}"
            )
        vocab = jnp.shape(log_probs)[1]
        if end_token >= vocab:
            raise ValueError(f"end_token must be in [0, {vocab}), got {end_token}")
        candidates = beams.alive_log_probs[:, :, None] + log_probs.reshape(batch, num_beams, vocab)
        top_log_probs, top_indices = lax.top_k(
            candidates.astype(jnp.float32).reshape(batch, num_beams * vocab),
            min(2 * num_beams, num_beams * vocab),
        )
        parents, tokens = top_indices // vocab, (top_indices % vocab).astype(jnp.int32)
        sequences = _gather_beams(beams.alive_sequences, parents)
        sequences = sequences.at[:, :, beams.step].set(tokens)
        ends = (tokens == end_token) | (beams.step == max_length - 1)
        completes = ends & (jnp.arange(tokens.shape[1]) < num_beams)
        ended_scores = jnp.where(
            completes,
            top_log_probs / length_penalty_factor(beams.step + 1, length_penalty),
            -jnp.inf,
        )
        pool_scores = jnp.concatenate([beams.finished_scores, ended_scores], axis=1)
        pool_sequences = jnp.concatenate([beams.finished_sequences, sequences], axis=1)
        pool_lengths = jnp.concatenate(
            [beams.finished_lengths, jnp.full(tokens.shape, beams.step + 1, jnp.int32)], axis=1
        )
        finished_scores, kept = lax.top_k(pool_scores, num_beams)

        alive_log_probs, survivors = lax.top_k(jnp.where(ends, -jnp.inf, top_log_probs), num_beams)
        rows = jnp.arange(batch)[:, None] * num_beams + _gather_beams(parents, survivors)
        return _Beams(
            step=beams.step + 1,
            last_tokens=_gather_beams(tokens, survivors),
            alive_sequences=_gather_beams(sequences, survivors),
            alive_log_probs=alive_log_probs,
            finished_sequences=_gather_beams(pool_sequences, kept),
            finished_scores=finished_scores,
            finished_lengths=_gather_beams(pool_lengths, kept),
            state=jax.tree.map(lambda leaf: leaf[rows.reshape(-1)], state),
        )

    best_factor = length_penalty_factor(max_length, length_penalty)

    def running(beams: _Beams) -> Array:
        can_improve = beams.alive_log_probs[:, 0] / best_factor > beams.finished_scores[:, -1]
        return (beams.step < max_length) & jnp.any(can_improve)

    empty = jnp.full((batch, num_beams, max_length), end_token, jnp.int32)
    initial = _Beams(
        step=jnp.zeros((), jnp.int32),
        last_tokens=jnp.repeat(jnp.asarray(start_tokens, jnp.int32)[:, None], num_beams, axis=1),
        alive_sequences=empty,
        # Only beam 0 is alive at first, so the first step does not repeat one extension K times.
        alive_log_probs=jnp.where(jnp.arange(num_beams) == 0, 0.0, -jnp.inf)
        * jnp.ones((batch, 1), jnp.float32),
        finished_sequences=empty,
        finished_scores=jnp.full((batch, num_beams), -jnp.inf, jnp.float32),
        finished_lengths=jnp.zeros((batch, num_beams), jnp.int32),
        state=jax.tree.map(lambda leaf: jnp.repeat(leaf, num_beams, axis=0), initial_state),
    )
    final = lax.while_loop(running, step, initial)
    found = jnp.isfinite(final.finished_scores)
    positions = jnp.arange(max_length)
    inside = found[:, :, None] & (positions < final.finished_lengths[:, :, None])
    return BeamSearchResult(
        sequences=jnp.where(inside, final.finished_sequences, end_token),
        scores=final.finished_scores,
        lengths=jnp.where(found, final.finished_lengths, 0),
    )


def greedy(
    step_fn: StepFn, initial_state: PyTree, start_tokens: Array, *, max_length: int, end_token: int
) -> BeamSearchResult:
    """Greedy decoding, the beam search of one beam: sequences [B, L], scores and lengths [B]."""
    result = beam_search(
        step_fn,
        initial_state,
        start_tokens,
        beam_size=1,
        max_length=max_length,
        end_token=end_token,
    )
    return BeamSearchResult(*(x[:, 0] for x in result))


def _check_search(beam_size: int, max_length: int, end_token: int, vocab_size: int) -> None:
    check_size("beam_size", beam_size)
    check_size("max_length", max_length)
    if not isinstance(end_token, int) or not 0 <= end_token < vocab_size:
        raise ValueError(f"end_token must be a token id in [0, {vocab_size}), got {end_token!r}")


def _check_context(limit: int | None, total: int, what: str) -> None:
    if limit is not None and total > limit:
        raise ValueError(
            f"{what} is {total} tokens, more than the attention cache holds ({limit}); "
            "raise the attention option cache_length"
        )


@functools.partial(jax.jit, static_argnames=("graphdef", "search"))
def _language_model_search(graphdef, params, prompt, *, search):
    model = nnx.merge(graphdef, params)
    batch = prompt.shape[0]
    state = model.init_state(batch)
    if prompt.shape[1] > 1:
        _, state = model(prompt[:, :-1], state=state)

    def step_fn(tokens, state):
        logits, state = model(tokens[:, None], state=state)
        return jax.nn.log_softmax(logits[:, -1]), state

    return beam_search(step_fn, state, prompt[:, -1], **dict(search))


def language_model_beam_search(
    model: LanguageModel,
    prompt: Array,
    *,
    beam_size: int,
    max_new_tokens: int,
    end_token: int,
    length_penalty: float = 0.0,
) -> BeamSearchResult:
    """The K best continuations [B, K, max_new_tokens] of ``prompt`` [B, P] by a causal
    language model: a parallel prefill over the prompt, then beam search with its state."""
    prompt = jnp.asarray(prompt)
    check_token_ids(prompt, model.vocab_size, "prompt")
    _check_search(beam_size, max_new_tokens, end_token, model.vocab_size)
    check_causal(model.backbone, "language model")
    _check_context(
        model.backbone.context_limit,
        prompt.shape[1] + max_new_tokens,
        "prompt plus max_new_tokens",
    )
    search = dict(
        beam_size=beam_size,
        max_length=max_new_tokens,
        end_token=end_token,
        length_penalty=float(length_penalty),
    )
    graphdef, params = nnx.split(model)
    return _language_model_search(
        graphdef, params, prompt.astype(jnp.int32), search=tuple(sorted(search.items()))
    )


@functools.partial(jax.jit, static_argnames=("graphdef", "search"))
def _encoder_decoder_search(graphdef, params, source, source_mask, start_tokens, *, search):
    model = nnx.merge(graphdef, params)
    search = dict(search)
    memory = model.encode(source, source_mask)
    # Row b * K + k decodes beam k of example b; the memory of example b serves all its beams.
    memory = jax.tree.map(lambda x: jnp.repeat(x, search["beam_size"], axis=0), memory)

    def step_fn(tokens, state):
        logits, state = model.decode(tokens[:, None], memory, state=state)
        return jax.nn.log_softmax(logits[:, -1]), state

    return beam_search(step_fn, model.init_state(source.shape[0]), start_tokens, **search)


def encoder_decoder_beam_search(
    model: EncoderDecoder,
    source: Array,
    source_mask: Array | None = None,
    *,
    start_token: int,
    end_token: int,
    beam_size: int,
    max_length: int,
    length_penalty: float = 0.0,
) -> BeamSearchResult:
    """The K best targets [B, K, max_length] for source ids [B, S] (``source_mask`` bool
    [B, S], right padding False): the source encoded once, then beam search from
    ``start_token`` with the decoder's carried state. ``beam_size=1`` is greedy decoding."""
    source = jnp.asarray(source)
    check_token_ids(source, model.source_vocab_size, "source")
    if source_mask is None:
        source_mask = jnp.ones(source.shape, bool)
    source_mask = jnp.asarray(source_mask)
    check_source_mask(source_mask, source.shape)
    _check_search(beam_size, max_length, end_token, model.target_vocab_size)
    if not isinstance(start_token, int) or not 0 <= start_token < model.target_vocab_size:
        raise ValueError(
            f"start_token must be a token id in [0, {model.target_vocab_size}), got {start_token!r}"
        )
    check_causal(model.decoder, "decoder")
    _check_context(model.context_limit, max_length, "max_length")
    search = dict(
        beam_size=beam_size,
        max_length=max_length,
        end_token=end_token,
        length_penalty=float(length_penalty),
    )
    graphdef, params = nnx.split(model)
    start_tokens = jnp.full((source.shape[0],), start_token, jnp.int32)
    return _encoder_decoder_search(
        graphdef,
        params,
        source.astype(jnp.int32),
        source_mask,
        start_tokens,
        search=tuple(sorted(search.items())),
    )
