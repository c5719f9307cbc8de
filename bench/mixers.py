"""Training throughput, efficiency, compiled memory and decode latency of every registered
token mixer.

    python bench/mixers.py [--mixers a,b:option=value] [--lengths 256,1024,4096]
                           [--contexts 256,1024,4096] [--batch 4] [--d_model 256] [--out DIR]

Each mixer is built with its default options (or those after its name, as in
``mamba:implementation=reference``) at width d_model and measured alone, in the same run and
on the same inputs:

- training: forward+backward (gradients of every parameter and of the input) of one
  sequence batch [B, T, D]; tokens per second and the compiled temporary memory, per T.
- efficiency: the executable's FLOPs and bytes per token (bench/cost.py: XLA's cost rules
  with every loop counted as often as it runs), the FLOP/s achieved as a percentage of the
  machine's matmul peak (one large float32 matmul) and the bytes/s as a percentage of its
  copy bandwidth (one large elementwise pass), both measured in the same run.
- decoding: the latency of one token [B, 1, D] given the state left by a prefill of the
  context. A recurrent state has a fixed size, so the latency should not depend on the
  context; an attention mixer keeps a key/value cache of the context (its ``cache_length``
  is set to the context length) and attends over all of it.

Writes mixers.json and mixers.png to --out (default bench/results).
"""

import argparse
import ast
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    machine,
    markdown_table,
    median_seconds,
    save_json,
    time_compiled,
)
from bench.cost import executable_cost  # noqa: E402
from seqjax import layers  # noqa: E402


def parse_mixer(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:option=value:option=value`` (values as Python literals, else
    strings) as (name, options)."""
    name, *assignments = spec.split(":")
    options = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals:
            raise ValueError(
                f"--mixers: {spec!r}: expected option=value after ':', got {assignment!r}"
            )
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options


def build(spec: str, d_model: int, context: int | None = None):
    """The mixer split into its graph and parameters; a cache of ``context`` tokens if it
    keeps one."""
    name, options = parse_mixer(spec)
    if context is not None and "cache_length" in layers.mixer_options(name):
        options["cache_length"] = context
    mixer = layers.create(name, d_model=d_model, rngs=nnx.Rngs(0), **options)
    return nnx.split(mixer)


def machine_peaks(repeats: int, matmul_size: int = 2048, copy_mib: int = 256) -> dict:
    """The matmul FLOP/s of one [n, n] @ [n, n] float32 product and the copy bandwidth of
    one elementwise pass y = x + 1 over ``copy_mib`` MiB (read once, written once)."""
    a = jax.random.normal(jax.random.key(0), (matmul_size, matmul_size))
    matmul = time_compiled(jnp.matmul, a, a, repeats=repeats)
    x = jnp.zeros(copy_mib * 2**20 // 4)
    copy = time_compiled(lambda x: x + 1.0, x, repeats=repeats)
    return {
        "matmul_flops_per_s": 2.0 * matmul_size**3 / matmul,
        "copy_bytes_per_s": 2.0 * x.nbytes / copy,
    }


def training_step(graph):
    def loss(parameters, x):
        y, _ = nnx.merge(graph, parameters)(x)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    return jax.grad(loss, argnums=(0, 1))


def decode_step(graph):
    def step(parameters, state, token):
        return nnx.merge(graph, parameters)(token, state=state)

    return step


def measure_training(spec, batch, length, d_model, repeats, peaks) -> dict:
    graph, parameters = build(spec, d_model, context=length)
    x = jax.random.normal(jax.random.key(1), (batch, length, d_model))
    compiled = jax.jit(training_step(graph)).lower(parameters, x).compile()
    seconds = median_seconds(lambda: compiled(parameters, x), repeats)
    cost = executable_cost(compiled)
    tokens = batch * length
    return {
        "mixer": spec,
        "T": length,
        "train_tokens_per_s": tokens / seconds,
        "train_ms": seconds * 1e3,
        "train_temp_MiB": compiled.memory_analysis().temp_size_in_bytes / 2**20,
        "kFLOP_per_token": cost.flops / tokens / 1e3,
        "pct_matmul_peak": 100 * cost.flops / seconds / peaks["matmul_flops_per_s"],
        "kB_per_token": cost.bytes / tokens / 1e3,
        "pct_copy_bandwidth": 100 * cost.bytes / seconds / peaks["copy_bytes_per_s"],
    }


def measure_decoding(name, batch, context, d_model, repeats) -> dict:
    graph, parameters = build(name, d_model, context=context + 1)
    prompt = jax.random.normal(jax.random.key(2), (batch, context, d_model))
    _, state = jax.jit(lambda p, x: nnx.merge(graph, p)(x))(parameters, prompt)
    token = jax.random.normal(jax.random.key(3), (batch, 1, d_model))
    seconds = time_compiled(decode_step(graph), parameters, state, token, repeats=repeats)
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    return {
        "mixer": name,
        "context": context,
        "decode_ms_per_token": seconds * 1e3,
        "state_MiB": state_bytes / 2**20,
    }


def plot(training: list[dict], decoding: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 5))
    for name in sorted({r["mixer"] for r in training}):
        mine = [r for r in training if r["mixer"] == name]
        axes[0].plot([r["T"] for r in mine], [r["train_tokens_per_s"] for r in mine], "o-",
                     label=name)  # fmt: skip
        axes[1].plot([r["T"] for r in mine], [r["train_temp_MiB"] for r in mine], "o-")
        mine = [r for r in decoding if r["mixer"] == name]
        axes[2].plot([r["context"] for r in mine], [r["decode_ms_per_token"] for r in mine], "o-")
    axes[0].set(ylabel="training tokens/s (forward+backward)")
    axes[1].set(ylabel="compiled temporaries, MiB")
    axes[2].set(xlabel="context length", ylabel="decode latency per token, ms")
    for axis in axes[:2]:
        axis.set(xlabel="sequence length T")
    for axis in axes:
        axis.set(xscale="log", yscale="log")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=6, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mixers",
        default=",".join(layers.available()),
        help="comma-separated names, each optionally with :option=value pairs",
    )
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--contexts", default="256,1024,4096")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    specs = args.mixers.split(",")
    try:
        names = [parse_mixer(spec)[0] for spec in specs]
    except ValueError as error:
        parser.error(str(error))
    unknown = sorted(set(names) - set(layers.available()))
    if unknown:
        parser.error(f"--mixers: unknown {unknown}; available: {', '.join(layers.available())}")
    peaks = machine_peaks(args.repeats)
    training, decoding = [], []
    for spec in specs:
        for length in map(int, args.lengths.split(",")):
            training.append(
                measure_training(spec, args.batch, length, args.d_model, args.repeats, peaks)
            )
        for context in map(int, args.contexts.split(",")):
            decoding.append(measure_decoding(spec, args.batch, context, args.d_model, args.repeats))
        print(f"measured {spec}", flush=True)
    print(f"B={args.batch} D={args.d_model} float32, {machine()}")
    print(
        f"matmul peak {peaks['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s, "
        f"copy bandwidth {peaks['copy_bytes_per_s'] / 1e9:.1f} GB/s"
    )
    print(markdown_table(training, list(training[0])))
    print(markdown_table(decoding, list(decoding[0])))
    out = Path(args.out)
    save_json(
        out / "mixers.json",
        {"machine": machine(), "peaks": peaks, "batch": args.batch, "d_model": args.d_model,
         "training": training, "decoding": decoding},
    )  # fmt: skip
    plot(training, decoding, out / "mixers.png")
    print(f"saved {out / 'mixers.json'} and {out / 'mixers.png'}")


if __name__ == "__main__":
    main()
