"""Evaluation of trained runs: load a workdir's model at a checkpoint, score its test split."""

import dataclasses
from pathlib import Path

import ml_collections
from flax import nnx

from seqjax.data import Task, create_task
from seqjax.models import create_model
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.evaluate import evaluate
from seqjax.training.workdir import CHECKPOINT_DIR, load_saved_config


@dataclasses.dataclass
class LoadedRun:
    config: ml_collections.ConfigDict
    task: Task
    model: nnx.Module
    step: int


def load_run(workdir: str | Path, *, step: int | None = None) -> LoadedRun:
    """The model of a training workdir at ``step`` (None: the latest checkpoint)."""
    workdir = Path(workdir)
    config = load_saved_config(workdir)
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
    params, _ = checkpoints.restore(step, params)
    checkpoints.close()
    return LoadedRun(config=config, task=task, model=nnx.merge(graphdef, params), step=step)


__all__ = ["LoadedRun", "evaluate", "load_run"]
