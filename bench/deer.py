"""Parallel Newton evaluation of nonlinear RNNs (DEER, quasi-DEER) against the sequential scan.

    python bench/deer.py [--cells gru,lstm] [--lengths 1024,4096,16384] [--batch 1]
                         [--hidden 32] [--out DIR]

For each cell and length, in the same run: the iterations each form takes to converge (to
run_cell's default tolerance), the median forward and forward+backward time of run_cell with
implementation "reference" (lax.scan), "deer" (full Jacobian) and "quasi_deer" (its
diagonal), their ratio to the reference, and the largest difference of the outputs and of the
gradients from the reference's (relative to the largest magnitude). Weights are N(0, 1/N),
gate inputs N(0, 1). Writes deer.json to --out (default bench/results).
"""

import argparse
import functools
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, markdown_table, median_seconds, save_json  # noqa: E402
from seqjax.ops import cells, deer  # noqa: E402

FORMS = {"reference": None, "deer": "full", "quasi_deer": "diagonal"}


def case(name: str, batch: int, length: int, hidden: int):
    """(cell with its weights, gate inputs [B, T, G], initial state, flat step for deer)."""
    rng = np.random.default_rng(0)
    gates = {"gru": 3, "lstm": 4}[name]
    kernel = jnp.asarray(rng.normal(size=(hidden, gates * hidden)) / np.sqrt(hidden), jnp.float32)
    gate_inputs = jnp.asarray(rng.normal(size=(batch, length, gates * hidden)), jnp.float32)
    if name == "gru":
        cell = functools.partial(cells.gru_cell, cells.GRUWeights(kernel, jnp.zeros(hidden)))
        initial_state = jnp.zeros((batch, hidden))

        def flat_step(state, x):
            return cell(state, x)[0]

    else:
        cell = functools.partial(cells.lstm_cell, cells.LSTMWeights(kernel, None))
        initial_state = cells.LSTMState(jnp.zeros((batch, hidden)), jnp.zeros((batch, hidden)))

        def flat_step(state, x):
            new, _ = cell(cells.LSTMState(*jnp.split(state, 2, axis=-1)), x)
            return jnp.concatenate([new.hidden, new.cell], axis=-1)

    return cell, gate_inputs, initial_state, flat_step


def relative_difference(actual, expected) -> float:
    errors = jax.tree.map(
        lambda a, e: float(jnp.max(jnp.abs(a - e)) / jnp.maximum(jnp.max(jnp.abs(e)), 1e-30)),
        actual,
        expected,
    )
    return max(jax.tree.leaves(errors))


def measure(
    name: str, batch: int, length: int, hidden: int, repeats: int, warmup_seconds: float = 1.0
) -> list[dict]:
    cell, gate_inputs, initial_state, flat_step = case(name, batch, length, hidden)

    def forward(gate_inputs, implementation):
        return cells.run_cell(cell, gate_inputs, initial_state, implementation=implementation)[0]

    def gradient(gate_inputs, implementation):
        return jax.grad(lambda g: jnp.sum(jnp.sin(forward(g, implementation))))(gate_inputs)

    flat_initial = jnp.concatenate(jax.tree.leaves(initial_state), axis=-1)
    rows, reference = [], {}
    for implementation, jacobian in FORMS.items():
        run = jax.jit(functools.partial(forward, implementation=implementation))
        run = run.lower(gate_inputs).compile()
        grad = jax.jit(functools.partial(gradient, implementation=implementation))
        grad = grad.lower(gate_inputs).compile()
        outputs, grads = run(gate_inputs), grad(gate_inputs)
        if implementation == "reference":
            reference = {"outputs": outputs, "grads": grads}
            iterations = length
        else:
            _, iterations = jax.jit(
                lambda g, jacobian=jacobian: deer.parallel_newton(
                    flat_step, flat_initial, jnp.swapaxes(g, 0, 1), jacobian=jacobian
                )
            )(gate_inputs)
        rows.append(
            {
                "cell": name,
                "T": length,
                "implementation": implementation,
                "iterations": int(iterations),
                "forward_ms": 1e3
                * median_seconds(
                    lambda run=run: run(gate_inputs), repeats, warmup_seconds=warmup_seconds
                ),
                "fwd_bwd_ms": 1e3
                * median_seconds(
                    lambda grad=grad: grad(gate_inputs), repeats, warmup_seconds=warmup_seconds
                ),
                "output_rel_diff": relative_difference(outputs, reference["outputs"]),
                "grad_rel_diff": relative_difference(grads, reference["grads"]),
            }
        )
    for row in rows:
        row["forward_x_reference"] = row["forward_ms"] / rows[0]["forward_ms"]
        row["fwd_bwd_x_reference"] = row["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default="gru,lstm")
    parser.add_argument("--lengths", default="1024,4096,16384")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    rows = []
    for name in args.cells.split(","):
        if name not in ("gru", "lstm"):
            parser.error(f"--cells: expected gru or lstm, got {name!r}")
        for length in map(int, args.lengths.split(",")):
            rows += measure(name, args.batch, length, args.hidden, args.repeats)
            print(f"measured {name} T={length}", flush=True)
    print(f"B={args.batch} N={args.hidden} float32, {machine()}")
    print(markdown_table(rows, list(rows[0])))
    save_json(
        Path(args.out) / "deer.json",
        {"machine": machine(), "batch": args.batch, "hidden": args.hidden, "rows": rows},
    )


if __name__ == "__main__":
    main()
