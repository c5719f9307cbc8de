"""CTC: the loss equals a NumPy forward recurrence over the blank-extended labels (rows of
different lengths, repeats, an empty label sequence, the blank first or last); greedy
decoding equals a Python loop; the prefix beam search with beam 1 equals greedy on peaked
frames and with a beam that prunes nothing equals an exhaustive sum over all alignments;
bad inputs are refused by name."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from tolerances import FLOAT32

from seqjax.ops.ctc import PADDING_LABEL, ctc_greedy_decode, ctc_loss, ctc_prefix_beam_search


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - np.logaddexp.reduce(x, axis=-1, keepdims=True)


def numpy_ctc_loss(logits, labels, blank):
    """-log p(labels | logits) of one example [T, V] by the α recursion over
    [blank, l_1, blank, l_2, ..., blank], in float64."""
    y = log_softmax(logits)
    extended = [blank]
    for label in labels:
        extended += [int(label), blank]
    alpha = np.full(len(extended), -np.inf)
    alpha[0] = y[0, blank]
    if len(labels):
        alpha[1] = y[0, extended[1]]
    for t in range(1, len(y)):
        previous = alpha.copy()
        for s, label in enumerate(extended):
            terms = [previous[s]] + ([previous[s - 1]] if s >= 1 else [])
            if s >= 2 and label != blank and label != extended[s - 2]:
                terms.append(previous[s - 2])
            alpha[s] = np.logaddexp.reduce(terms) + y[t, label]
    return -np.logaddexp.reduce(alpha[-2:] if len(labels) else alpha[-1:])


def collapse(path, blank):
    merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    return tuple(int(c) for c in merged if c != blank)


@pytest.mark.parametrize("blank", [0, 4])
def test_the_loss_equals_a_numpy_recursion(blank):
    rng = np.random.default_rng(blank)
    logit_lengths = np.array([8, 5, 3, 6])
    label_lengths = np.array([3, 2, 0, 4])
    logits = rng.normal(size=(4, 8, 5)).astype(np.float32) * 2
    symbols = [c for c in range(5) if c != blank]
    labels = rng.choice(symbols, size=(4, 4))
    labels[0, :3] = [symbols[1], symbols[1], symbols[2]]  # a repeat needs a blank between
    labels = np.where(np.arange(4) < label_lengths[:, None], labels, -7)  # padding: any value
    loss = ctc_loss(logits, logit_lengths, labels, label_lengths, blank=blank)
    assert loss.shape == (4,) and loss.dtype == jnp.float32
    for b in range(4):
        expected = numpy_ctc_loss(
            logits[b, : logit_lengths[b]], labels[b, : label_lengths[b]], blank
        )
        np.testing.assert_allclose(loss[b], expected, **FLOAT32)


def test_greedy_decoding_equals_a_python_loop():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 9, 4)).astype(np.float32)
    logits[0, 2:5, 1] = 9.0  # one label held over frames
    logit_lengths = np.array([9, 4, 1])
    for blank in (0, 3):
        labels, lengths = ctc_greedy_decode(logits, logit_lengths, blank=blank)
        assert labels.shape == (3, 9) and labels.dtype == lengths.dtype == jnp.int32
        for b, n in enumerate(logit_lengths):
            expected = collapse(np.argmax(logits[b, :n], axis=1), blank)
            assert lengths[b] == len(expected)
            assert tuple(np.asarray(labels[b, : lengths[b]])) == expected
            assert np.all(np.asarray(labels[b, lengths[b] :]) == PADDING_LABEL)


def test_beam_one_equals_greedy_on_peaked_frames():
    """One frame class far above the rest: the best path carries nearly all the mass, so the
    most probable prefix is the best path's."""
    rng = np.random.default_rng(2)
    paths = rng.integers(0, 4, size=(4, 10))
    paths[0, :6] = [1, 1, 0, 1, 2, 2]  # a held label, a repeat across a blank
    logits = rng.normal(size=(4, 10, 4)).astype(np.float32)
    logits += 12.0 * np.eye(4, dtype=np.float32)[paths]
    logit_lengths = np.array([10, 7, 1, 4])
    greedy, greedy_lengths = ctc_greedy_decode(logits, logit_lengths)
    beam, beam_lengths, log_probs = ctc_prefix_beam_search(logits, logit_lengths, beam_size=1)
    np.testing.assert_array_equal(beam, greedy)
    np.testing.assert_array_equal(beam_lengths, greedy_lengths)
    assert np.all(np.isfinite(log_probs))


def test_beam_one_sums_over_alignments_where_greedy_takes_one_path():
    """Frames a, blank, a: the best path reads "a a", but "a" collects more alignments, and a
    beam of one keeps the more probable prefix."""
    probs = np.array([[0.05, 0.9, 0.05], [0.5, 0.4, 0.1], [0.3, 0.5, 0.2]], np.float32)
    logits, lengths = np.log(probs)[None], np.array([3])
    greedy, _ = ctc_greedy_decode(logits, lengths)
    beam, beam_lengths, log_prob = ctc_prefix_beam_search(logits, lengths, beam_size=1)
    assert list(greedy[0]) == [1, 1, PADDING_LABEL]
    assert list(beam[0, : beam_lengths[0]]) == [1]
    # p("a") kept by the beam: a·∅·a (merged), ∅ mid-frames: .9*.5*.3 + .9*.4*(.3 + .5).
    np.testing.assert_allclose(np.exp(log_prob[0]), 0.9 * 0.5 * 0.3 + 0.9 * 0.4 * 0.8, rtol=1e-5)


