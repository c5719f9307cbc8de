"""kernels_pallas.flash_attention: the TPU and GPU kernels, run in the Pallas interpreter,
equal softmax_attention's reference on outputs and the gradients of q, k, v and the forget
gate, float32 and bfloat16, with grouped-query heads, sliding windows (blocks skipped),
segments, KV-cache positions with empty slots and rows with no key, at lengths that are not
multiples of the blocks; the kernels lower for TPU (Mosaic) and CUDA (Triton), forward and
backward; the op dispatches to them."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from kernel_testing import PLATFORMS, assert_lowers, interpret_dispatch, interpreted
from tolerances import BFLOAT16, FLOAT32

import kernels_pallas.flash_attention as flash_attention_kernels
from seqjax.ops.attention import softmax_attention

# Blocks of 16 rows, so the lengths below span ragged last blocks and several block pairs.
BLOCKS = dict(query_block=16, key_block=16)
INTERPRETED = interpreted(flash_attention_kernels.flash_attention, tpu=BLOCKS, gpu=BLOCKS)


def inputs(seed, dtype, query_length=37, key_length=37, heads=4, groups=2, key_size=12):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(2, query_length, heads, key_size))
    k = rng.normal(size=(2, key_length, groups, key_size))
    v = rng.normal(size=(2, key_length, groups, 20))
    log_forget = np.log(rng.uniform(0.7, 1.0, (2, key_length, heads))).astype(np.float32)
    arrays = {name: jnp.asarray(x, dtype) for name, x in dict(q=q, k=k, v=v).items()}
    return dict(**arrays, log_forget=jnp.asarray(log_forget))


def cache_masking(query_length=5, key_length=29):
    """A KV cache: keys at positions 0..23 then 5 empty slots (-1), queries at 24..28 minus
    one, with segments; the first query of row 1 starts a segment the cache does not hold
    yet, and its position is that of an empty slot, so it sees no key at all."""
    kv_positions = np.concatenate([np.arange(key_length - 5), -np.ones(5)]).astype(np.int32)
    kv_positions = np.stack([kv_positions, kv_positions])
    q_positions = np.arange(query_length, dtype=np.int32) + key_length - 6
    q_positions = np.stack([q_positions, q_positions])
    kv_segments = (np.arange(key_length) >= 10).astype(np.int32)
    kv_segments = np.stack([kv_segments, kv_segments])
    q_segments = np.ones((2, query_length), np.int32)
    q_segments[1, 0], q_positions[1, 0] = 2, key_length - 6
    return dict(
        q_positions=jnp.asarray(q_positions), kv_positions=jnp.asarray(kv_positions),
        q_segment_ids=jnp.asarray(q_segments), kv_segment_ids=jnp.asarray(kv_segments),
    )  # fmt: skip


def outputs_and_grads(attention, arrays, options):
    """The output and the gradients of q, k, v and log_forget of a fixed random functional."""

    def loss(differentiable):
        output = attention(**differentiable, **options)
        weights = np.random.default_rng(7).normal(size=output.shape).astype(np.float32)
        return jnp.sum(output.astype(jnp.float32) * weights), output

    grads, output = jax.jit(jax.grad(loss, has_aux=True))(arrays)
    return {"output": output, **grads}


CASES = {
    # Default positions (queries the last 37 of 45 keys): blocks outside the causal window
    # skipped; the forget gate; GQA.
    "window-forget": dict(lengths=(37, 45), options=dict(window=7), forget=True),
    # Arbitrary positions: a KV cache with empty slots and segments, queries with no key.
    "cache-segments": dict(lengths=(5, 29), options=dict(window=20), forget=True, cache=True),
    # No causal mask, segments, more keys than queries, one key/value head.
    "bidirectional": dict(lengths=(19, 23), options=dict(causal=False), groups=1, segments=True),
}


def case_arguments(name, dtype):
    case = CASES[name]
    query_length, key_length = case["lengths"]
    arrays = inputs(0, dtype, query_length, key_length, groups=case.get("groups", 2))
    if not case.get("forget"):
        del arrays["log_forget"]
    options = dict(case["options"])
    if case.get("cache"):
        options.update(cache_masking(query_length, key_length))
    if case.get("segments"):
        rng = np.random.default_rng(1)
        options["q_segment_ids"] = jnp.asarray(rng.integers(0, 3, (2, query_length)), jnp.int32)
        options["kv_segment_ids"] = jnp.asarray(rng.integers(0, 3, (2, key_length)), jnp.int32)
    return arrays, options


@pytest.mark.parametrize(
    "case, dtype",
    [
        ("window-forget", jnp.float32),
        ("cache-segments", jnp.float32),
        ("bidirectional", jnp.float32),
        ("window-forget", jnp.bfloat16),
    ],
    ids=["window-forget-f32", "cache-segments-f32", "bidirectional-f32", "window-forget-bf16"],
)
def test_kernels_equal_reference(case, dtype):
    arrays, options = case_arguments(case, dtype)
    expected = outputs_and_grads(
        functools.partial(softmax_attention, implementation="reference"), arrays, options
    )
    tolerance = FLOAT32 if dtype == jnp.float32 else BFLOAT16
    for platform, kernel in INTERPRETED.items():
        actual = outputs_and_grads(kernel, arrays, options)
        for name in expected:
            np.testing.assert_allclose(
                np.asarray(actual[name], np.float32),
                np.asarray(expected[name], np.float32),
                **tolerance,
                err_msg=f"{platform}: {name}",
            )
        if case == "cache-segments":  # the query that sees no key gives 0
            np.testing.assert_array_equal(np.asarray(actual["output"][1, 0], np.float32), 0.0)


@pytest.mark.parametrize("target", ["tpu", "cuda"])
def test_kernels_lower_forward_and_backward(target):
    """Lowering runs the Mosaic or Triton lowering of the forward, dq and dk/dv kernels,
    which rejects tiles and operations the target lacks."""
    kernel = functools.partial(flash_attention_kernels.flash_attention, platform=PLATFORMS[target])
    batch, length, heads, groups, head_size = 2, 1000, 8, 2, 128
    positions = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    log_forget = jax.ShapeDtypeStruct((batch, length, heads), jnp.float32)

    def forward(q, k, v, *masking):
        if not masking:  # default positions: causal and window blocks are skipped
            return kernel(q, k, v, window=256)
        positions, segments, log_forget = masking
        return kernel(
            q, k, v, q_positions=positions, kv_positions=positions, q_segment_ids=segments,
            kv_segment_ids=segments, log_forget=log_forget,
        )  # fmt: skip

    def backward(q, k, v, *masking):
        def loss(q, k, v, *masking):
            return jnp.sum(forward(q, k, v, *masking).astype(jnp.float32))

        return jax.grad(loss, argnums=(0, 1, 2, 5) if masking else (0, 1, 2))(q, k, v, *masking)

    for dtype, masking in [
        (jnp.float32, ()),
        (jnp.bfloat16, (positions, positions, log_forget)),
    ]:
        q = jax.ShapeDtypeStruct((batch, length, heads, head_size), dtype)
        k = v = jax.ShapeDtypeStruct((batch, length, groups, head_size), dtype)
        for function, kernels in ((forward, 1), (backward, 3)):
            assert_lowers(function, (q, k, v, *masking), target, kernels)


def test_op_dispatches_to_the_kernel_on_accelerators(monkeypatch):
    """With implementation None on a GPU backend, softmax_attention runs the GPU kernel (here
    in the interpreter); on CPU, asking for 'pallas' is an error."""
    arrays, options = case_arguments("window-forget", jnp.float32)
    expected = softmax_attention(**arrays, **options, implementation="reference")
    with pytest.raises(ValueError, match="'pallas' cannot run: .* not on cpu"):
        softmax_attention(**arrays, **options, implementation="pallas")
    calls = interpret_dispatch(
        monkeypatch, flash_attention_kernels, "flash_attention", INTERPRETED, "gpu"
    )
    actual = jax.jit(functools.partial(softmax_attention, **options))(**arrays)
    assert len(calls) == 1 and calls[0]["window"] == 7
    np.testing.assert_allclose(actual, expected, **FLOAT32)
