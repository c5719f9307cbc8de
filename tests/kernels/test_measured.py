"""Kernels by measurement (each op called unjitted, so that no trace is reused): on a GPU
whose device kind kernels_pallas/measured.py does not list, ``implementation=None`` runs no
Pallas kernel in any op that has one; with a record of that device kind (or
``SEQJAX_UNMEASURED_KERNELS=1``) it runs the kernel; asking for "pallas" by name runs it
either way, and on CPU still fails, naming why."""

import jax
import numpy as np
import pytest

import kernels_pallas.chunked_delta_rule as chunked_delta_rule_kernels
import kernels_pallas.chunked_gla as chunked_gla_kernels
import kernels_pallas.flash_attention as flash_attention_kernels
import kernels_pallas.linear_scan as linear_scan_kernels
from kernels_pallas import measured
from seqjax.ops import implementations
from seqjax.ops.attention import softmax_attention
from seqjax.ops.delta_rule import delta_rule
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.scan import linear_recurrence

B, T, H, K = 1, 16, 2, 16


def arrays(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def cases():
    rng = np.random.default_rng(0)
    q, k, v = (arrays(rng, B, T, H, K) for _ in range(3))
    k = k / np.linalg.norm(k, axis=-1, keepdims=True)
    beta = rng.uniform(0, 1, (B, T, H)).astype(np.float32)
    return {
        "linear_scan": (
            linear_scan_kernels, "linear_scan",
            lambda **o: linear_recurrence(arrays(rng, B, T, K), arrays(rng, B, T, K), **o),
        ),
        "chunked_gla": (
            chunked_gla_kernels, "chunked_gla",
            lambda **o: gated_linear_attention(q, k, v, chunk_size=16, **o),
        ),
        "chunked_delta_rule": (
            chunked_delta_rule_kernels, "chunked_delta_rule",
            lambda **o: delta_rule(q, k, v, beta, chunk_size=16, **o),
        ),
        "flash_attention": (
            flash_attention_kernels, "flash_attention",
            lambda **o: softmax_attention(q, k, v, causal=True, **o),
        ),
    }  # fmt: skip


CASES = cases()


class KernelRan(Exception):
    pass


@pytest.fixture
def on_a_gpu(monkeypatch):
    """A GPU backend of a kind nobody measured, whose kernel entries raise KernelRan."""
    monkeypatch.delenv(measured.UNMEASURED_KERNELS_VARIABLE, raising=False)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(measured, "device_kind", lambda: "NVIDIA Unmeasured")

    def kernel(*args, **options):
        raise KernelRan

    for package, entry, _ in CASES.values():
        monkeypatch.setattr(package, entry, kernel)
    return monkeypatch


@pytest.mark.parametrize("kernels", CASES)
def test_none_runs_no_unmeasured_kernel(on_a_gpu, kernels):
    _, _, op = CASES[kernels]
    op()  # the XLA form: no KernelRan
    with pytest.raises(KernelRan):
        op(implementation="pallas")


@pytest.mark.parametrize("kernels", CASES)
def test_none_runs_a_kernel_measured_on_this_device_kind(on_a_gpu, kernels):
    _, _, op = CASES[kernels]
    record = measured.Measurement(kernels, "NVIDIA Unmeasured", jax.__version__, "passed", 2.0)
    on_a_gpu.setattr(measured, "MEASUREMENTS", (record,))
    with pytest.raises(KernelRan):
        op()
    other = measured.Measurement(kernels, "NVIDIA Other", jax.__version__, "passed", 2.0)
    on_a_gpu.setattr(measured, "MEASUREMENTS", (other,))
    op()


def test_the_environment_variable_lets_none_try_unmeasured_kernels(on_a_gpu):
    _, _, op = CASES["linear_scan"]
    on_a_gpu.setenv(measured.UNMEASURED_KERNELS_VARIABLE, "1")
    with pytest.raises(KernelRan):
        op()


def test_the_held_back_kernel_is_named_when_nothing_else_can_run(on_a_gpu):
    with pytest.raises(ValueError, match="has not been measured on 'NVIDIA Unmeasured'"):
        implementations.select(
            "op", None, ("pallas",), preferred=("pallas",), kernels="linear_scan"
        )


def test_asking_for_pallas_on_cpu_still_says_why_it_cannot_run():
    _, _, op = CASES["linear_scan"]
    with pytest.raises(ValueError, match="'pallas' cannot run: .*TPU or GPU, not on cpu"):
        op(implementation="pallas")
