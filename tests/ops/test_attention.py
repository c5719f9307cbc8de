"""Tests for seqjax.ops.attention: chunked vs reference parity, reference vs a NumPy loop."""

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import BFLOAT16 as BFLOAT16_TOLERANCE
from tolerances import FLOAT32 as FLOAT32_TOLERANCE

from seqjax.ops.attention import rotary_embedding, softmax_attention
from seqjax.typing import DType


def _random_inputs(seed, batch, query_length, key_length, heads, groups, dtype=jnp.float32):
    """q, k, v and an output cotangent, head dims K = V = 8."""
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return (
        normal(batch, query_length, heads, 8),
        normal(batch, key_length, groups, 8),
        normal(batch, key_length, groups, 8),
        normal(batch, query_length, heads, 8),
    )


@functools.partial(jax.jit, static_argnames=("options",))
def _outputs_and_gradients(q, k, v, output_weights, masking, options):
    """o and the gradients of sum(o * output_weights) w.r.t. q, k, v."""

    def loss(q, k, v):
        o = softmax_attention(q, k, v, **masking, **dict(options))
        return jnp.sum(o.astype(jnp.float32) * output_weights.astype(jnp.float32)), o

    (_, o), gradients = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
    return o, gradients


def _ring_buffer_cache(batch, cache_length, tokens_written):
    """kv_positions of a ring-buffer KV cache: slot s holds the latest position p with
    p % cache_length == s, or -1 if nothing was written there yet."""
    positions = np.full((batch, cache_length), -1, np.int32)
    for b, written in enumerate(tokens_written):
        for position in range(written):
            positions[b, position % cache_length] = position
    return positions


def _packed_segment_ids(batch, length, lengths_per_row):
    segment_ids = np.zeros((batch, length), np.int32)
    for b, lengths in enumerate(lengths_per_row):
        segment_ids[b] = np.repeat(np.arange(len(lengths)), lengths)
    return segment_ids


def _restarting_positions(segment_ids):
    """Positions counted from 0 at the start of each segment."""
    positions = np.zeros_like(segment_ids)
    for b, row in enumerate(segment_ids):
        for t in range(1, len(row)):
            positions[b, t] = positions[b, t - 1] + 1 if row[t] == row[t - 1] else 0
    return positions


_SEGMENTS = _packed_segment_ids(2, 40, [[13, 20, 7], [40]])


class ParityCase(NamedTuple):
    batch: int = 2
    query_length: int = 40
    key_length: int = 40
    heads: int = 2
    groups: int = 1
    dtype: DType = jnp.float32
    masking: dict = {}
    options: dict = {}


PARITY_CASES = {
    "causal": ParityCase(query_length=48, key_length=48, groups=2, options={"block_size": 16}),
    "sliding_window": ParityCase(options={"window": 10, "block_size": 8}),
    "gqa_h4_g2": ParityCase(heads=4, groups=2, options={"block_size": 16}),
    "gqa_h4_g1": ParityCase(batch=1, heads=4, options={"window": 9, "block_size": 16}),
    "packed_segments": ParityCase(
        masking={
            "q_segment_ids": _SEGMENTS,
            "kv_segment_ids": _SEGMENTS,
            "q_positions": _restarting_positions(_SEGMENTS),
            "kv_positions": _restarting_positions(_SEGMENTS),
        },
        options={"block_size": 16},
    ),
    "packed_segments_default_positions": ParityCase(
        groups=2,
        masking={"q_segment_ids": _SEGMENTS, "kv_segment_ids": _SEGMENTS},
        options={"window": 12, "block_size": 8},
    ),
    "non_causal": ParityCase(query_length=24, options={"causal": False, "block_size": 16}),
    "kv_cache_ring_buffer": ParityCase(
        batch=3,
        query_length=4,
        key_length=24,
        masking={
            "q_positions": np.array([[30, 31, 32, 33], [17, 18, 19, 20], [50, 51, 52, 53]]),
            "kv_positions": _ring_buffer_cache(3, 24, tokens_written=[30, 17, 50]),
        },
        options={"window": 20, "block_size": 8},
    ),
    "prefill_after_cache": ParityCase(
        batch=1, query_length=20, key_length=44, groups=2, options={"window": 15, "block_size": 8}
    ),
    "length_not_multiple_of_block": ParityCase(
        query_length=37, key_length=37, options={"block_size": 16}
    ),
    "bfloat16": ParityCase(
        heads=4, groups=2, dtype=jnp.bfloat16, options={"window": 9, "block_size": 16}
    ),
}


