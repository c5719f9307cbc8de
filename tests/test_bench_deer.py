"""bench/deer.py at a tiny size: every form is timed against the sequential reference in the
same run, converges within T iterations and matches the reference's outputs and gradients."""

import math

from bench import deer


def test_measure_times_every_form_against_the_reference():
    rows = deer.measure("lstm", batch=1, length=8, hidden=4, repeats=1, warmup_seconds=0)
    assert [row["implementation"] for row in rows] == list(deer.FORMS)
    for row in rows:
        assert 1 <= row["iterations"] <= 8
        assert row["output_rel_diff"] <= 1e-5 and row["grad_rel_diff"] <= 1e-5
        assert math.isclose(row["forward_x_reference"], row["forward_ms"] / rows[0]["forward_ms"])
