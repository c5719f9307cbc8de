"""Helpers of the kernel tests: lowering a kernel for another platform, and running an op's
dispatch to its kernels in the Pallas interpreter.

On a TPU or GPU machine, ``SEQJAX_KERNEL_TESTS_ON_DEVICE=1 JAX_PLATFORMS=cuda`` (or ``tpu``)
runs the same tests with that device's kernels compiled for it instead of interpreted (the
other platform's are skipped): the run that kernels_pallas/measured.py records."""

import functools
import os

import jax
import numpy as np
import pytest
from parity import assert_relative
from tolerances import CHUNKED_FLOAT32_RELATIVE

from kernels_pallas.measured import UNMEASURED_KERNELS_VARIABLE

CALLS = {"tpu": "tpu_custom_call", "cuda": "triton"}  # what a lowered kernel is called
PLATFORMS = {"tpu": "tpu", "cuda": "gpu"}  # the kernels that a lowering target runs


ON_DEVICE = os.environ.get("SEQJAX_KERNEL_TESTS_ON_DEVICE") == "1"


class _DeviceKernels(dict):
    def __missing__(self, platform):
        pytest.skip(f"an on-device run tests the {jax.default_backend()} kernels, not {platform}")


def interpreted(entry, **tiles) -> dict:
    """A kernel package's ``entry`` on each platform in the Pallas interpreter, with the tile
    sizes given per platform (``tpu=dict(...)``, ``gpu=dict(...)``); on a device with
    ``ON_DEVICE``, that device's entry alone, compiled."""
    if ON_DEVICE:
        platform = jax.default_backend()
        return _DeviceKernels(
            {platform: functools.partial(entry, platform=platform, **tiles[platform])}
        )
    return {
        platform: functools.partial(entry, platform=platform, interpret=True, **options)
        for platform, options in tiles.items()
    }


def assert_lowers(function, arguments, target: str, kernels: int) -> None:
    """``function(*arguments)`` lowers for ``target`` ("tpu" or "cuda") with at least
    ``kernels`` kernel calls (the Mosaic or Triton lowering rejects what the target lacks)."""
    lowered = jax.jit(function).trace(*arguments).lower(lowering_platforms=(target,))
    assert lowered.as_text().count(CALLS[target]) >= kernels, function.__name__


def interpret_dispatch(monkeypatch, package, name: str, interpreted, backend: str) -> list:
    """Makes jax's default backend ``backend`` and ``package.<name>`` (the entry an op
    calls) run ``interpreted[platform]`` instead, with None free to pick kernels not measured
    on this device (kernels_pallas.measured); returns the list of the options of each call."""
    monkeypatch.setenv(UNMEASURED_KERNELS_VARIABLE, "1")
    calls = []

    def interpreted_kernel(*args, platform, **options):
        calls.append(options)
        return interpreted[platform](*args, **options)

    monkeypatch.setattr(package, name, interpreted_kernel)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    return calls


def assert_chunked_op_dispatches(monkeypatch, op, arrays, package, name, interpreted):
    """With implementation None on a GPU backend, the chunked matrix-state ``op`` runs the GPU
    kernel ``package.<name>`` (``interpreted``) and equals its reference, unless
    segment_starts asks for packing; on CPU, asking for 'pallas' is an error."""
    expected = op(**arrays, implementation="reference")
    with pytest.raises(ValueError, match="'pallas' cannot run: .* not on cpu"):
        op(**arrays, implementation="pallas")
    calls = interpret_dispatch(monkeypatch, package, name, interpreted, "gpu")
    actual = jax.jit(functools.partial(op, chunk_size=16))(**arrays)
    assert len(calls) == 1
    assert_relative(actual, expected, CHUNKED_FLOAT32_RELATIVE)
    starts = np.zeros(arrays["q"].shape[:2], bool)
    jax.eval_shape(functools.partial(op, segment_starts=starts), **arrays)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="'pallas' cannot run: the kernels take no segment"):
        op(**arrays, segment_starts=starts, implementation="pallas")
