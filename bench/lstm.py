"""The seqjax LSTM and GRU against flax's ``nnx.RNN`` (``OptimizedLSTMCell``, ``GRUCell``)
and ``torch.nn.LSTM`` / ``torch.nn.GRU``.

    python bench/lstm.py [--cells lstm,gru] [--batch 16] [--lengths 128,512]
                         [--sizes 128,512] [--out DIR]

The same computation in all three: a single-layer LSTM or GRU (the reset gate applied after
the recurrent matmul, as in cuDNN, torch and flax) from inputs [B, T, D] to hidden states
[B, T, N] (N = D), from a zero state, float32, on the CPU. Forward time, and
forward+backward time (gradients of every weight and of the input for the loss Σ h²), each
measured in the same run, with the ratio peer time / seqjax time (above 1: seqjax is
faster). torch is an optional benchmark dependency (requirements-bench.txt); without it
the torch columns are left out. Writes lstm.json and lstm.png to --out.
"""

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, markdown_table, save_json, time_compiled  # noqa: E402
from seqjax.ops import cells  # noqa: E402

GATES = {"lstm": 4, "gru": 3}


def seqjax_rnn(name: str, weights: dict, x):
    """The input projection for all steps at once, then ``run_cell`` over the cell."""
    projected = x @ weights["input_kernel"] + weights["bias"]
    gate_inputs = tuple(jnp.split(projected, GATES[name], axis=-1))  # as the layers pass them
    hidden_size = weights["recurrent_kernel"].shape[0]
    zeros = jnp.zeros((x.shape[0], hidden_size), jnp.float32)
    if name == "lstm":
        lstm_weights = cells.LSTMWeights(weights["recurrent_kernel"], None)
        cell, state = (
            functools.partial(cells.lstm_cell, lstm_weights),
            cells.LSTMState(zeros, zeros),
        )
    else:
        gru_weights = cells.GRUWeights(weights["recurrent_kernel"], jnp.zeros(hidden_size))
        cell, state = functools.partial(cells.gru_cell, gru_weights), zeros
    hidden, _ = cells.run_cell(cell, gate_inputs, state)
    return hidden


def seqjax_functions(name: str, size: int):
    keys = jax.random.split(jax.random.key(0), 2)
    gates = GATES[name]
    weights = {
        "input_kernel": jax.random.normal(keys[0], (size, gates * size)) * size**-0.5,
        "recurrent_kernel": jax.random.normal(keys[1], (size, gates * size)) * size**-0.5,
        "bias": jnp.zeros((gates * size,)),
    }
    forward = functools.partial(seqjax_rnn, name)

    def loss(weights, x):
        return jnp.sum(forward(weights, x) ** 2)

    return weights, forward, jax.grad(loss, argnums=(0, 1))


def flax_functions(name: str, size: int):
    cell_class = nnx.OptimizedLSTMCell if name == "lstm" else nnx.GRUCell
    rnn = nnx.RNN(cell_class(size, size, rngs=nnx.Rngs(0)), rngs=False)
    graph, weights = nnx.split(rnn)

    def forward(weights, x):
        zeros = jnp.zeros((x.shape[0], size), jnp.float32)
        carry = (zeros, zeros) if name == "lstm" else zeros
        return nnx.merge(graph, weights)(x, initial_carry=carry)

    def loss(weights, x):
        return jnp.sum(forward(weights, x) ** 2)

    return weights, forward, jax.grad(loss, argnums=(0, 1))


