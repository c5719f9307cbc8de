"""bench/scan.py at a tiny size: every implementation is timed against both floors, and the
cache eviction touches its whole scratch buffer."""

import math

import numpy as np

from bench import common, scan


def test_measure_reports_every_implementation_against_both_floors():
    rows = scan.measure(batch=2, length=16, features=8, repeats=2)
    assert [row["implementation"] for row in rows] == list(scan.IMPLEMENTATIONS)
    for row in rows:
        for key in ("floor_ms", "in_place_floor_ms", "forward_ms", "forward_backward_ms"):
            assert math.isfinite(row[key]) and row[key] > 0, key
        assert math.isclose(row["forward_x_floor"], row["forward_ms"] / row["floor_ms"])


def test_evict_caches_writes_all_of_its_buffer():
    common.evict_caches(num_bytes=8 * 1024)
    common.evict_caches(num_bytes=8 * 1024)
    scratch = common._scratch(8 * 1024)
    assert scratch.nbytes == 8 * 1024
    np.testing.assert_array_equal(scratch, 2)
    common._scratch.cache_clear()
