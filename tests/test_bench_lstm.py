"""bench/lstm.py compares the same function: seqjax's LSTM and GRU equal flax's cells given
the same weights; a tiny measurement reports every peer's ratio to seqjax."""

import math

import pytest

from bench import lstm


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_seqjax_and_flax_compute_the_same_cell(name):
    lstm.check_same_function(name, 8)


def test_measure_reports_each_peer_against_seqjax():
    row = lstm.measure("gru", batch=2, length=4, size=8, repeats=1)
    for peer in ("flax", "torch"):
        for part in ("forward", "forward_backward"):
            ratio = row[f"{peer}_over_seqjax_{part}"]
            assert math.isclose(ratio, row[f"{peer}_{part}_ms"] / row[f"seqjax_{part}_ms"])
