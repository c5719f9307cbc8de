"""bench/scan.py at a tiny size: every implementation is timed against both floors, the
cache eviction touches its whole scratch buffer, and keep_freed_memory stops a freed buffer
from being faulted in again."""

import math
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


FRESH_BUFFER_FAULTS = """
import resource, sys
import numpy as np
from bench.common import keep_freed_memory
if sys.argv[1] == "kept":
    assert keep_freed_memory()
def faults_of_a_fresh_buffer():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = np.ones(2**24, np.float32)  # 64 MiB, every page written
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_fresh_buffer()
print(faults_of_a_fresh_buffer())
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)
def test_keep_freed_memory_stops_faults_on_a_reallocated_buffer():
    """A second 64 MiB buffer gets fresh pages from glibc by default (faulted in as they are
    touched), and reuses the freed ones once keep_freed_memory has run (run in subprocesses,
    so this process's allocator is left as it is)."""
    root = Path(__file__).resolve().parents[1]
    faults = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", FRESH_BUFFER_FAULTS, mode],
                cwd=root, capture_output=True, text=True, check=True,
            ).stdout
        )
        for mode in ("default", "kept")
    }  # fmt: skip
    assert faults["kept"] * 10 < faults["default"], faults
