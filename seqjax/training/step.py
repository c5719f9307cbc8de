"""The jitted training and evaluation steps, as pure functions of the model's parameters.

The loss is the weighted mean token cross-entropy: ``weights`` [B, T] select the positions
that count (MQAR answers, selective-copy outputs, every byte of text).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from seqjax.typing import Array, PyTree


class TrainState(struct.PyTreeNode):
    """Everything a training step updates: the step count, parameters, optimizer state."""

    step: Array
    params: PyTree
    opt_state: PyTree


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


def train_step(
    graphdef: nnx.GraphDef,
    optimizer: optax.GradientTransformation,
    schedule: Callable[[Array], Array],
    state: TrainState,
    batch: dict[str, Array],
) -> tuple[TrainState, dict[str, Array]]:
    """One optimizer step on ``batch``; returns the new state and the step's metrics."""

    def loss_fn(params):
        sums = weighted_token_sums(_forward(graphdef, params, batch), batch)
        return sums["loss_sum"] / jnp.maximum(sums["weight_sum"], 1.0), sums

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss,
        "accuracy": sums["correct_sum"] / jnp.maximum(sums["weight_sum"], 1.0),
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


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
