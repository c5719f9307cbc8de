"""Evaluation of trained runs: load a workdir's model at a checkpoint, score its test split.

A checkpoint that is corrupt or holds non-finite values is refused when loaded
(CheckpointError), and metrics that are not finite when scored (NonFiniteResultError): a
diverged run never becomes a result.
"""

import dataclasses
import math
from pathlib import Path

import ml_collections
from flax import nnx

from seqjax.data import Task, create_task
from seqjax.models import create_model
from seqjax.training import config as config_lib
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.evaluate import evaluate
from seqjax.training.workdir import CHECKPOINT_DIR, load_saved_config


class NonFiniteResultError(ValueError):
    """Metrics of a checkpoint that are NaN or infinite."""


@dataclasses.dataclass
class LoadedRun:
    config: ml_collections.ConfigDict
    task: Task
    model: nnx.Module
    step: int
    workdir: Path


def load_run(workdir: str | Path, *, step: int | None = None) -> LoadedRun:
    """The model of a training workdir at ``step`` (None: the latest checkpoint)."""
    workdir = Path(workdir)
    config = load_saved_config(workdir)
    config_lib.import_modules(config)
    task = create_task(**config.task)
    model = create_model(
        config.model,
        vocab_size=task.vocab_size,
        input_dim=task.input_dim,
        rngs=nnx.Rngs(config.seed),
    )
    graphdef, params = nnx.split(model)
    checkpoints = Checkpoints(workdir / CHECKPOINT_DIR, read_only=True)
    step = checkpoints.latest_step() if step is None else step
    try:
        params, _ = checkpoints.restore(step, params)
    finally:
        checkpoints.close()
    return LoadedRun(
        config=config, task=task, model=nnx.merge(graphdef, params), step=step, workdir=workdir
    )


def evaluate_run(run: LoadedRun, *, batch_size: int, task: Task | None = None) -> dict:
    """The metrics of ``run`` on the test split of ``task`` (default: the run's task); a
    NonFiniteResultError if any is NaN or infinite."""
    graphdef, params = nnx.split(run.model)
    metrics = evaluate(graphdef, params, task or run.task, batch_size=batch_size)
    nonfinite = [name for name, value in metrics.items() if not math.isfinite(value)]
    if nonfinite:
        raise NonFiniteResultError(
            f"the checkpoint at step {run.step} in {run.workdir} gives non-finite "
            f"{', '.join(nonfinite)} on the test split of {(task or run.task).name}; "
            "it is not reported as a result"
        )
    return metrics


__all__ = ["LoadedRun", "NonFiniteResultError", "evaluate", "evaluate_run", "load_run"]
