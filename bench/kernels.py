"""Benchmark of the Pallas kernels against the XLA form of the same op, in the same run.

    python bench/kernels.py [--batch 4] [--length 4096] [--out DIR]

For linear_recurrence (kernel vs "associative"), gated_linear_attention, delta_rule and
causal softmax_attention (kernel vs "chunked"), forward and forward+backward: median time,
and the achieved memory bandwidth (linear_recurrence, memory-bound) or matmul FLOP/s (the
others) as a fraction of the device's peak where the device is known. The kernels run on
TPU and GPU only; on CPU the script says so and times the XLA forms alone. Writes
kernels.json to --out (default bench/results).
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, markdown_table, save_json, time_compiled  # noqa: E402
from seqjax.ops.attention import softmax_attention  # noqa: E402
from seqjax.ops.delta_rule import delta_rule  # noqa: E402
from seqjax.ops.linear_attention import gated_linear_attention  # noqa: E402
from seqjax.ops.scan import linear_recurrence  # noqa: E402

# Published peaks per device kind: HBM bytes/s, dense bfloat16 matmul FLOP/s.
PEAKS = {
    "NVIDIA H100 80GB HBM3": (3.35e12, 989e12),
    "NVIDIA H200": (4.8e12, 989e12),
    "NVIDIA A100-SXM4-80GB": (2.0e12, 312e12),
    "TPU v4": (1.2e12, 275e12),
    "TPU v5 lite": (0.82e12, 197e12),
    "TPU v5": (2.76e12, 459e12),
    "TPU v6 lite": (1.64e12, 918e12),
}


def scan_case(batch, length, features, dtype):
    keys = jax.random.split(jax.random.key(0), 2)
    a = jax.random.uniform(keys[0], (batch, length, features), minval=0.5, maxval=1.0)
    x = jax.random.normal(keys[1], (batch, length, features))
    arrays = (a.astype(dtype), x.astype(dtype))

    def run(implementation, backward):
        def forward(a, x):
            return linear_recurrence(a, x, implementation=implementation)

        if not backward:
            return forward

        def loss(a, x):
            h, final = forward(a, x)
            return jnp.sum(h.astype(jnp.float32)) + jnp.sum(final)

        return jax.grad(loss, argnums=(0, 1))

    itemsize = jnp.dtype(dtype).itemsize
    # forward: read a, x, write h; backward adds read a, h, dh, write da, dx, delta.
    moved = {False: 3, True: 9}
    return (
        "linear_recurrence",
        "associative",
        arrays,
        run,
        {
            backward: count * batch * length * features * itemsize
            for backward, count in moved.items()
        },
    )


def gla_case(batch, length, heads, key_size, value_size, dtype, chunk_size=64):
    keys = jax.random.split(jax.random.key(1), 4)
    q = jax.random.normal(keys[0], (batch, length, heads, key_size)) * key_size**-0.5
    k = jax.random.normal(keys[1], (batch, length, heads, key_size)) * key_size**-0.5
    v = jax.random.normal(keys[2], (batch, length, heads, value_size))
    log_decay = jnp.log(jax.random.uniform(keys[3], (batch, length, heads, key_size), minval=0.9))
    arrays = (q.astype(dtype), k.astype(dtype), v.astype(dtype), log_decay)

    def run(implementation, backward):
        def forward(q, k, v, log_decay):
            return gated_linear_attention(
                q, k, v, log_decay=log_decay, chunk_size=chunk_size, implementation=implementation
            )

        if not backward:
            return forward

        def loss(*args):
            output, final = forward(*args)
            return jnp.sum(output.astype(jnp.float32)) + jnp.sum(final)

        return jax.grad(loss, argnums=(0, 1, 2, 3))

    # Matmul FLOPs per chunk and head: scores C·C·K, outputs C·C·V, state in and out 2·C·K·V.
    per_token = (
        2 * heads * (chunk_size * key_size + chunk_size * value_size + 2 * key_size * value_size)
    )
    flops = batch * length * per_token
    return "gated_linear_attention", "chunked", arrays, run, {False: flops, True: 3 * flops}


def delta_rule_case(batch, length, heads, key_size, value_size, dtype, chunk_size=64):
    keys = jax.random.split(jax.random.key(2), 5)
    q = jax.random.normal(keys[0], (batch, length, heads, key_size)) * key_size**-0.5
    k = jax.random.normal(keys[1], (batch, length, heads, key_size))
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    v = jax.random.normal(keys[2], (batch, length, heads, value_size))
    beta = jax.random.uniform(keys[3], (batch, length, heads), maxval=2.0)
    log_decay = jnp.log(jax.random.uniform(keys[4], (batch, length, heads), minval=0.9))
    arrays = (q.astype(dtype), k.astype(dtype), v.astype(dtype), beta.astype(dtype), log_decay)

    def run(implementation, backward):
        def forward(q, k, v, beta, log_decay):
            return delta_rule(
                q, k, v, beta, log_decay=log_decay, chunk_size=chunk_size,
                implementation=implementation,
            )  # fmt: skip

        if not backward:
            return forward

        def loss(*args):
            output, final = forward(*args)
            return jnp.sum(output.astype(jnp.float32)) + jnp.sum(final)

        return jax.grad(loss, argnums=(0, 1, 2, 3, 4))

    # Matmul FLOPs per chunk and head: K Kᵀ and Q Kᵀ (C·C·K each), the triangular inverse
    # (2 log2(C) products of C·C·C), U and the outputs (C·C·V each), the state read by keys
    # and queries and written (C·K·V each).
    inverse = 2 * (chunk_size.bit_length() - 1) * chunk_size**3
    per_chunk = 2 * chunk_size**2 * key_size + inverse + 2 * chunk_size**2 * value_size
    per_chunk += 3 * chunk_size * key_size * value_size
    flops = 2 * batch * heads * (length // chunk_size) * per_chunk
    return "delta_rule", "chunked", arrays, run, {False: flops, True: 3 * flops}


def attention_case(batch, length, heads, groups, head_size, dtype):
    keys = jax.random.split(jax.random.key(3), 3)
    q = jax.random.normal(keys[0], (batch, length, heads, head_size))
    k = jax.random.normal(keys[1], (batch, length, groups, head_size))
    v = jax.random.normal(keys[2], (batch, length, groups, head_size))
    arrays = (q.astype(dtype), k.astype(dtype), v.astype(dtype))

    def run(implementation, backward):
        def forward(q, k, v):
            return softmax_attention(q, k, v, causal=True, implementation=implementation)

        if not backward:
            return forward

        def loss(*args):
            return jnp.sum(forward(*args).astype(jnp.float32))

        return jax.grad(loss, argnums=(0, 1, 2))

    # Causal: half of Q Kᵀ and P V (2·T·T·K each, multiply-adds); the backward pass adds
    # the recomputed Q Kᵀ, dO Vᵀ, dV, dQ and dK (2.5 times the forward's matmuls).
    flops = 2 * batch * heads * length * length * head_size
    return "softmax_attention", "chunked", arrays, run, {False: flops, True: 3.5 * flops}


def measure(case, kernels_available, repeats):
    op, xla_form, arrays, run, work = case
    rows = []
    for backward in (False, True):
        row = {"op": op, "pass": "forward+backward" if backward else "forward", "xla": xla_form}
        xla_time = time_compiled(run(xla_form, backward), *arrays, repeats=repeats)
        row["xla_ms"] = xla_time * 1e3
        row["work"] = work[backward]
        if kernels_available:
            kernel_time = time_compiled(run("pallas", backward), *arrays, repeats=repeats)
            row["pallas_ms"] = kernel_time * 1e3
            row["xla_over_pallas"] = xla_time / kernel_time
            row["pallas_work_per_s"] = work[backward] / kernel_time
        row["xla_work_per_s"] = work[backward] / xla_time
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    backend = jax.default_backend()
    kernels_available = backend in ("tpu", "gpu")
    if not kernels_available:
        print(f"The Pallas kernels need a TPU or GPU; on {backend} only the XLA forms are timed.")
    dtype = jnp.dtype(args.dtype)
    device_kind = machine()["device"]
    bandwidth, matmul = PEAKS.get(device_kind, (None, None))
    rows = []
    cases = [
        (scan_case(args.batch, args.length, 1024, dtype), bandwidth, "bytes"),
        (gla_case(args.batch, args.length, 8, 128, 128, dtype), matmul, "FLOP"),
        (delta_rule_case(args.batch, args.length, 8, 128, 128, dtype), matmul, "FLOP"),
        (attention_case(args.batch, args.length, 8, 2, 128, dtype), matmul, "FLOP"),
    ]
    for case, peak, unit in cases:
        for row in measure(case, kernels_available, args.repeats):
            row["unit"] = unit
            for key in [key for key in row if key.endswith("work_per_s")]:
                row[key.replace("work_per_s", "of_peak")] = row[key] / peak if peak else "n/a"
            rows.append(row)
    print(f"B={args.batch} T={args.length} {args.dtype}, {machine()}")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    print(markdown_table([{c: row.get(c, "") for c in columns} for row in rows], columns))
    out = Path(args.out)
    save_json(
        out / "kernels.json",
        {"machine": machine(), "batch": args.batch, "length": args.length,
         "dtype": args.dtype, "peaks": {"bytes_per_s": bandwidth, "flop_per_s": matmul},
         "kernels_timed": kernels_available, "rows": rows},
    )  # fmt: skip
    print(f"saved {out / 'kernels.json'}")


if __name__ == "__main__":
    main()