@pytest.mark.parametrize("case", PARITY_CASES.values(), ids=PARITY_CASES.keys())
def test_chunked_matches_reference_values_and_gradients(case):
    q, k, v, output_weights = _random_inputs(
        0, case.batch, case.query_length, case.key_length, case.heads, case.groups, case.dtype
    )
    masking = {name: jnp.asarray(x, jnp.int32) for name, x in case.masking.items()}
    results = {
        implementation: _outputs_and_gradients(
            q,
            k,
            v,
            output_weights,
            masking,
            tuple({**case.options, "implementation": implementation}.items()),
        )
        for implementation in ("reference", "chunked")
    }
    dtype = case.dtype
    tolerance = BFLOAT16_TOLERANCE if dtype == jnp.bfloat16 else FLOAT32_TOLERANCE
    reference_o, reference_gradients = results["reference"]
    chunked_o, chunked_gradients = results["chunked"]
    assert chunked_o.dtype == dtype
    assert chunked_o.shape == (case.batch, case.query_length, case.heads, 8)
    np.testing.assert_allclose(
        np.asarray(chunked_o, np.float32), np.asarray(reference_o, np.float32), **tolerance
    )
    for name, chunked, reference in zip("qkv", chunked_gradients, reference_gradients, strict=True):
        assert chunked.dtype == dtype, name
        np.testing.assert_allclose(
            np.asarray(chunked, np.float32),
            np.asarray(reference, np.float32),
            err_msg=f"gradient w.r.t. {name}",
            **tolerance,
        )


def _numpy_loop_attention(
    q, k, v, q_positions, kv_positions, q_segments, kv_segments, causal, window
):
    """Per batch, query and head: collect the allowed keys, softmax their scores in float64."""
    batch, query_length, heads, head_dim = q.shape
    heads_per_group = heads // k.shape[2]
    o = np.zeros((batch, query_length, heads, v.shape[-1]))
    for b in range(batch):
        for i in range(query_length):
            allowed = [
                j
                for j in range(k.shape[1])
                if kv_positions[b, j] >= 0
                and (not causal or kv_positions[b, j] <= q_positions[b, i])
                and (window is None or q_positions[b, i] - kv_positions[b, j] < window)
                and q_segments[b, i] == kv_segments[b, j]
            ]
            if not allowed:
                continue
            for h in range(heads):
                group = h // heads_per_group
                scores = np.array([q[b, i, h] @ k[b, j, group] for j in allowed]) / np.sqrt(
                    head_dim
                )
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                o[b, i, h] = sum(w * v[b, j, group] for w, j in zip(weights, allowed, strict=True))
    return o


@pytest.mark.parametrize("causal, window", [(True, 3), (False, None)])
def test_reference_matches_numpy_loop(causal, window):
    q, k, v, _ = _random_inputs(1, batch=2, query_length=3, key_length=7, heads=4, groups=2)
    q_positions = np.array([[4, 5, 6], [2, 3, 9]], np.int32)
    kv_positions = np.array([[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, -1, 1, 2, 3]], np.int32)
    q_segments = np.array([[0, 1, 1], [0, 0, 1]], np.int32)
    kv_segments = np.array([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]], np.int32)
    o = softmax_attention(
        q,
        k,
        v,
        q_positions=jnp.asarray(q_positions),
        kv_positions=jnp.asarray(kv_positions),
        q_segment_ids=jnp.asarray(q_segments),
        kv_segment_ids=jnp.asarray(kv_segments),
        causal=causal,
        window=window,
        implementation="reference",
    )
    expected = _numpy_loop_attention(
        *(np.asarray(x, np.float64) for x in (q, k, v)),
        q_positions,
        kv_positions,
        q_segments,
        kv_segments,
        causal,
        window,
    )
    assert np.any(expected != 0), "the case must not mask every query"
    np.testing.assert_allclose(np.asarray(o), expected, **FLOAT32_TOLERANCE)


