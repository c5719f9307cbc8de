"""The one rule for every op's ``implementation=`` argument.

An op names its forms (``IMPLEMENTATIONS``; ``REFERENCE`` is the naive form every other one
is tested against), the order it prefers them in when the caller passes None (for this
platform, dtype and shapes), and why any of them cannot run for the arguments at hand.
``select`` then applies one rule:

    None            the first preferred form that can run here and is not held back
    a known name    that form, or an error saying why it cannot run and what can
    any other name  an error listing the names

A named form never silently becomes another, inside a sequence split or out of it. None holds
back the Pallas kernels not measured on this device kind (kernels_pallas/measured.py): they
run when asked for by name.
"""

from collections.abc import Mapping, Sequence
from types import ModuleType

import jax

from kernels_pallas.measured import unmeasured_reason

REFERENCE = "reference"


def select(
    op: str,
    implementation: str | None,
    names: Sequence[str],
    *,
    preferred: Sequence[str],
    cannot_run: Mapping[str, str | None] | None = None,
    kernels: str | None = None,
) -> str:
    """The form of ``op`` to run.

    Args:
      op: the op's name, for the messages.
      implementation: the caller's choice, or None.
      names: every form of the op.
      preferred: the forms None may pick, best first.
      cannot_run: why a form cannot run for these arguments, by name (None: it can).
      kernels: the folder of kernels_pallas behind the op's "pallas" form, which None picks
        only where it was measured.
    """
    cannot_run = {name: why for name, why in (cannot_run or {}).items() if why is not None}
    if implementation is None:
        held_back = dict(cannot_run)
        if kernels is not None and "pallas" not in held_back:
            if (reason := unmeasured_reason(kernels)) is not None:
                held_back["pallas"] = reason
        for name in preferred:
            if name not in held_back:
                return name
        raise ValueError(f"{op}: no implementation can run: {held_back}")
    if implementation not in names:
        raise ValueError(
            f"{op}: unknown implementation {implementation!r}; expected None or one of "
            f"{tuple(names)}"
        )
    if implementation in cannot_run:
        runnable = tuple(name for name in names if name not in cannot_run)
        raise ValueError(
            f"{op}: implementation={implementation!r} cannot run: {cannot_run[implementation]}; "
            f"use None or one of {runnable}"
        )
    return implementation


def select_chunked(
    op: str,
    implementation: str | None,
    names: Sequence[str],
    kernels: ModuleType,
    *,
    segment_starts,
    chunk_size: int,
) -> str:
    """``select`` for the chunked matrix-state ops with Pallas kernels: None picks 'pallas'
    where ``kernels`` (their kernels_pallas package) can run for these arguments, else
    'chunked'."""
    reason = kernels.unsupported_reason(
        jax.default_backend(), segment_starts=segment_starts, chunk_size=chunk_size
    )
    return select(
        op, implementation, names, preferred=("pallas", "chunked"), cannot_run={"pallas": reason},
        kernels=kernels.__name__.rpartition(".")[2],
    )  # fmt: skip
