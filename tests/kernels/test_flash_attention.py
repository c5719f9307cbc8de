"""kernels_pallas.flash_attention: the TPU and GPU kernels, run in the Pallas interpreter,
equal softmax_attention's reference on outputs and the gradients of q, k, v and the forget
gate, float32 and bfloat16, with grouped-query heads, sliding windows (blocks skipped),
segments, KV-cache positions with empty slots and rows with no key, at lengths that are not
multiples of the blocks; a packed segment after strong forget gates equals it alone, with no
gradient at the earlier inputs; the kernels lower for TPU (Mosaic) and CUDA (Triton), forward
and backward; the op dispatches to them."""

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


# Packed segments, the construction of tests/ops/test_packed_segments.py: the later segment
# [LATER, PACKED_LENGTH) after keys of log forget -1e4 per step, starting inside the first
# key block and running through two more (blocks of 16).
PACKED_LENGTH, LATER, STRONG_LOG_FORGET = 40, 10, -1e4


def packed_arrays():
    rng = np.random.default_rng(2)
    per_key = (1, PACKED_LENGTH, 2, 4)  # two query heads read one key/value head

    def normal(shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    log_forget = np.log(rng.uniform(0.7, 1.0, per_key[:3])).astype(np.float32)
    log_forget[:, :LATER] = STRONG_LOG_FORGET
    return dict(
        q=normal(per_key), k=normal((1, PACKED_LENGTH, 1, 4)) / 2,
        v=normal((1, PACKED_LENGTH, 1, 4)), log_forget=jnp.asarray(log_forget),
    )  # fmt: skip


def packed_ids():
    return jnp.asarray((np.arange(PACKED_LENGTH) >= LATER)[None], jnp.int32)


@functools.partial(jax.jit, static_argnums=(0,))
def packed_and_alone(attention, arrays):
    """The outputs of the packed sequence, the later segment's run alone, and the gradient
    of Σ cotangent · (the packed later segment's outputs) with respect to every input."""
    ids = packed_ids()
    packed, pullback = jax.vjp(
        lambda arrays: attention(**arrays, q_segment_ids=ids, kv_segment_ids=ids), arrays
    )
    cotangent = np.random.default_rng(3).normal(size=packed.shape).astype(np.float32)
    cotangent[:, :LATER] = 0.0
    (gradient,) = pullback(cotangent)
    alone = attention(**{name: x[:, LATER:] for name, x in arrays.items()})
    return packed, alone, gradient


def test_a_segment_after_strong_forget_gates_is_independent_of_them():
    """The forget gate's cumulative sum restarts at the segment: summed from the first key,
    the later segment's F_i - F_j would cancel -1e4 per earlier key (here off by about 1e-3
    of the largest output) and pass a gradient to the earlier gates. Packed equals alone, the
    gradient is exactly zero at every earlier input, and values and gradients equal the
    reference's."""
    arrays = packed_arrays()
    reference = functools.partial(softmax_attention, implementation="reference")
    expected_packed, _, expected_gradient = packed_and_alone(reference, arrays)
    for platform, kernel in INTERPRETED.items():
        packed, alone, gradient = packed_and_alone(kernel, arrays)
        np.testing.assert_allclose(packed[:, LATER:], alone, **FLOAT32, err_msg=platform)
        np.testing.assert_allclose(packed, expected_packed, **FLOAT32, err_msg=platform)
        for name, g in gradient.items():
            what = f"{platform}: {name}"
            g = np.asarray(g)
            assert np.all(g[:, :LATER] == 0.0), f"{what}: the later segment reads the earlier one"
            assert np.any(g[:, LATER:] != 0.0), f"{what}: the later segment reads none of itself"
            np.testing.assert_allclose(g, expected_gradient[name], **FLOAT32, err_msg=what)


def test_a_nonfinite_forget_gate_reaches_no_later_segment(monkeypatch):
    """Through the op on a GPU backend (the kernel in the interpreter): a NaN gate in the
    earlier segment makes its later outputs NaN, as in the reference, and leaves the later
    segment's outputs those of the segment alone (F restarts there)."""
    arrays = packed_arrays()
    arrays["log_forget"] = arrays["log_forget"].at[0, LATER // 2, 0].set(jnp.nan)
    ids = dict(q_segment_ids=packed_ids(), kv_segment_ids=packed_ids())

    @jax.jit
    def reference_packed_and_alone(arrays):
        run = functools.partial(softmax_attention, implementation="reference")
        return run(**arrays, **ids), run(**{name: x[:, LATER:] for name, x in arrays.items()})

    expected, alone = reference_packed_and_alone(arrays)
    interpret_dispatch(monkeypatch, flash_attention_kernels, "flash_attention", INTERPRETED, "gpu")
    actual = jax.jit(lambda arrays: softmax_attention(**arrays, **ids))(arrays)
    np.testing.assert_allclose(actual, expected, **FLOAT32)  # NaN where the reference's are
    assert np.all(np.isnan(actual[:, LATER // 2 : LATER, 0]))
    np.testing.assert_allclose(actual[:, LATER:], alone, **FLOAT32)


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
