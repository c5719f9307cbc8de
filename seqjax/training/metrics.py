"""Metrics as JSON lines (``metrics.jsonl``) and TensorBoard events in the workdir.

Each line is ``{"step": ..., "split": "train" | "eval", <metric>: <value>, ...}``. On resume
from step s the lines after s are dropped (atomically), so the file holds one history.
"""

import json
from collections.abc import Mapping
from pathlib import Path

from tensorboardX import SummaryWriter

from seqjax.training.files import write_atomically

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


class MetricsWriter:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard, resuming after ``start_step``."""

    def __init__(self, workdir: str | Path, *, start_step: int):
        self.path = Path(workdir) / METRICS_FILE
        kept = [record for record in read_metrics(workdir) if record["step"] <= start_step]
        write_atomically(self.path, "".join(json.dumps(record) + "\n" for record in kept))
        self.file = self.path.open("a")
        self.tensorboard = SummaryWriter(
            str(Path(workdir) / "tensorboard"), purge_step=start_step + 1 if start_step else None
        )

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        record = {"step": step, "split": split, **{k: float(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(record) + "\n")  # one write per line: never a torn record
        self.file.flush()
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{split}/{name}", float(value), step)

    def close(self) -> None:
        self.file.close()
        self.tensorboard.close()
