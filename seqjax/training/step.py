"""The jitted training and evaluation steps, as pure functions of the model's parameters.

The loss is the weighted mean token cross-entropy: ``weights`` [B, T] select the positions
that count (MQAR answers, selective-copy outputs, every byte of text).

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


def weighted_token_sums(logits: Array, batch: dict[str, Array]) -> dict[str, Array]:
    """Sums of cross-entropy, correct predictions and weights over the weighted positions."""
    weights = batch["weights"].astype(jnp.float32)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = jnp.argmax(logits, axis=-1) == batch["targets"]
    return {
        "loss_sum": jnp.sum(cross_entropy * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }


def _forward(graphdef: nnx.GraphDef, params: PyTree, batch: dict[str, Array]) -> Array:
    model = nnx.merge(graphdef, params)
    logits, _ = model(batch["inputs"], segment_starts=batch.get("segment_starts"))
    return logits


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
            logits = _forward(graphdef, cast_floats(params, compute_dtype), micro_batch)
            sums = weighted_token_sums(logits, micro_batch)
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
    loss, grad_norm = sums["loss_sum"] / total_weight, optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
    params, opt_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old),
        (params, opt_state),
        (state.params, state.opt_state),
    )
    step = state.step + 1
    first_nonfinite = state.first_nonfinite_step
    metrics = {
        "loss": loss,
        "accuracy": sums["correct_sum"] / total_weight,
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


def eval_step(graphdef: nnx.GraphDef, params: PyTree, batch: dict[str, Array]) -> dict[str, Any]:
    """The metric sums of one evaluation batch (``summarize`` turns them into metrics)."""
    return weighted_token_sums(_forward(graphdef, params, batch), batch)


def summarize(sums: dict[str, float], *, kind: str) -> dict[str, float]:
    """Mean loss and accuracy from summed metrics; bits per byte for language modelling."""
    total = max(float(sums["weight_sum"]), 1.0)
    metrics = {
        "loss": float(sums["loss_sum"]) / total,
        "accuracy": float(sums["correct_sum"]) / total,
        "num_scored_tokens": int(sums["weight_sum"]),
    }
    if kind == "lm":
        metrics["bits_per_byte"] = metrics["loss"] / float(jnp.log(2.0))
    return metrics
