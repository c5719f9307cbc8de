"""Metrics as JSON lines (``metrics.jsonl``) and TensorBoard events in the workdir.

Each line is ``{"step": ..., "split": "train" | "eval", <metric>: <value>, ...}``, valid JSON:
a non-finite value (NaN, +-infinity: a diverged loss, a skipped update's gradient norm) is
written as ``null``, and left out of TensorBoard. A line is written whole or not at all: a
write that fails (a full disk) truncates the file back to where it was. On resume from step
s the lines after s are dropped (atomically), so the file holds one history.
"""

import errno
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from tensorboardX import SummaryWriter

from seqjax.training.files import WriteError, cause, write_atomically

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str | Path) -> list[dict]:
    """The complete lines of a workdir's metrics file (a torn last line is skipped)."""
    path = Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def json_value(value: object) -> object:
    """A value as a metrics line holds it: a float that is not finite becomes None (null)."""
    if isinstance(value, str | bool | int) or value is None:
        return value
    value = float(value)
    return value if math.isfinite(value) else None


def json_line(record: Mapping[str, object]) -> str:
    return json.dumps({k: json_value(v) for k, v in record.items()}, allow_nan=False) + "\n"


class MetricsWriter:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard, resuming after ``start_step``."""

    def __init__(self, workdir: str | Path, *, start_step: int):
        self.path = Path(workdir) / METRICS_FILE
        kept = [record for record in read_metrics(workdir) if record["step"] <= start_step]
        write_atomically(self.path, "".join(json_line(record) for record in kept))
        self.descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.tensorboard_dir = Path(workdir) / "tensorboard"
        self.tensorboard = SummaryWriter(
            str(self.tensorboard_dir), purge_step=start_step + 1 if start_step else None
        )

    def write(self, step: int, split: str, metrics: Mapping[str, float | int]) -> None:
        line = json_line({"step": step, "split": split, **metrics}).encode()
        size = os.fstat(self.descriptor).st_size
        try:
            written = os.write(self.descriptor, line)
        except OSError as error:
            os.ftruncate(self.descriptor, size)
            raise WriteError(f"cannot write {self.path}: {cause(error)}") from None
        if written != len(line):  # the disk filled part-way through the line
            os.ftruncate(self.descriptor, size)
            raise WriteError(f"cannot write {self.path}: {os.strerror(errno.ENOSPC)}")
        for name, value in metrics.items():
            if math.isfinite(value):
                self.tensorboard.add_scalar(f"{split}/{name}", float(value), step)

    def close(self) -> None:
        os.close(self.descriptor)
        try:
            self.tensorboard.close()
        except OSError as error:
            raise WriteError(f"cannot write {self.tensorboard_dir}: {cause(error)}") from None