def torch_times(
    name: str, batch: int, length: int, size: int, repeats: int
) -> tuple[float, float] | None:
    """Median forward and forward+backward seconds of torch.nn.LSTM or torch.nn.GRU, or None
    without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    lstm = (torch.nn.LSTM if name == "lstm" else torch.nn.GRU)(size, size, batch_first=True)
    x = torch.randn(batch, length, size, requires_grad=True)

    def forward():
        with torch.no_grad():
            lstm(x)

    def forward_backward():
        lstm.zero_grad(set_to_none=True)
        x.grad = None
        output, _ = lstm(x)
        (output**2).sum().backward()

    return median_seconds(forward, repeats), median_seconds(forward_backward, repeats)


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def check_same_function(name: str, size: int) -> None:
    """seqjax's cell equals flax's given the same weights. flax's LSTM stacks the gates as
    (input, forget, cell input, output), seqjax's as (cell input, input, forget, output);
    flax's GRU keeps z h + (1 - z) n, seqjax's (1 - u) h + u n, so u = 1 - z takes z's
    weights negated."""
    weights, forward, _ = flax_functions(name, size)
    flax_cell = weights["cell"]
    if name == "lstm":
        order, signs, bias = [2, 0, 1, 3], [1, 1, 1, 1], flax_cell["dense_h"]["bias"][...]
    else:
        order, signs, bias = [0, 1, 2], [1, -1, 1], flax_cell["dense_i"]["bias"][...]

    def reorder(array):
        blocks = jnp.split(array, len(order), axis=-1)
        return jnp.concatenate(
            [sign * blocks[i] for i, sign in zip(order, signs, strict=True)], axis=-1
        )

    mine = {
        "input_kernel": reorder(flax_cell["dense_i"]["kernel"][...]),
        "recurrent_kernel": reorder(flax_cell["dense_h"]["kernel"][...]),
        "bias": reorder(bias),
    }
    x = jax.random.normal(jax.random.key(5), (2, 7, size))
    np.testing.assert_allclose(seqjax_rnn(name, mine, x), forward(weights, x), rtol=1e-5, atol=1e-5)


def measure(name: str, batch: int, length: int, size: int, repeats: int) -> dict:
    x = jax.random.normal(jax.random.key(1), (batch, length, size))
    row = {"cell": name, "B": batch, "T": length, "D=N": size}
    for peer, functions in (("seqjax", seqjax_functions), ("flax", flax_functions)):
        weights, forward, gradient = functions(name, size)
        row[f"{peer}_forward_ms"] = time_compiled(forward, weights, x, repeats=repeats) * 1e3
        row[f"{peer}_forward_backward_ms"] = (
            time_compiled(gradient, weights, x, repeats=repeats) * 1e3
        )
    torch = torch_times(name, batch, length, size, repeats)
    if torch is not None:
        row["torch_forward_ms"], row["torch_forward_backward_ms"] = (t * 1e3 for t in torch)
    for peer in ("flax", "torch"):
        for part in ("forward", "forward_backward"):
            if f"{peer}_{part}_ms" in row:
                row[f"{peer}_over_seqjax_{part}"] = (
                    row[f"{peer}_{part}_ms"] / row[f"seqjax_{part}_ms"]
                )
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = [f"{r['cell']}\nT={r['T']}\nN={r['D=N']}" for r in rows]
    positions = np.arange(len(rows))
    peers = [p for p in ("flax", "torch") if f"{p}_over_seqjax_forward" in rows[0]]
    for axis, part in zip(axes, ("forward", "forward_backward"), strict=True):
        for offset, peer in enumerate(peers):
            values = [r[f"{peer}_over_seqjax_{part}"] for r in rows]
            axis.bar(positions + 0.4 * offset, values, width=0.4, label=f"{peer} / seqjax")
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks(positions + 0.2, labels, fontsize=7)
        axis.set(ylabel="time ratio (above 1: seqjax faster)", title=part.replace("_", " + "))
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="lstm,gru")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--sizes", default="128,512")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    names = args.cells.split(",")
    if unknown := sorted(set(names) - set(GATES)):
        parser.error(f"--cells: unknown {unknown}; expected lstm and/or gru")
    for name in names:
        check_same_function(name, 16)
    rows = [
        measure(name, args.batch, length, size, args.repeats)
        for name in names
        for size in map(int, args.sizes.split(","))
        for length in map(int, args.lengths.split(","))
    ]
    print(f"float32, {os.cpu_count()} CPU threads, {machine()}")
    print(markdown_table(rows, list(rows[0])))
    out = Path(args.out)
    save_json(out / "lstm.json", {"machine": machine(), "rows": rows})
    plot(rows, out / "lstm.png")
    print(f"saved {out / 'lstm.json'} and {out / 'lstm.png'}")


if __name__ == "__main__":
    main()
