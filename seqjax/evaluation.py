"""Evaluation: task metrics on the held-out split, loading trained runs, generating text."""

import dataclasses
import functools
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from seqjax.data import Task, create_task
from seqjax.models import create_model
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.step import eval_step, summarize
from seqjax.training.workdir import CHECKPOINT_DIR, load_saved_config
from seqjax.typing import PyTree


@functools.partial(jax.jit, static_argnums=0)
def _eval_step(graphdef, params, batch):
    return eval_step(graphdef, params, batch)


def evaluate(
    graphdef: nnx.GraphDef, params: PyTree, task: Task, *, batch_size: int
) -> dict[str, float]:
    """Loss and accuracy (and bits per byte for text) over the whole test split."""
    totals = None
    for batch in task.test_batches(batch_size):
        sums = _eval_step(graphdef, params, batch)
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return summarize(jax.device_get(totals), kind=task.kind)


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
    model = create_model(config.model, vocab_size=task.vocab_size, rngs=nnx.Rngs(config.seed))
    graphdef, params = nnx.split(model)
    checkpoints = Checkpoints(workdir / CHECKPOINT_DIR, read_only=True)
    step = checkpoints.latest_step() if step is None else step
    params, _ = checkpoints.restore(step, params)
    checkpoints.close()
    return LoadedRun(config=config, task=task, model=nnx.merge(graphdef, params), step=step)
