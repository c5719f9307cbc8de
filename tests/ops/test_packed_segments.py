"""The ops with cumulative log decays keep packed segments apart: a segment after one of very
strong decays (log decay -1e4 per step) equals it run alone, and its outputs' gradient is
exactly zero at every input of the earlier segment (the causality criterion of the mixer
invariants: structural zeros, not small numbers). A cumulative log decay summed across the
segment start would form the later segment's decays by cancelling the earlier one's, off by
about 1e-3 relative and with a nonzero gradient.

The chunked matrix-state ops: the later segment starts inside the first chunk and runs
through the next; chunk_size 8 is also the per-key sub-chunk, so the per-key decayed scores
are halved across the start. Softmax attention with a forget gate (F_i - F_j, F the
cumulative log forget gate), in its reference and chunked forms (blocks of 4); its Pallas
kernels in tests/kernels/test_flash_attention.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import FLOAT32

from seqjax.ops.attention import softmax_attention
from seqjax.ops.delta_rule import delta_rule, generalized_delta_rule
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.mlstm import mlstm

LENGTH, HEADS, KEY, VALUE, CHUNK = 16, 2, 4, 4, 8
LATER = 5  # the later segment is [LATER, LENGTH)
STRONG_LOG_DECAY = -1e4


def arrays_of(op, decay):
    """Inputs [1, LENGTH, ...] of ``op``, strong decays before LATER."""
    rng = np.random.default_rng(0)
    per_key = (1, LENGTH, HEADS, KEY)

    def normal(shape):
        return rng.normal(size=shape).astype(np.float32)

    def log_decay(shape):
        values = np.log(rng.uniform(0.7, 1.0, shape)).astype(np.float32)
        values[:, :LATER] = STRONG_LOG_DECAY
        return values

    arrays = dict(q=normal(per_key), k=normal(per_key) / 2, v=normal((1, LENGTH, HEADS, VALUE)))
    if op == "softmax_attention":
        return dict(arrays, log_forget=log_decay(per_key[:3]))
    if op == "mlstm":
        # forget_gate is the pre-activation f̃; log σ(-1e4) = -1e4.
        return dict(arrays, input_gate=normal(per_key[:3]), forget_gate=log_decay(per_key[:3]))
    decay_shape = per_key if decay == "key" else per_key[:3]
    arrays["log_decay"] = log_decay(decay_shape)
    if op == "delta_rule":
        arrays["beta"] = rng.uniform(0, 1, per_key[:3]).astype(np.float32)
    if op == "generalized_delta_rule":
        removal_key = normal(per_key)
        removal_key /= np.linalg.norm(removal_key, axis=-1, keepdims=True)
        arrays["removal_key"] = removal_key
        arrays["removal_direction"] = rng.uniform(0, 1, per_key).astype(np.float32) * removal_key
    return arrays


def matrix_state_op(op):
    """op(arrays, segment_starts or None) -> outputs of the chunked form."""

    def run(arrays, starts):
        chunked = dict(chunk_size=CHUNK, implementation="chunked")
        return op(**arrays, segment_starts=starts, **chunked)[0]

    return run


def attention(implementation):
    def run(arrays, starts):
        ids = None if starts is None else jnp.cumsum(starts, axis=1)
        options = dict(block_size=4, implementation=implementation)
        return softmax_attention(**arrays, q_segment_ids=ids, kv_segment_ids=ids, **options)

    return run


OPS = {
    "gated_linear_attention": matrix_state_op(gated_linear_attention),
    "delta_rule": matrix_state_op(delta_rule),
    "generalized_delta_rule": matrix_state_op(generalized_delta_rule),
    "mlstm": matrix_state_op(mlstm),
    "softmax_attention-reference": attention("reference"),
    "softmax_attention-chunked": attention("chunked"),
}
CASES = [
    ("gated_linear_attention", "head"),
    ("gated_linear_attention", "key"),
    ("delta_rule", "head"),
    ("generalized_delta_rule", "key"),
    ("mlstm", "head"),
    ("softmax_attention-reference", "head"),
    ("softmax_attention-chunked", "head"),
]


@functools.partial(jax.jit, static_argnums=(0,))
def packed_and_alone(op, arrays, cotangent):
    """The later segment's outputs packed after the earlier one and run alone, and the
    gradient of Σ cotangent · (packed later outputs) with respect to every input."""
    starts = jnp.zeros((1, LENGTH), bool).at[:, LATER].set(True)

    def later_outputs(arrays):
        return OPS[op](arrays, starts)[:, LATER:]

    packed, pullback = jax.vjp(later_outputs, arrays)
    (gradient,) = pullback(cotangent)
    alone = OPS[op]({name: array[:, LATER:] for name, array in arrays.items()}, None)
    return packed, alone, gradient


@pytest.mark.parametrize("op, decay", CASES, ids=[f"{op}-{decay}" for op, decay in CASES])
def test_a_segment_after_strong_decays_is_independent_of_them(op, decay):
    arrays = arrays_of(op.split("-")[0], decay)
    cotangent = np.random.default_rng(1).normal(size=(1, LENGTH - LATER, HEADS, VALUE))
    packed, alone, gradient = packed_and_alone(op, arrays, cotangent.astype(np.float32))
    np.testing.assert_allclose(packed, alone, **FLOAT32)
    for name, g in gradient.items():
        g = np.asarray(g)
        assert np.all(g[:, :LATER] == 0.0), f"{name}: the later segment reads the earlier one"
        assert np.any(g[:, LATER:] != 0.0), f"{name}: the later segment reads none of itself"
