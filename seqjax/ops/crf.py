"""Linear-chain conditional random field (Lafferty, McCallum and Pereira 2001, "Conditional
Random Fields"), the output layer of the BiLSTM-CRF tagger (Lample et al. 2016).

A tag sequence y of an example of length n scores

    s(y) = start[y_0] + Σ_{t<n} emissions[t, y_t] + Σ_{0<t<n} transitions[y_{t-1}, y_t]
           + end[y_{n-1}]

and log p(y | x) = s(y) - log Z, with log Z the logsumexp of s over all L^n sequences, by
the forward algorithm in log space:

    α_0 = start + emissions_0
    α_t[j] = logsumexp_i(α_{t-1}[i] + transitions[i, j]) + emissions_t[j]
    log Z = logsumexp_j(α_{n-1}[j] + end[j])

Viterbi decoding is the same recurrence with max for logsumexp, and back-pointers.

Batches are right-padded: example b holds the positions t < lengths[b] (or a mask that is a
run of ones followed by zeros). A padding position carries α (and the Viterbi scores)
unchanged, so a padded example equals the example alone. All sums are in float32 (float64 for
float64 inputs) whatever the input dtype; time runs in a lax.scan.
"""

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import checkify

from seqjax.ops import checks
from seqjax.typing import Array

PADDING_TAG = -1


def crf_log_likelihood(
    emissions: Array,
    tags: Array,
    transitions: Array,
    *,
    lengths: Array | None = None,
    mask: Array | None = None,
    start_transitions: Array | None = None,
    end_transitions: Array | None = None,
    debug_checks: bool = False,
) -> Array:
    """log p(tags | emissions) of each example under a linear-chain CRF.

    Args:
      emissions: per-position tag scores [B, T, L], floating point.
      tags: integer [B, T], in [0, L) at the positions t < lengths[b]; any value at padding.
      transitions: [L, L], ``transitions[i, j]`` scores tag i followed by tag j.
      lengths: integer [B] in [1, T], or None (every example has T positions).
      mask: bool or integer [B, T], right-padded (ones then zeros), instead of lengths.
      start_transitions, end_transitions: [L] scores of the first and last tag, or None (0).
      debug_checks: check traced tags, lengths and mask with checkify (seqjax.ops.checks).

    Returns:
      [B] float32 (float64 for float64 inputs): s(tags) - log Z.
    """
    op = "crf_log_likelihood"
    inputs = _inputs(
        op, emissions, transitions, lengths, mask, start_transitions, end_transitions, debug_checks
    )
    emissions, transitions, start, end, lengths, valid = inputs
    tags = _tags(op, tags, emissions.shape, valid, debug_checks)
    return _score(emissions, tags, transitions, start, end, lengths, valid) - _log_partition(
        emissions, transitions, start, end, valid
    )


def crf_log_partition(
    emissions: Array,
    transitions: Array,
    *,
    lengths: Array | None = None,
    mask: Array | None = None,
    start_transitions: Array | None = None,
    end_transitions: Array | None = None,
    debug_checks: bool = False,
) -> Array:
    """log Z of each example [B] (float32 or float64), by the forward algorithm (arguments as
    ``crf_log_likelihood``)."""
    op = "crf_log_partition"
    inputs = _inputs(
        op, emissions, transitions, lengths, mask, start_transitions, end_transitions, debug_checks
    )
    emissions, transitions, start, end, _, valid = inputs
    return _log_partition(emissions, transitions, start, end, valid)


def crf_decode(
    emissions: Array,
    transitions: Array,
    *,
    lengths: Array | None = None,
    mask: Array | None = None,
    start_transitions: Array | None = None,
    end_transitions: Array | None = None,
    debug_checks: bool = False,
) -> tuple[Array, Array]:
    """The Viterbi tag sequence of each example (arguments as ``crf_log_likelihood``).

    Returns:
      tags: int32 [B, T], the highest-scoring sequence, ``PADDING_TAG`` (-1) at padding.
      scores: [B] (float32 or float64), its score s(tags); subtract ``crf_log_partition``
        for its log p.
    """
    op = "crf_decode"
    inputs = _inputs(
        op, emissions, transitions, lengths, mask, start_transitions, end_transitions, debug_checks
    )
    emissions, transitions, start, end, _, valid = inputs
    num_tags = emissions.shape[2]

    def forward(delta, inputs):
        emission, step_valid = inputs  # [B, L], [B]
        scores = delta[:, :, None] + transitions  # [B, L, L]: from i to j
        pointers = jnp.argmax(scores, axis=1).astype(jnp.int32)
        pointers = jnp.where(step_valid[:, None], pointers, jnp.arange(num_tags))
        delta = jnp.where(step_valid[:, None], jnp.max(scores, axis=1) + emission, delta)
        return delta, pointers

    delta, pointers = lax.scan(forward, start + emissions[:, 0], _time_major(emissions, valid))
    final = delta + end
    last = jnp.argmax(final, axis=1).astype(jnp.int32)

    def backward(tag, step_pointers):
        previous = jnp.take_along_axis(step_pointers, tag[:, None], axis=1)[:, 0]
        return previous, previous

    _, earlier = lax.scan(backward, last, pointers, reverse=True)  # tags at t < T - 1
    best = jnp.concatenate([earlier, last[None]], axis=0).T
    return jnp.where(valid, best, PADDING_TAG), jnp.max(final, axis=1)


