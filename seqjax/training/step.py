"""The jitted training and evaluation steps, as pure functions of the model's parameters.

The loss and metrics are those of the task's head (seqjax/training/objectives.py): for the
token head the weighted mean cross-entropy, ``weights`` [B, T] selecting the positions that
count (MQAR answers, selective-copy outputs, every byte of text).

A step whose loss, gradient norm or updated parameters are not all finite changes neither
the parameters nor the optimizer state (as ``optax.apply_if_finite``); the state counts such
steps and records the first, so the loop can stop or carry on without reading anything back
from the device at every step.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from seqjax.layers.partitioning import BATCH, SEQUENCE, constrain
from seqjax.training.objectives import Objective
from seqjax.typing import Array, DType, PyTree


class TrainState(struct.PyTreeNode):
    """Everything a training step updates: the step count, parameters, optimizer state, and
    the number of non-finite steps whose update was not applied and the first of them (its
    1-based step number as the loop counts it; -1 while there is none)."""

    step: Array
    params: PyTree
    opt_state: PyTree
    skipped_updates: Array | int = 0
    first_nonfinite_step: Array | int = -1


def all_finite(tree: PyTree) -> Array:
    """Whether every floating-point value of ``tree`` is finite (a scalar bool)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def cast_floats(tree: PyTree, dtype: DType) -> PyTree:
    """Every floating-point array of ``tree`` in ``dtype``; integers and complex untouched."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def micro_batches(batch: dict[str, Array], count: int) -> dict[str, Array]:
    """[B, ...] -> [count, B / count, ...]; micro-batch i holds rows i, i + count, ...

    Taking every count-th row keeps each micro-batch spread over the devices that hold the
    batch, so no rows move between devices.
    """

    def split(x):
        rows = x.reshape(x.shape[0] // count, count, *x.shape[1:])
        return constrain(jnp.swapaxes(rows, 0, 1), None, BATCH, SEQUENCE, *(None,) * (x.ndim - 2))

    return {name: split(x) for name, x in batch.items()}


def train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: Callable[[Array], Array],
    state: TrainState,
    batch: dict[str, Array],
    *,
    objective: Objective,
    accumulation_steps: int = 1,
    compute_dtype: DType = jnp.float32,
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on ``batch``; returns the new state and the step's metrics.

    The gradient is that of the summed loss over ``accumulation_steps`` micro-batches run one
    after another, divided by the batch's total weight, so it equals the gradient of the
    whole batch's mean loss. The forward and backward run with the parameters cast to
    ``compute_dtype``; parameters, gradients and optimizer state stay float32.
    """

    def sums_and_grads(micro_batch):
        def loss_sum(params):
            model = nnx.merge(graphdef, cast_floats(params, compute_dtype))
            sums = objective.sums(model, micro_batch)
            return sums["loss_sum"], sums

        (_, sums), grads = jax.value_and_grad(loss_sum, has_aux=True)(state.params)
        return sums, grads

    if accumulation_steps == 1:
        sums, grad_sums = sums_and_grads(batch)
    else:

        def accumulate(totals, micro_batch):
            return jax.tree.map(jnp.add, totals, sums_and_grads(micro_batch)), None

        stacked = micro_batches(batch, accumulation_steps)
        shapes = jax.eval_shape(sums_and_grads, jax.tree.map(lambda x: x[0], stacked))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        (sums, grad_sums), _ = jax.lax.scan(accumulate, zeros, stacked)
    total_weight = jnp.maximum(sums["weight_sum"], 1.0)
    grads = jax.tree.map(lambda g: g / total_weight, grad_sums)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = objective.metrics(sums)
    loss, grad_norm = metrics["loss"], optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state),
        (state.params, state.opt_state),
    )
    step = state.step + 1
    first_nonfinite = state.first_nonfinite_step
    metrics |= {
        "grad_norm": grad_norm,
        # The optimizer's schedule advances only with the updates applied.
        "learning_rate": schedule(state.step - state.skipped_updates),
    }
    new_state = TrainState(
        step=step,
        params=params,
        opt_state=opt_state,
        skipped_updates=state.skipped_updates + (~finite).astype(jnp.int32),
        first_nonfinite_step=jnp.where(~finite & (first_nonfinite < 0), step, first_nonfinite),
    )
    return new_state, metrics


def eval_step(
    graphdef: nnx.GraphDef,
    params: PyTree,
    batch: dict[str, Array],
    objective: Objective,
) -> dict[str, Any]:
    """The metric sums of one evaluation batch (``summarize`` turns them into metrics)."""
    return objective.sums(nnx.merge(graphdef, params), batch)


def summarize(sums: dict[str, float], *, kind: str, objective: Objective) -> dict[str, float]:
    """The objective's metrics from summed values, with the number of scored positions (or
    labels, or rows); bits per byte for language modelling."""
    metrics = {
        name: float(value)
        for name, value in objective.metrics({k: float(v) for k, v in sums.items()}).items()
    }
    metrics["num_scored_tokens"] = int(sums["weight_sum"])
    if kind == "lm":
        metrics["bits_per_byte"] = metrics["loss"] / float(jnp.log(2.0))
    return metrics
