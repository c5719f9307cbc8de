"""Benchmark of linear_recurrence against the memory-bandwidth floor.

    python bench/scan.py [--lengths 1024,4096,16384] [--batch 8] [--features 512] [--out DIR]
                         [--default-allocator]

For each implementation and length: forward and forward+backward time, each divided by the
time of one elementwise pass over the same arrays (h = a * x, measured in the same run: the
floor for a memory-bound op), and the compiled temporary memory of forward+backward. Every
call is timed with the CPU caches evicted, so at T=1024, where a and x fit in a 32 MiB
last-level cache, the floor is not a cache-speed pass. ``in_place_floor_ms`` is the same pass
written over a donated buffer: what it costs without allocating its output. glibc is told to
keep freed memory (``bench.common.keep_freed_memory``) unless ``--default-allocator``: with
its defaults the op and the floor pay page faults for fresh buffers in some runs and not in
others, and a floor that faults is not the bandwidth floor.
Writes scan.json and scan.png to --out (default bench/results).
"""

import argparse
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    compiled_memory,
    keep_freed_memory,
    machine,
    markdown_table,
    median_seconds,
    save_json,
    time_compiled,
)
from seqjax.ops.scan import _resolve, linear_recurrence  # noqa: E402

IMPLEMENTATIONS = ("reference", "associative", "chunked")


def forward(implementation):
    def run(a, x):
        return linear_recurrence(a, x, implementation=implementation)[0]

    return run


def forward_backward(implementation):
    """The forward pass and the pullback of a dense cotangent on h and the final state."""

    def run(a, x, h_cotangent, final_cotangent):
        def recurrence(a, x):
            return linear_recurrence(a, x, implementation=implementation)

        _, pullback = jax.vjp(recurrence, a, x)
        return pullback((h_cotangent, final_cotangent))

    return run


def elementwise_pass(a, x):
    return a * x


def time_in_place_pass(a, x, repeats: int) -> float:
    """Median seconds of ``a * x`` written over a donated buffer, caches evicted before each
    call: the pass without allocating its output. On the CPU XLA backs a new buffer of tens
    of MiB with fresh pages, so a pass that allocates pays a page fault every 4 KiB (at
    T=4096 that took 4-5x the pass itself)."""
    compiled = jax.jit(elementwise_pass, donate_argnums=1).lower(a, x).compile()
    buffer = [x.copy()]

    def run():
        buffer[0] = compiled(a, buffer[0])
        return buffer[0]

    return median_seconds(run, repeats, cold_cache=True)


def measure(batch: int, length: int, features: int, repeats: int) -> list[dict]:
    keys = jax.random.split(jax.random.key(0), 4)
    a = jax.random.uniform(keys[0], (batch, length, features), minval=0.5, maxval=1.0)
    x = jax.random.normal(keys[1], (batch, length, features))
    cotangents = (
        jax.random.normal(keys[2], (batch, length, features)),
        jax.random.normal(keys[3], (batch, features)),
    )
    floor = time_compiled(elementwise_pass, a, x, repeats=repeats, cold_cache=True)
    in_place_floor = time_in_place_pass(a, x, repeats)
    rows = []
    for implementation in IMPLEMENTATIONS:
        forward_time = time_compiled(
            forward(implementation), a, x, repeats=repeats, cold_cache=True
        )
        backward_time = time_compiled(
            forward_backward(implementation), a, x, *cotangents, repeats=repeats, cold_cache=True
        )
        memory = compiled_memory(forward_backward(implementation), a, x, *cotangents)
        rows.append(
            {
                "implementation": implementation,
                "T": length,
                "floor_ms": floor * 1e3,
                "in_place_floor_ms": in_place_floor * 1e3,
                "forward_ms": forward_time * 1e3,
                "forward_x_floor": forward_time / floor,
                "forward_backward_ms": backward_time * 1e3,
                "forward_backward_x_floor": backward_time / floor,
                "forward_backward_temp_MiB": memory["temp_bytes"] / 2**20,
            }
        )
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for implementation in IMPLEMENTATIONS:
        mine = [r for r in rows if r["implementation"] == implementation]
        lengths = [r["T"] for r in mine]
        axes[0].plot(lengths, [r["forward_x_floor"] for r in mine], "o-", label=implementation)
        axes[1].plot(lengths, [r["forward_backward_x_floor"] for r in mine], "o-")
    for axis, title in zip(axes, ["forward", "forward + backward"], strict=True):
        axis.set(xscale="log", xlabel="sequence length T", ylabel="time / elementwise pass")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument(
        "--default-allocator", action="store_true", help="leave glibc's malloc settings as they are"
    )
    args = parser.parse_args()
    kept = not args.default_allocator and keep_freed_memory()
    allocator = "freed memory kept" if kept else "default"
    rows = []
    for length in map(int, args.lengths.split(",")):
        rows += measure(args.batch, length, args.features, args.repeats)
    columns = list(rows[0])
    print(
        f"B={args.batch} F={args.features} float32, default: {_resolve(None)}, "
        f"allocator: {allocator}, {machine()}"
    )
    print(markdown_table(rows, columns))
    out = Path(args.out)
    save_json(
        out / "scan.json",
        {"machine": machine(), "batch": args.batch, "features": args.features,
         "default_implementation": _resolve(None), "allocator": allocator, "rows": rows},
    )  # fmt: skip
    plot(rows, out / "scan.png")
    print(f"saved {out / 'scan.json'} and {out / 'scan.png'}")


if __name__ == "__main__":
    main()
