"""Task metrics over a task's whole held-out split."""

import functools

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seqjax.data import Task
from seqjax.training.objectives import Objective
from seqjax.training.step import eval_step, summarize
from seqjax.typing import PyTree


@functools.cache
def _eval_step(mesh: Mesh | None):
    """The jitted eval step; on a mesh, its sums are replicated so every process reads them."""
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    return jax.jit(eval_step, static_argnums=(0, 3), out_shardings=replicated)


def evaluate(
    graphdef: nnx.GraphDef,
    params: PyTree,
    task: Task,
    *,
    batch_size: int,
    objective: Objective,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """The ``objective``'s metrics (and bits per byte for text) over the whole test split.

    With ``mesh`` (parameters placed on it), every process feeds every test batch whole to
    all devices: the held-out split is small, and any batch size then works.
    """
    totals = None
    for batch in task.test_batches(batch_size):
        if mesh is not None:
            replicated = NamedSharding(mesh, PartitionSpec())
            batch = {
                name: jax.make_array_from_process_local_data(replicated, rows, rows.shape)
                for name, rows in batch.items()
            }
        sums = _eval_step(mesh)(graphdef, params, batch, objective)
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return summarize(jax.device_get(totals), kind=task.kind, objective=objective)
