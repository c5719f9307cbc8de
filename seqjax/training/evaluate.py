"""Task metrics over a task's whole held-out split."""

import functools

import jax
import numpy as np
from flax import nnx

from seqjax.data import Task
from seqjax.training.step import eval_step, summarize
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
