"""bench/cost.py counts a compiled executable's FLOPs and bytes with its loops run as often as
they run (where XLA's own cost analysis counts a loop body once), agrees with XLA where there
is no loop, and counts an in-place update of one step as one step; bench/mixers.py reads
mixer options after a name and reports the efficiency columns."""

import math

import jax
import jax.numpy as jnp
import pytest

from bench import mixers
from bench.cost import executable_cost

SIZE, STEPS = 32, 50


def compiled(function, *args):
    return jax.jit(function).lower(*args).compile()


def test_a_loop_is_counted_once_per_trip():
    def loop(x, w):
        return jax.lax.fori_loop(0, STEPS, lambda i, x: jnp.tanh(x @ w) + 1.0, x)

    x = jnp.ones((SIZE, SIZE))
    executable = compiled(loop, x, x)
    cost = executable_cost(executable)
    one_matmul = 2 * SIZE**3
    assert cost.flops >= STEPS * one_matmul
    assert cost.flops <= STEPS * (one_matmul + 4 * SIZE**2)
    assert cost.transcendentals == STEPS * SIZE**2  # one tanh per element per step
    assert cost.unknown_loops == 0
    # What this corrects: XLA counts the body once.
    assert executable.cost_analysis()["flops"] < 2 * one_matmul


def test_without_loops_it_agrees_with_xla():
    def fused(x, w):
        return jnp.sum(jnp.exp(x @ w) * 2.0 + x, axis=0)

    x = jnp.ones((SIZE, SIZE))
    executable = compiled(fused, x, x)
    cost, xla = executable_cost(executable), executable.cost_analysis()
    assert math.isclose(cost.flops, xla["flops"], rel_tol=0.01)
    assert cost.transcendentals == xla["transcendentals"]
    assert cost.bytes == xla["bytes accessed"]


def test_an_in_place_update_moves_one_step():
    def rows(x):
        def step(t, h):
            row = jax.lax.dynamic_index_in_dim(h, t, keepdims=False)
            return jax.lax.dynamic_update_index_in_dim(h, 2.0 * row, t, axis=0)

        return jax.lax.fori_loop(0, STEPS, step, x)

    x = jnp.ones((STEPS, 1024))
    cost = executable_cost(compiled(rows, x))
    row_bytes = 1024 * 4
    # Each step reads a row and writes one; a whole-buffer count would be STEPS times more.
    assert cost.bytes <= STEPS * 4 * row_bytes + 4 * x.nbytes, cost.bytes


def test_mixer_specs_carry_options():
    assert mixers.parse_mixer("mamba") == ("mamba", {})
    assert mixers.parse_mixer("mamba:implementation=reference:chunk_size=32") == (
        "mamba",
        {"implementation": "reference", "chunk_size": 32},
    )
    with pytest.raises(ValueError, match="expected option=value after ':'"):
        mixers.parse_mixer("mamba:reference")


def test_training_rows_report_efficiency():
    peaks = mixers.machine_peaks(repeats=1, matmul_size=64, copy_mib=1)
    assert all(value > 0 for value in peaks.values())
    row = mixers.measure_training("mamba:chunk_size=4", 1, 8, 16, 1, peaks)
    assert row["mixer"] == "mamba:chunk_size=4"
    for key in ("kFLOP_per_token", "pct_matmul_peak", "kB_per_token", "pct_copy_bandwidth"):
        assert math.isfinite(row[key]) and row[key] > 0, key
