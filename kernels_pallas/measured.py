"""Where each folder of kernels has been measured on its hardware, and so may run by default.

Interpret mode and lowering test a kernel's math and what Pallas accepts, but neither runs
the device compiler: only a run on the device proves a kernel. So an op's
``implementation=None`` picks a Pallas kernel only on a device kind listed here for it, after
the interpret-free kernel tests (``tests/kernels`` with ``SEQJAX_KERNEL_TESTS_ON_DEVICE=1``)
and ``bench/kernels.py`` passed there; elsewhere it picks the op's XLA form. Asking for
``implementation="pallas"`` by name runs the kernel wherever it can run, measured or not, and
the environment variable ``SEQJAX_UNMEASURED_KERNELS=1`` lets None pick unmeasured kernels
too, for those who want to try them.

A record is added by hand from such a run, with what it showed.
"""

import dataclasses
import os

import jax

UNMEASURED_KERNELS_VARIABLE = "SEQJAX_UNMEASURED_KERNELS"


@dataclasses.dataclass(frozen=True)
class Measurement:
    """One folder of kernels measured on one device kind."""

    kernels: str  # the folder of kernels_pallas, e.g. "linear_scan"
    device_kind: str  # jax.devices()[0].device_kind where it ran, e.g. "NVIDIA H200"
    jax_version: str  # jax.__version__ of the run
    parity: str  # what the interpret-free kernel tests showed
    speedup: float  # time of the XLA form / time of the kernel, forward+backward


# None so far: no kernel has yet run on hardware.
MEASUREMENTS: tuple[Measurement, ...] = ()


def device_kind() -> str:
    return jax.devices()[0].device_kind


def unmeasured_reason(kernels: str) -> str | None:
    """Why ``implementation=None`` does not pick kernels_pallas.<kernels> on this device, or
    None if it may (a measurement of this device kind, or the environment variable)."""
    if os.environ.get(UNMEASURED_KERNELS_VARIABLE, "") == "1":
        return None
    kind = device_kind()
    if any(m.kernels == kernels and m.device_kind == kind for m in MEASUREMENTS):
        return None
    return (
        f"kernels_pallas.{kernels} has not been measured on {kind!r} (kernels_pallas/measured.py); "
        f"ask for implementation='pallas', or set {UNMEASURED_KERNELS_VARIABLE}=1"
    )
