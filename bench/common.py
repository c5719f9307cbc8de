"""Shared benchmark helpers: timing compiled functions, compiled memory, saving results."""

import ctypes
import ctypes.util
import functools
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np


def time_compiled(
    function: Callable,
    *args,
    repeats: int = 5,
    warmup_seconds: float = 1.0,
    cold_cache: bool = False,
) -> float:
    """Median wall time in seconds of a jitted ``function(*args)``, compiled beforehand
    (see ``median_seconds`` for the warm-up and ``cold_cache``)."""
    compiled = jax.jit(function).lower(*args).compile()
    return median_seconds(
        lambda: compiled(*args), repeats, warmup_seconds=warmup_seconds, cold_cache=cold_cache
    )


def median_seconds(
    run: Callable[[], Any], repeats: int, *, warmup_seconds: float = 1.0, cold_cache: bool = False
) -> float:
    """Median wall time in seconds of ``run()`` (its result awaited), after running it for
    ``warmup_seconds`` (at least once): on CPU the first calls after compiling ran up to 1.6x
    slower than the steady state a training loop sees. ``cold_cache`` evicts the CPU caches
    before each timed call (``evict_caches``), so arrays that fit in the last-level cache are
    read from memory like larger ones."""
    warmup_end = time.perf_counter() + warmup_seconds
    jax.block_until_ready(run())
    while time.perf_counter() < warmup_end:
        jax.block_until_ready(run())
    times = []
    for _ in range(repeats):
        if cold_cache:
            evict_caches()
        start = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


# mallopt parameters of glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep the memory it frees: one arena, no mmap'd chunks, no
    trimming (``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0`` and a 2 GiB trim threshold). By
    default a freed buffer of 64 MiB or more goes back to the system, and smaller ones do
    when the free top of the heap passes the trim threshold, so the next call pays a page
    fault for every page it touches (16,385 per call of a 64 MiB pass under XLA), in some
    runs and not in others. Call it before the first
    array is made. Returns False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)


@functools.lru_cache(maxsize=1)
def _scratch(num_bytes: int) -> np.ndarray:
    return np.zeros(num_bytes // 8, np.int64)


def evict_caches(num_bytes: int = 256 * 2**20) -> None:
    """Reads and writes ``num_bytes`` of scratch memory (more than the last-level cache of
    current CPUs), so the next call finds none of its inputs in cache."""
    scratch = _scratch(num_bytes)
    np.add(scratch, 1, out=scratch)


def compiled_memory(function: Callable, *args) -> dict[str, int]:
    """Bytes XLA plans for arguments, outputs and temporaries of ``jit(function)(*args)``."""
    analysis = jax.jit(function).lower(*args).compile().memory_analysis()
    return {
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
    }


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": str(jax.device_count()),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
    }


def save_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