@pytest.mark.parametrize("implementation", ["reference", "chunked"])
def test_query_without_allowed_keys_gives_zero_output_and_gradient(implementation):
    q, k, v, output_weights = _random_inputs(
        2, batch=1, query_length=4, key_length=8, heads=2, groups=1
    )
    # Query 1 sits at position 2 but every key is at position >= 3 or an empty slot.
    masking = {
        "q_positions": jnp.array([[5, 2, 6, 7]], jnp.int32),
        "kv_positions": jnp.array([[3, 4, 5, -1, 6, 7, -1, 3]], jnp.int32),
    }
    options = (("implementation", implementation), ("block_size", 4))
    o, (dq, dk, dv) = _outputs_and_gradients(q, k, v, output_weights, masking, options)
    np.testing.assert_array_equal(np.asarray(o[:, 1]), 0.0)
    np.testing.assert_array_equal(np.asarray(dq[:, 1]), 0.0)
    assert np.all(np.abs(np.asarray(o[:, [0, 2, 3]])).sum(axis=-1) > 0)
    chex.assert_tree_all_finite((o, dq, dk, dv))
    # Empty cache slots receive no gradient either.
    np.testing.assert_array_equal(np.asarray(dk[:, [3, 6]]), 0.0)
    np.testing.assert_array_equal(np.asarray(dv[:, [3, 6]]), 0.0)


def test_chunked_backward_memory_is_linear_in_length():
    length = 4096
    shape = jax.ShapeDtypeStruct((1, length, 1, 16), jnp.float32)

    def loss(q, k, v, output_weights):
        o = softmax_attention(q, k, v, block_size=128, implementation="chunked")
        return jnp.sum(o * output_weights)

    compiled = (
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(shape, shape, shape, shape).compile()
    )
    score_matrix_bytes = length * length * 4
    assert compiled.memory_analysis().temp_size_in_bytes < score_matrix_bytes / 8


def test_rotary_embedding_matches_numpy_and_depends_on_relative_position():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)
    positions = rng.integers(0, 1000, size=(2, 5)).astype(np.int32)
    rotated = np.asarray(rotary_embedding(jnp.asarray(x), jnp.asarray(positions), base=100.0))

    angles = positions[..., None, None] * 100.0 ** (-np.arange(4) / 4)
    first, second = x[..., :4], x[..., 4:]
    expected = np.concatenate(
        [
            first * np.cos(angles) - second * np.sin(angles),
            second * np.cos(angles) + first * np.sin(angles),
        ],
        axis=-1,
    )
    np.testing.assert_allclose(rotated, expected, rtol=1e-4, atol=1e-4)

    # RoPE's point: <R(p) a, R(s) b> depends on p - s only.
    a, b = x[:1, :1], x[:1, 1:2]

    def rotated_dot(p, s):
        rotate = functools.partial(rotary_embedding, base=100.0)
        return float(jnp.sum(rotate(a, jnp.array([[p]])) * rotate(b, jnp.array([[s]]))))

    np.testing.assert_allclose(rotated_dot(10, 3), rotated_dot(107, 100), rtol=1e-4, atol=1e-4)
    assert (
        rotary_embedding(jnp.asarray(x, jnp.bfloat16), jnp.asarray(positions)).dtype == jnp.bfloat16
    )


