"""Connectionist temporal classification (Graves et al. 2006, "Connectionist Temporal
Classification"): the loss and two decoders over per-frame scores of V classes, one of them
the blank.

An alignment π (one class per frame) reads as the label sequence B(π): repeats merged, then
blanks dropped. p(labels | x) = Σ_{π: B(π) = labels} Π_t y_t[π_t] with y_t = softmax(logits_t).

- ``ctc_loss``: -log p(labels | x), by optax's ``ctc_loss`` (the forward recurrence over the
  blank-extended label sequence).
- ``ctc_greedy_decode``: B(best path), the argmax of each frame.
- ``ctc_prefix_beam_search``: the prefix beam search (Hannun et al. 2014, "First-Pass Large
  Vocabulary Continuous Speech Recognition using Bi-Directional Recurrent DNNs"), which sums
  over alignments: each prefix keeps the probability of its alignments ending in a blank and
  in its last label.

Batches are right-padded: example b holds frames t < logit_lengths[b] and labels
n < label_lengths[b]. Decoded label ids are padded with ``PADDING_LABEL`` (-1). Scores are
float32 whatever the input dtype.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.experimental import checkify

from seqjax.ops import checks
from seqjax.typing import Array

PADDING_LABEL = -1

_optax_ctc_loss = jax.jit(optax.ctc_loss, static_argnames="blank_id")


def ctc_loss(
    logits: Array,
    logit_lengths: Array,
    labels: Array,
    label_lengths: Array,
    *,
    blank: int = 0,
    debug_checks: bool = False,
) -> Array:
    """-log p(labels | logits) of each example.

    Args:
      logits: [B, T, V] unnormalized frame scores (log-probabilities also do), floating point.
      logit_lengths: integer [B] in [1, T].
      labels: integer [B, S], in [0, V) and not ``blank`` at n < label_lengths[b]; any value
        at padding.
      label_lengths: integer [B] in [0, S]. Each example needs at least label_lengths[b] plus
        its number of repeated neighbours (a blank between them) frames.
      blank: the blank class, in [0, V).
      debug_checks: check traced lengths and labels with checkify (seqjax.ops.checks).

    Returns:
      [B] float32.
    """
    op = "ctc_loss"
    logits, logit_lengths = _frames(op, logits, logit_lengths, blank, debug_checks)
    batch, length, classes = logits.shape
    if jnp.ndim(labels) != 2 or jnp.shape(labels)[0] != batch:
        raise ValueError(f"{op}: labels must be [B, S] with B = {batch}, got {jnp.shape(labels)}")
    _integer(op, "labels", labels)
    width = jnp.shape(labels)[1]
    checks.shape(op, "label_lengths", label_lengths, (batch,), "[B]")
    _integer(op, "label_lengths", label_lengths)
    label_lengths = jnp.asarray(label_lengths, jnp.int32)
    checks.in_range(
        op, "label_lengths", label_lengths, low=0, high=width, debug_checks=debug_checks
    )
    valid = jnp.arange(width) < label_lengths[:, None]
    labels = jnp.asarray(labels, jnp.int32)
    checks.in_range(
        op, "labels", jnp.where(valid, labels, 0), low=0, high=classes - 1,
        debug_checks=debug_checks,
    )  # fmt: skip
    _check(
        jnp.all(jnp.where(valid, labels != blank, True)),
        f"{op}: labels must not hold the blank id {blank}", debug_checks,
    )  # fmt: skip
    repeats = jnp.sum(valid[:, 1:] & (labels[:, 1:] == labels[:, :-1]), axis=1)
    short = logit_lengths < label_lengths + repeats
    message = f"{op}: labels are longer than logits allow"
    if not isinstance(short, jax.core.Tracer):
        if bool(jnp.any(short)):
            b = int(jnp.argmax(short))
            raise ValueError(
                f"{message}: example {b} needs {int(label_lengths[b] + repeats[b])} frames "
                f"(label_lengths[{b}] = {int(label_lengths[b])} plus {int(repeats[b])} "
                f"repeated neighbours, a blank between each), logit_lengths[{b}] = "
                f"{int(logit_lengths[b])}"
            )
    elif debug_checks:
        checkify.check(~jnp.any(short), message)
    positions = jnp.arange(length)
    logit_paddings = (positions >= logit_lengths[:, None]).astype(jnp.float32)
    label_paddings = (~valid).astype(jnp.float32)
    return _optax_ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=blank)


def ctc_greedy_decode(
    logits: Array, logit_lengths: Array, *, blank: int = 0, debug_checks: bool = False
) -> tuple[Array, Array]:
    """B(argmax path): each frame's best class, repeats merged, blanks dropped.

    Args: as ``ctc_loss``.

    Returns:
      labels: int32 [B, T], ``PADDING_LABEL`` (-1) after each example's labels.
      lengths: int32 [B].
    """
    op = "ctc_greedy_decode"
    logits, logit_lengths = _frames(op, logits, logit_lengths, blank, debug_checks)
    return _greedy(logits, logit_lengths, blank)


@functools.partial(jax.jit, static_argnums=2)
def _greedy(logits, logit_lengths, blank):
    batch, length, _ = logits.shape
    best = jnp.argmax(logits, axis=2).astype(jnp.int32)
    previous = jnp.pad(best[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    keep = (best != blank) & (best != previous) & (jnp.arange(length) < logit_lengths[:, None])
    slot = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, length)  # length: dropped
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, length))
    labels = jnp.full((batch, length), PADDING_LABEL, jnp.int32)
    labels = labels.at[rows, slot].set(best, mode="drop")
    return labels, jnp.sum(keep, axis=1, dtype=jnp.int32)


def ctc_prefix_beam_search(
    logits: Array,
    logit_lengths: Array,
    *,
    beam_size: int,
    blank: int = 0,
    debug_checks: bool = False,
) -> tuple[Array, Array, Array]:
    """The CTC prefix beam search (Hannun et al. 2014), jittable, one lax.scan over frames.

    Each of ``beam_size`` prefixes ℓ carries log p_b (its alignments so far ending in a
    blank) and log p_nb (ending in its last label). A frame with probabilities y extends:

        ℓ        p_b' = (p_b + p_nb) y[blank],   p_nb' = p_nb y[last(ℓ)]
        ℓ + c    p_nb' = (p_b + p_nb) y[c],  or p_b y[c] when c = last(ℓ)

    an extension that is already in the beam adds to that prefix's p_nb, and the beam_size
    prefixes of highest p_b + p_nb are kept. A beam as large as the number of prefixes
    prunes nothing and finds the most probable label sequence.

    Args:
      logits: [B, T, V] frame scores or log-probabilities (log_softmax is applied).
      logit_lengths: integer [B] in [1, T].
      beam_size: prefixes kept, >= 1.
      blank: the blank class, in [0, V).
      debug_checks: check traced lengths with checkify (seqjax.ops.checks).

    Returns:
      labels: int32 [B, T], the best prefix, ``PADDING_LABEL`` (-1) after it.
      lengths: int32 [B].
      log_probs: [B] float32, log(p_b + p_nb) of the best prefix: the probability of its
        alignments that the search kept, log p(labels | x) when nothing was pruned.
    """
    op = "ctc_prefix_beam_search"
    checks.at_least_one(op, "beam_size", beam_size)
    logits, logit_lengths = _frames(op, logits, logit_lengths, blank, debug_checks)
    return _beam_search(logits, logit_lengths, beam_size, blank)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _beam_search(logits, lengths, beam_size, blank):
    log_probs = jax.nn.log_softmax(logits, axis=2)
    return jax.vmap(lambda y, n: _search_one(y, n, beam_size, blank))(log_probs, lengths)


def _search_one(log_probs, length, beam_size, blank):
    """One example: log_probs [T, V], its length; returns (labels [T], length, log p)."""
    frames, classes = log_probs.shape
    neg_inf = jnp.float32(-jnp.inf)
    symbols = jnp.arange(classes)
    beams = (
        jnp.full((beam_size, frames), PADDING_LABEL, jnp.int32),  # prefixes
        jnp.zeros(beam_size, jnp.int32),  # their lengths
        jnp.full(beam_size, neg_inf).at[0].set(0.0),  # log p_b: only the empty prefix
        jnp.full(beam_size, neg_inf),  # log p_nb
    )

    def step(beams, inputs):
        y, t = inputs
        prefixes, sizes, log_b, log_nb = beams
        last = jnp.where(sizes > 0, prefixes[jnp.arange(beam_size), sizes - 1], PADDING_LABEL)
        total = jnp.logaddexp(log_b, log_nb)
        alive = total > neg_inf
        same_b = total + y[blank]
        same_nb = jnp.where(sizes > 0, log_nb + y[jnp.maximum(last, 0)], neg_inf)
        extend = jnp.where(symbols == last[:, None], log_b[:, None], total[:, None]) + y
        extend = jnp.where(symbols == blank, neg_inf, extend)  # [K, V]
        # parent[k, j]: prefix j is prefix k plus one label, and j is alive.
        kept = jnp.arange(frames) < sizes[:, None, None]
        same_head = jnp.all((prefixes[:, None] == prefixes[None]) | ~kept, axis=2)
        parent = same_head & (sizes[None] == sizes[:, None] + 1) & alive[None]
        merge = parent[:, None, :] & (symbols[None, :, None] == last[None, None, :])  # [K,V,K]
        merged = jax.nn.logsumexp(jnp.where(merge, extend[..., None], neg_inf), axis=(0, 1))
        same_nb = jnp.logaddexp(same_nb, merged)
        extend = jnp.where(jnp.any(merge, axis=2), neg_inf, extend)
        scores = jnp.concatenate([jnp.logaddexp(same_b, same_nb), extend.reshape(-1)])
        _, chosen = lax.top_k(scores, beam_size)
        is_same = chosen < beam_size
        source = jnp.where(is_same, chosen, (chosen - beam_size) // classes)
        symbol = (chosen - beam_size) % classes
        grown = prefixes[source].at[jnp.arange(beam_size), sizes[source]].set(symbol, mode="drop")
        new = (
            jnp.where(is_same[:, None], prefixes[source], grown),
            jnp.where(is_same, sizes[source], sizes[source] + 1),
            jnp.where(is_same, same_b[source], neg_inf),
            jnp.where(is_same, same_nb[source], extend.reshape(-1)[chosen - beam_size]),
        )
        return jax.tree.map(lambda n, o: jnp.where(t < length, n, o), new, beams), None

    beams, _ = lax.scan(step, beams, (log_probs, jnp.arange(frames)))
    prefixes, sizes, log_b, log_nb = beams
    total = jnp.logaddexp(log_b, log_nb)
    best = jnp.argmax(total)
    return prefixes[best], sizes[best], total[best]


def _integer(op, name, x):
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{op}: {name} must be integer, got {dtype}")


def _check(ok, message, debug_checks):
    """Refuses a false ``ok``: at once when concrete, by checkify when traced and asked."""
    if not isinstance(ok, jax.core.Tracer):
        if not bool(ok):
            raise ValueError(message)
    elif debug_checks:
        checkify.check(ok, message)


def _frames(op, logits, logit_lengths, blank, debug_checks):
    """Checked float32 logits [B, T, V] and int32 logit_lengths [B]."""
    checks.floating(op, "logits", logits)
    if jnp.ndim(logits) != 3:
        raise ValueError(f"{op}: logits must be [B, T, V], got shape {jnp.shape(logits)}")
    checks.nonempty(op, "logits", logits)
    batch, length, classes = jnp.shape(logits)
    if not 0 <= blank < classes:
        raise ValueError(f"{op}: blank must be in [0, V) = [0, {classes}), got {blank}")
    checks.shape(op, "logit_lengths", logit_lengths, (batch,), "[B]")
    _integer(op, "logit_lengths", logit_lengths)
    logit_lengths = jnp.asarray(logit_lengths, jnp.int32)
    checks.in_range(
        op, "logit_lengths", logit_lengths, low=1, high=length, debug_checks=debug_checks
    )
    return jnp.asarray(logits, jnp.float32), logit_lengths
