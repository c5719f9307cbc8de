"""Benchmark of the matrix-state ops against their reference form and softmax attention.

    python bench/linear_attention.py [--lengths 1024,4096,16384] [--out DIR]

Forward+backward time and compiled memory (arguments, outputs, temporaries) of
gated_linear_attention (chunked and reference, with a decay per head and per key),
delta_rule and generalized_delta_rule with a decay per key (RWKV-7's form), chunked and
reference, and causal softmax attention (chunked flash form), at
B=2, H=4, K=V=64, float32, all in the same run. Prints the chunked/reference speed-up and
writes linear_attention.json and linear_attention.png to --out (default bench/results).
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    compiled_memory,
    machine,
    markdown_table,
    save_json,
    time_compiled,
)
from seqjax.ops.attention import softmax_attention  # noqa: E402
from seqjax.ops.delta_rule import delta_rule, generalized_delta_rule  # noqa: E402
from seqjax.ops.linear_attention import gated_linear_attention  # noqa: E402

BATCH, HEADS, KEY_SIZE, VALUE_SIZE = 2, 4, 64, 64


def inputs(length: int) -> dict:
    keys = jax.random.split(jax.random.key(0), 8)
    shape = (BATCH, length, HEADS, KEY_SIZE)
    k = jax.random.normal(keys[1], shape)
    removal_key = jax.random.normal(keys[6], shape)
    removal_key /= jnp.linalg.norm(removal_key, axis=-1, keepdims=True)
    return {
        "q": jax.random.normal(keys[0], shape) * KEY_SIZE**-0.5,
        "k": k / jnp.linalg.norm(k, axis=-1, keepdims=True),
        "v": jax.random.normal(keys[2], (BATCH, length, HEADS, VALUE_SIZE)),
        "head_decay": -jax.random.uniform(keys[3], shape[:3], maxval=0.1),
        "key_decay": -jax.random.uniform(keys[4], shape, maxval=0.1),
        "beta": jax.random.uniform(keys[5], shape[:3]),
        "removal_key": removal_key,
        "removal_direction": jax.random.uniform(keys[7], shape) * removal_key,
    }


def cases(arrays: dict) -> dict:
    """name -> (differentiable args, function of them returning the output)."""
    q, k, v = arrays["q"], arrays["k"], arrays["v"]

    def gla(implementation, decay):
        return (q, k, v, arrays[decay]), lambda q, k, v, d: gated_linear_attention(
            q, k, v, log_decay=d, implementation=implementation
        )[0]

    def delta(implementation):
        return (q, k, v, arrays["beta"], arrays["head_decay"]), lambda q, k, v, b, d: delta_rule(
            q, k, v, b, log_decay=d, implementation=implementation
        )[0]

    def generalized(implementation):
        args = (q, k, v, arrays["removal_key"], arrays["removal_direction"], arrays["key_decay"])
        return args, lambda q, k, v, e, d, w: generalized_delta_rule(
            q, k, v, e, d, log_decay=w, implementation=implementation
        )[0]

    return {
        ("gla, decay per head", "chunked"): gla("chunked", "head_decay"),
        ("gla, decay per head", "reference"): gla("reference", "head_decay"),
        ("gla, decay per key", "chunked"): gla("chunked", "key_decay"),
        ("gla, decay per key", "reference"): gla("reference", "key_decay"),
        ("gated delta rule", "chunked"): delta("chunked"),
        ("gated delta rule", "reference"): delta("reference"),
        ("generalized delta rule, decay per key", "chunked"): generalized("chunked"),
        ("generalized delta rule, decay per key", "reference"): generalized("reference"),
        ("softmax attention", "chunked"): ((q, k, v), lambda q, k, v: softmax_attention(q, k, v)),
    }


def forward_backward(function, num_args):
    def run(*args):
        return jax.grad(lambda *a: jnp.sum(function(*a)), argnums=tuple(range(num_args)))(*args)

    return run


def measure(length: int, repeats: int) -> list[dict]:
    rows = []
    for (op, implementation), (args, function) in cases(inputs(length)).items():
        step = forward_backward(function, len(args))
        memory = compiled_memory(step, *args)
        rows.append(
            {
                "op": op,
                "implementation": implementation,
                "T": length,
                "forward_backward_ms": time_compiled(step, *args, repeats=repeats) * 1e3,
                "temp_MiB": memory["temp_bytes"] / 2**20,
                "inputs_MiB": memory["argument_bytes"] / 2**20,
                # What one [B, H, T, K, V] float32 buffer would take (as much as [B, H, T, T]
                # at T = 4096): the temporaries of a chunked form must stay well below it.
                "one_TKV_buffer_MiB": BATCH * HEADS * length * KEY_SIZE * VALUE_SIZE * 4 / 2**20,
            }
        )
    reference = {
        r["op"]: r["forward_backward_ms"] for r in rows if r["implementation"] != "chunked"
    }
    for row in rows:
        faster = reference.get(row["op"])
        row["reference_over_chunked"] = (
            faster / row["forward_backward_ms"]
            if faster and row["implementation"] == "chunked"
            else float("nan")
        )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted({(r["op"], r["implementation"]) for r in rows}):
        mine = [r for r in rows if (r["op"], r["implementation"]) == key]
        label = f"{key[0]} ({key[1]})"
        axes[0].plot([r["T"] for r in mine], [r["forward_backward_ms"] for r in mine], "o-",
                     label=label)  # fmt: skip
        axes[1].plot([r["T"] for r in mine], [r["temp_MiB"] for r in mine], "o-")
    axes[0].set(xscale="log", yscale="log", xlabel="T", ylabel="forward+backward ms")
    axes[1].set(xscale="log", yscale="log", xlabel="T", ylabel="compiled temporaries MiB")
    axes[0].legend(fontsize=7)
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    rows = []
    for length in map(int, args.lengths.split(",")):
        rows += measure(length, args.repeats)
        print(f"measured T={length}", flush=True)
    print(f"B={BATCH} H={HEADS} K=V={KEY_SIZE} float32, {machine()}")
    print(markdown_table(rows, list(rows[0])))
    out = Path(args.out)
    save_json(out / "linear_attention.json", {"machine": machine(), "rows": rows})
    plot(rows, out / "linear_attention.png")
    print(f"saved {out / 'linear_attention.json'} and {out / 'linear_attention.png'}")


if __name__ == "__main__":
    main()