@pytest.mark.parametrize("blank", [0, 2])
def test_a_beam_that_prunes_nothing_equals_exhaustive_search(blank):
    """V = 3, up to T = 5 frames: 243 paths summed per label sequence; the beam of 64 holds
    every prefix (1 + 2 + ... + 32 = 63)."""
    rng = np.random.default_rng(3 + blank)
    logits = rng.normal(size=(3, 5, 3)).astype(np.float32)
    logit_lengths = np.array([5, 4, 2])
    beam, beam_lengths, log_probs = ctc_prefix_beam_search(
        logits, logit_lengths, beam_size=64, blank=blank
    )
    for b, n in enumerate(logit_lengths):
        y = log_softmax(logits[b, :n])
        totals = {}
        for path in itertools.product(range(3), repeat=n):
            p = np.exp(sum(y[t, c] for t, c in enumerate(path)))
            key = collapse(path, blank)
            totals[key] = totals.get(key, 0.0) + p
        best = max(totals, key=totals.get)
        assert tuple(np.asarray(beam[b, : beam_lengths[b]])) == best
        np.testing.assert_allclose(log_probs[b], np.log(totals[best]), **FLOAT32)
        labels = np.array([list(best) + [0] * (5 - len(best))])
        loss = ctc_loss(logits[b : b + 1], np.array([n]), labels, np.array([len(best)]),
                        blank=blank)  # fmt: skip
        np.testing.assert_allclose(-loss[0], np.log(totals[best]), **FLOAT32)


def test_the_search_jits_with_traced_lengths_and_bfloat16_logits():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(2, 6, 4)), jnp.bfloat16)
    lengths = np.array([6, 3])
    search = jax.jit(ctc_prefix_beam_search, static_argnames=("beam_size", "blank"))
    jitted = search(logits, lengths, beam_size=3, blank=1)
    eager = ctc_prefix_beam_search(np.asarray(logits, np.float32), lengths, beam_size=3, blank=1)
    for a, e in zip(jitted, eager, strict=True):
        np.testing.assert_allclose(a, e, **FLOAT32)
    assert jitted[2].dtype == jnp.float32


def test_bad_inputs_are_refused_by_name():
    logits = np.zeros((2, 3, 4), np.float32)
    frames = np.array([3, 2])
    labels = np.array([[1, 2, 3], [1, 1, 0]])
    message = (
        r"ctc_loss: labels are longer than logits allow: example 1 needs 3 frames "
        r"\(label_lengths\[1\] = 2 plus 1 repeated neighbours.*logit_lengths\[1\] = 2"
    )
    with pytest.raises(ValueError, match=message):
        ctc_loss(logits, frames, labels, np.array([3, 2]))
    np.testing.assert_array_equal(
        np.isfinite(ctc_loss(logits, frames, np.array([[1, 2, 3], [1, 2, 0]]), np.array([3, 2]))),
        True,
    )
    for blank in (4, -1):
        for fn in (ctc_greedy_decode, ctc_prefix_beam_search):
            kwargs = dict(beam_size=2) if fn is ctc_prefix_beam_search else {}
            with pytest.raises(ValueError, match=r"blank must be in \[0, V\) = \[0, 4\)"):
                fn(logits, frames, blank=blank, **kwargs)
        with pytest.raises(ValueError, match=r"ctc_loss: blank must be in"):
            ctc_loss(logits, frames, labels, np.array([1, 1]), blank=blank)
    with pytest.raises(ValueError, match="labels must not hold the blank id 0"):
        ctc_loss(logits, frames, np.array([[1, 0, 3], [1, 2, 0]]), np.array([2, 2]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        ctc_loss(logits, frames, np.array([[1, 4, 3], [1, 2, 0]]), np.array([2, 2]))
    with pytest.raises(ValueError, match=r"label_lengths must be in \[0, 3\]"):
        ctc_loss(logits, frames, labels, np.array([4, 1]))
    with pytest.raises(ValueError, match=r"labels must be \[B, S\] with B = 2"):
        ctc_loss(logits, frames, labels[:1], np.array([1]))
    with pytest.raises(ValueError, match="labels must be integer"):
        ctc_loss(logits, frames, labels.astype(np.float32), np.array([1, 1]))
    with pytest.raises(ValueError, match="logits must be floating point"):
        ctc_greedy_decode(logits.astype(np.int32), frames)
    with pytest.raises(ValueError, match=r"logits must be \[B, T, V\]"):
        ctc_greedy_decode(logits[0], frames)
    for bad in ([0, 2], [4, 2]):
        with pytest.raises(ValueError, match=r"logit_lengths must be in \[1, 3\]"):
            ctc_greedy_decode(logits, np.array(bad))
    with pytest.raises(ValueError, match=r"logit_lengths must be \[B\]"):
        ctc_greedy_decode(logits, np.array([3]))
    with pytest.raises(ValueError, match="beam_size must be >= 1"):
        ctc_prefix_beam_search(logits, frames, beam_size=0)


def test_the_debug_mode_catches_traced_labels_longer_than_the_logits_allow():
    logits = np.zeros((1, 2, 3), np.float32)

    def loss(labels):
        return ctc_loss(logits, np.array([2]), labels, np.array([2]), debug_checks=True)

    checked = checkify.checkify(jax.jit(loss))
    error, _ = checked(np.array([[1, 2]]))
    error.throw()
    error, _ = checked(np.array([[1, 1]]))
    with pytest.raises(checkify.JaxRuntimeError, match="labels are longer than logits allow"):
        error.throw()