def _time_major(emissions, valid):
    """The scan inputs of steps 1..T-1: emissions [T-1, B, L] and valid [T-1, B]."""
    return jnp.swapaxes(emissions[:, 1:], 0, 1), valid[:, 1:].T


def _log_partition(emissions, transitions, start, end, valid):
    def step(alpha, inputs):
        emission, step_valid = inputs
        new = jax.nn.logsumexp(alpha[:, :, None] + transitions, axis=1) + emission
        return jnp.where(step_valid[:, None], new, alpha), None

    alpha, _ = lax.scan(step, start + emissions[:, 0], _time_major(emissions, valid))
    return jax.nn.logsumexp(alpha + end, axis=1)


def _score(emissions, tags, transitions, start, end, lengths, valid):
    tags = jnp.where(valid, tags, 0)
    emitted = jnp.take_along_axis(emissions, tags[..., None], axis=2)[..., 0]  # [B, T]
    moves = transitions[tags[:, :-1], tags[:, 1:]]  # [B, T-1]
    last = jnp.take_along_axis(tags, (lengths - 1)[:, None], axis=1)[:, 0]
    return (
        start[tags[:, 0]]
        + jnp.sum(jnp.where(valid, emitted, 0.0), axis=1)
        + jnp.sum(jnp.where(valid[:, 1:], moves, 0.0), axis=1)
        + end[last]
    )


def _integer(op, name, x):
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise ValueError(f"{op}: {name} must be integer, got {dtype}")


def _tags(op, tags, shape, valid, debug_checks):
    batch, length, num_tags = shape
    checks.shape(op, "tags", tags, (batch, length), "[B, T]")
    _integer(op, "tags", tags)
    tags = jnp.asarray(tags, jnp.int32)
    inside = jnp.where(valid, tags, 0)
    checks.in_range(op, "tags", inside, low=0, high=num_tags - 1, debug_checks=debug_checks)
    return tags


def _inputs(op, emissions, transitions, lengths, mask, start, end, debug_checks):
    """Checked emissions, transitions, start and end in one dtype (float32 at least), int32
    lengths [B] and the valid positions bool [B, T]."""
    for name, x in (
        ("emissions", emissions),
        ("transitions", transitions),
        ("start_transitions", start),
        ("end_transitions", end),
    ):
        checks.floating(op, name, x)
    if jnp.ndim(emissions) != 3:
        raise ValueError(f"{op}: emissions must be [B, T, L], got shape {jnp.shape(emissions)}")
    checks.nonempty(op, "emissions", emissions)
    batch, length, num_tags = jnp.shape(emissions)
    checks.at_least_one(op, "the number of tags L (emissions.shape[2])", num_tags)
    checks.shape(op, "transitions", transitions, (num_tags, num_tags), "[L, L]")
    checks.shape(op, "start_transitions", start, (num_tags,), "[L]")
    checks.shape(op, "end_transitions", end, (num_tags,), "[L]")
    given = [x for x in (emissions, transitions, start, end) if x is not None]
    dtype = jnp.promote_types(jnp.result_type(*given), jnp.float32)
    zeros = jnp.zeros((num_tags,), dtype)
    start = zeros if start is None else jnp.asarray(start, dtype)
    end = zeros if end is None else jnp.asarray(end, dtype)
    positions = jnp.arange(length)
    if lengths is not None and mask is not None:
        raise ValueError(f"{op}: give lengths or mask, not both")
    if mask is not None:
        checks.shape(op, "mask", mask, (batch, length), "[B, T]")
        mask_dtype = jnp.result_type(mask)
        if not (mask_dtype == jnp.bool_ or jnp.issubdtype(mask_dtype, jnp.integer)):
            raise ValueError(f"{op}: mask must be boolean or integer, got {mask_dtype}")
        mask = jnp.asarray(mask).astype(bool)
        lengths = jnp.sum(mask, axis=1)
        prefix = jnp.all(mask == (positions < lengths[:, None]))
        message = f"{op}: mask must be right-padded (each row ones, then zeros)"
        if not isinstance(prefix, jax.core.Tracer):
            if not bool(prefix):
                raise ValueError(message)
        elif debug_checks:
            checkify.check(prefix, message)
    elif lengths is None:
        lengths = jnp.full((batch,), length)
    else:
        checks.shape(op, "lengths", lengths, (batch,), "[B]")
        _integer(op, "lengths", lengths)
    lengths = jnp.asarray(lengths, jnp.int32)
    name = "lengths" if mask is None else "the lengths of mask (its row sums)"
    checks.in_range(op, name, lengths, low=1, high=length, debug_checks=debug_checks)
    emissions = jnp.asarray(emissions, dtype)
    transitions = jnp.asarray(transitions, dtype)
    return emissions, transitions, start, end, lengths, positions < lengths[:, None]