_Q = jnp.zeros((2, 6, 4, 8))
_K = jnp.zeros((2, 6, 2, 8))
_POSITIONS = jnp.zeros((2, 6), jnp.int32)


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"q": jnp.zeros((2, 6, 8))}, r"q must be \[B, Tq, H, K\]"),
        ({"k": jnp.zeros((2, 6, 8))}, r"k must be \[B, Tk, G, K\]"),
        ({"v": jnp.zeros((2, 6, 8))}, r"v must be \[B, Tk, G, V\]"),
        ({"k": jnp.zeros((3, 6, 2, 8)), "v": jnp.zeros((3, 6, 2, 8))}, "batch size B"),
        ({"k": jnp.zeros((2, 6, 2, 4)), "v": jnp.zeros((2, 6, 2, 4))}, "q's K = 8"),
        ({"v": jnp.zeros((2, 5, 2, 8))}, r"k's B, Tk, G"),
        (
            {"k": jnp.zeros((2, 6, 3, 8)), "v": jnp.zeros((2, 6, 3, 8))},
            "multiple of key/value heads",
        ),
        ({"q_positions": jnp.zeros((2, 5), jnp.int32)}, r"q_positions must be \[B, T\]"),
        ({"kv_positions": jnp.zeros((2, 6))}, "kv_positions must be integers"),
        ({"q_segment_ids": _POSITIONS}, "both q_segment_ids and kv_segment_ids"),
        (
            {"kv_segment_ids": jnp.zeros((1, 6), jnp.int32), "q_segment_ids": _POSITIONS},
            "kv_segment_ids must be",
        ),
        ({"window": 4, "causal": False}, "window requires causal"),
        ({"window": 0}, "window must be >= 1"),
        ({"block_size": 0}, "block_size must be >= 1"),
        ({"implementation": "pallas"}, "implementation='pallas' cannot run: .* not on cpu"),
        ({"implementation": "flash"}, r"unknown implementation 'flash'.*'reference', 'chunked'"),
    ],
)
def test_invalid_arguments_raise_clear_errors(arguments, match):
    call = {"q": _Q, "k": _K, "v": _K, **arguments}
    with pytest.raises(ValueError, match=match):
        softmax_attention(call.pop("q"), call.pop("k"), call.pop("v"), **call)


@pytest.mark.parametrize(
    "x, positions, match",
    [
        (jnp.zeros((2, 5, 3, 7)), jnp.zeros((2, 5), jnp.int32), "K even"),
        (jnp.zeros((2, 5, 3, 8)), jnp.zeros((2, 4), jnp.int32), r"positions must be \[B, T\]"),
    ],
)
def test_rotary_embedding_rejects_bad_shapes(x, positions, match):
    with pytest.raises(ValueError, match=match):
        rotary_embedding(x, positions)


@pytest.mark.parametrize("window", [None, 7], ids=["causal", "window"])
def test_forget_gate_chunked_matches_reference_including_its_gradient(window):
    q, k, v, output_weights = _random_inputs(5, 2, 45, 45, 4, 2)
    rng = np.random.default_rng(6)
    log_forget = jnp.asarray(np.log(rng.uniform(0.5, 1.0, (2, 45, 4))), jnp.float32)
    segments = jnp.asarray(_packed_segment_ids(2, 45, [[20, 25], [45]]))

    def outputs_and_gradients(implementation):
        def loss(q, k, v, log_forget):
            o = softmax_attention(
                q, k, v, log_forget=log_forget, q_segment_ids=segments, kv_segment_ids=segments,
                window=window, block_size=16, implementation=implementation,
            )  # fmt: skip
            return jnp.sum(o * output_weights), o

        grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))
        gradients, o = grad(q, k, v, log_forget)
        return o, gradients

    chunked, reference = outputs_and_gradients("chunked"), outputs_and_gradients("reference")
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, **FLOAT32_TOLERANCE), chunked, reference
    )


def test_forget_gate_adds_the_cumulative_log_forget_difference():
    q, k, v, _ = _random_inputs(7, 1, 6, 6, 1, 1)
    log_forget = np.log(np.random.default_rng(8).uniform(0.3, 1.0, (1, 6, 1)))
    o = softmax_attention(q, k, v, log_forget=jnp.asarray(log_forget, jnp.float32))
    cumulative = np.cumsum(log_forget[0, :, 0])
    scores = np.asarray(q[0, :, 0], np.float64) @ np.asarray(k[0, :, 0], np.float64).T / np.sqrt(8)
    scores += cumulative[:, None] - cumulative[None, :]
    scores = np.where(np.tril(np.ones((6, 6))) > 0, scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    expected = (weights / weights.sum(axis=1, keepdims=True)) @ np.asarray(v[0, :, 0])
    np.testing.assert_allclose(o[0, :, 0], expected, **FLOAT32_TOLERANCE)
    with pytest.raises(ValueError, match=r"log_forget must be \[B, Tk, H\] = \(1, 6, 1\)"):
        softmax_attention(q, k, v, log_forget=jnp.zeros((1, 6)))
