"""Linear-chain CRF: the log-likelihood and log-partition equal a brute-force enumeration of
all L^n tag sequences, Viterbi decoding equals the enumeration's argmax (rows of different
lengths in one padded batch), gradients equal central finite differences in float64, and bad
inputs are refused by name."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from tolerances import FLOAT32

from seqjax.ops.crf import PADDING_TAG, crf_decode, crf_log_likelihood, crf_log_partition

TAGS = 3
LENGTHS = np.array([5, 3, 1, 4])


def random_case(seed, *, lengths=LENGTHS, edges=True, dtype=np.float32):
    rng = np.random.default_rng(seed)
    batch, length = len(lengths), int(max(lengths))
    emissions = rng.normal(size=(batch, length, TAGS)).astype(dtype)
    transitions = rng.normal(size=(TAGS, TAGS)).astype(dtype)
    start = rng.normal(size=TAGS).astype(dtype) if edges else None
    end = rng.normal(size=TAGS).astype(dtype) if edges else None
    tags = rng.integers(0, TAGS, size=(batch, length))
    tags = np.where(np.arange(length) < lengths[:, None], tags, -100)  # padding: any value
    return emissions, tags, transitions, start, end


def score(emissions, sequence, transitions, start, end):
    start = np.zeros(TAGS) if start is None else start
    end = np.zeros(TAGS) if end is None else end
    total = start[sequence[0]] + end[sequence[-1]]
    total += sum(emissions[t, y] for t, y in enumerate(sequence))
    return total + sum(transitions[a, b] for a, b in zip(sequence[:-1], sequence[1:], strict=True))


def enumerate_row(emissions, length, transitions, start, end):
    """All L^n sequences of one row: (log Z, best sequence, best score), in float64."""
    arrays = [None if a is None else np.asarray(a, np.float64) for a in (start, end)]
    emissions, transitions = np.asarray(emissions, np.float64), np.asarray(transitions, np.float64)
    sequences = list(itertools.product(range(TAGS), repeat=length))
    scores = np.array([score(emissions, s, transitions, *arrays) for s in sequences])
    best = int(np.argmax(scores))
    return np.logaddexp.reduce(scores), np.array(sequences[best]), scores[best]


@pytest.mark.parametrize("edges", [True, False])
def test_log_likelihood_and_partition_equal_the_enumeration(edges):
    emissions, tags, transitions, start, end = random_case(0, edges=edges)
    edge_args = dict(start_transitions=start, end_transitions=end)
    log_z = crf_log_partition(emissions, transitions, lengths=LENGTHS, **edge_args)
    log_p = crf_log_likelihood(emissions, tags, transitions, lengths=LENGTHS, **edge_args)
    assert log_z.shape == log_p.shape == (len(LENGTHS),) and log_p.dtype == jnp.float32
    for b, n in enumerate(LENGTHS):
        expected_z, _, _ = enumerate_row(emissions[b, :n], n, transitions, start, end)
        s = score(emissions[b].astype(np.float64), tags[b, :n], transitions, start, end)
        np.testing.assert_allclose(log_z[b], expected_z, **FLOAT32)
        np.testing.assert_allclose(log_p[b], s - expected_z, **FLOAT32)


def test_viterbi_equals_the_argmax_of_the_enumeration():
    for seed in range(3):
        emissions, _, transitions, start, end = random_case(seed)
        edge_args = dict(start_transitions=start, end_transitions=end)
        best, best_score = crf_decode(emissions, transitions, lengths=LENGTHS, **edge_args)
        assert best.shape == emissions.shape[:2] and best.dtype == jnp.int32
        for b, n in enumerate(LENGTHS):
            _, expected, expected_score = enumerate_row(
                emissions[b, :n], n, transitions, start, end
            )
            np.testing.assert_array_equal(best[b, :n], expected)
            np.testing.assert_array_equal(best[b, n:], PADDING_TAG)
            np.testing.assert_allclose(best_score[b], expected_score, **FLOAT32)


def test_a_mask_equals_lengths_and_no_lengths_means_full_rows():
    emissions, tags, transitions, start, end = random_case(1)
    mask = np.arange(emissions.shape[1]) < LENGTHS[:, None]
    for fn, args in ((crf_log_likelihood, (emissions, tags, transitions)),
                     (crf_log_partition, (emissions, transitions))):  # fmt: skip
        by_lengths = fn(*args, lengths=LENGTHS, start_transitions=start, end_transitions=end)
        by_mask = fn(*args, mask=mask.astype(np.int32), start_transitions=start,
                     end_transitions=end)  # fmt: skip
        np.testing.assert_array_equal(by_mask, by_lengths)
    full = np.full(len(LENGTHS), emissions.shape[1])
    full_tags = np.where(tags < 0, 0, tags)
    np.testing.assert_array_equal(
        crf_log_likelihood(emissions, full_tags, transitions),
        crf_log_likelihood(emissions, full_tags, transitions, lengths=full),
    )


def test_jitted_with_traced_lengths_and_bfloat16_emissions():
    emissions, tags, transitions, start, end = random_case(2)
    low = jnp.asarray(emissions, jnp.bfloat16)
    fn = jax.jit(lambda e, y, n: crf_log_likelihood(e, y, transitions, lengths=n))
    expected = crf_log_likelihood(np.asarray(low, np.float32), tags, transitions, lengths=LENGTHS)
    actual = fn(low, tags, LENGTHS)
    assert actual.dtype == jnp.float32
    np.testing.assert_allclose(actual, expected, **FLOAT32)


def test_gradients_equal_central_finite_differences():
    emissions, tags, transitions, start, end = random_case(3, lengths=np.array([4, 2]))
    weights = np.array([0.7, -1.3])
    with jax.enable_x64(True):
        arrays = [np.asarray(a, np.float64) for a in (emissions, transitions, start, end)]

        def loss(emissions, transitions, start, end):
            log_p = crf_log_likelihood(
                emissions, tags, transitions, lengths=np.array([4, 2]),
                start_transitions=start, end_transitions=end,
            )  # fmt: skip
            return jnp.sum(log_p * weights)

        loss = jax.jit(loss)
        grads = jax.grad(loss, argnums=(0, 1, 2, 3))(*arrays)
        step = 1e-6
        for i, (array, grad) in enumerate(zip(arrays, grads, strict=True)):
            numeric = np.zeros_like(array)
            for index in np.ndindex(array.shape):
                up, down = [a.copy() for a in arrays], [a.copy() for a in arrays]
                up[i][index] += step
                down[i][index] -= step
                numeric[index] = (loss(*up) - loss(*down)) / (2 * step)
            np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
        assert np.all(grads[0][1, 2:] == 0)  # padding positions get no gradient


def test_bad_inputs_are_refused_by_name():
    emissions, tags, transitions, _, _ = random_case(4)
    lengths = LENGTHS
    with pytest.raises(ValueError, match="crf_log_likelihood: emissions must be floating"):
        crf_log_likelihood(emissions.astype(np.int32), tags, transitions, lengths=lengths)
    with pytest.raises(ValueError, match=r"emissions must hold at least one sequence"):
        crf_log_partition(emissions[:, :0], transitions)
    with pytest.raises(ValueError, match=r"emissions must be \[B, T, L\]"):
        crf_decode(emissions[0], transitions)
    with pytest.raises(ValueError, match=r"transitions must be \[L, L\] = \(3, 3\)"):
        crf_decode(emissions, transitions[:2])
    with pytest.raises(ValueError, match=r"end_transitions must be \[L\]"):
        crf_decode(emissions, transitions, end_transitions=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="tags must be integer"):
        crf_log_likelihood(emissions, tags.astype(np.float32), transitions, lengths=lengths)
    bad_tags = tags.copy()
    bad_tags[1, 2] = TAGS  # a valid position (row 1 has length 3)
    with pytest.raises(ValueError, match=r"tags must be in \[0, 2\]"):
        crf_log_likelihood(emissions, bad_tags, transitions, lengths=lengths)
    with pytest.raises(ValueError, match=r"tags must be \[B, T\]"):
        crf_log_likelihood(emissions, tags[:, :2], transitions, lengths=lengths)
    for bad in ([5, 3, 0, 4], [6, 3, 1, 4]):
        with pytest.raises(ValueError, match=r"crf_decode: lengths must be in \[1, 5\]"):
            crf_decode(emissions, transitions, lengths=np.array(bad))
    with pytest.raises(ValueError, match="lengths must be integer"):
        crf_decode(emissions, transitions, lengths=lengths.astype(np.float32))
    with pytest.raises(ValueError, match="give lengths or mask, not both"):
        crf_decode(emissions, transitions, lengths=lengths, mask=np.ones((4, 5), bool))
    holes = np.ones((4, 5), bool)
    holes[0, 2] = False
    with pytest.raises(ValueError, match="mask must be right-padded"):
        crf_log_partition(emissions, transitions, mask=holes)
    with pytest.raises(ValueError, match=r"the lengths of mask \(its row sums\) must be in"):
        crf_log_partition(emissions, transitions, mask=np.zeros((4, 5), bool))


def test_the_debug_mode_catches_traced_tags_out_of_range():
    emissions, tags, transitions, _, _ = random_case(5)
    bad_tags = np.where(tags < 0, 0, tags)
    bad_tags[0, 0] = -1

    def fn(tags):
        return crf_log_likelihood(emissions, tags, transitions, debug_checks=True)

    error, _ = checkify.checkify(jax.jit(fn))(bad_tags)
    with pytest.raises(checkify.JaxRuntimeError, match=r"tags must be in \[0, 2\]"):
        error.throw()
