"""What each head trains on and reports: the model a task's head needs, its loss and metrics.

A task lists the heads its batches serve (``Task.heads``, seqjax/data/base.py); the config's
``model.head`` picks one (None: the task's first), and ``create_task_model`` builds the model
of that head. Each objective turns a batch into sums, so batches, micro-batches and devices
add up exactly and a metric is a ratio of two sums:

- ``token``: softmax cross-entropy at the weighted positions; accuracy.
- ``crf``: -log p(tags | x) of each row under the linear chain (forward algorithm), per tag;
  accuracy of the Viterbi tags.
- ``pooled``: cross-entropy of each row's class; accuracy.
- ``regression``: mean squared or absolute error, or the Gaussian negative log-likelihood
  (½ log 2π + log σ + ½ ((y - μ) / σ)²), averaged over the outputs at the weighted
  positions; MSE and MAE always.
- ``ctc``: -log p(labels | frames) (Graves et al. 2006), per label; the label error rate of
  greedy decoding (edit distance / number of labels) and its exact-match rate.
- ``seq2seq``: teacher-forced cross-entropy per target token; accuracy, and exact match: the
  rows whose every teacher-forced argmax is right, which are exactly the rows that greedy
  decoding reproduces (by induction over the prefix).
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from seqjax.data import Task
from seqjax.models.factory import HEADS, REGRESSION_LOSSES, create_model
from seqjax.ops.crf import crf_decode, crf_log_likelihood
from seqjax.ops.ctc import ctc_greedy_decode, ctc_loss
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

LANGUAGE_MODELLING = ("lm", "token_lm")  # task kinds whose targets are the next inputs


def task_head(model_config: Mapping[str, Any], task: Task) -> str:
    """``model.head``, or the task's first head; an error if the task cannot serve it."""
    head = model_config.get("head")
    if head is None:
        return task.heads[0]
    if head not in HEADS:
        raise ValueError(f"model.head must be one of {', '.join(HEADS)}, got {head!r}")
    if head not in task.heads:
        raise ValueError(
            f"model.head={head!r} cannot be used with task {task.name!r}, whose batches serve "
            f"the head(s) {', '.join(task.heads)}"
        )
    return head


def create_task_model(
    model_config: Mapping[str, Any],
    task: Task,
    *,
    rngs: nnx.Rngs,
    remat: str = "none",
    sequence_split: SequenceSplit | None = None,
) -> nnx.Module:
    """The model of ``task_head(model_config, task)`` over the task's inputs and outputs.

    A bidirectional model is refused a language-modelling task, whose target at t is the
    input at t + 1: its reverse pass would read the answer."""
    if model_config.get("bidirectional") and task.kind in LANGUAGE_MODELLING:
        raise ValueError(
            f"model.bidirectional=True cannot train on task {task.name!r}: its targets are the "
            "next tokens of its inputs, which the reverse pass reads; language modelling "
            "needs a causal model"
        )
    return create_model(
        model_config,
        head=task_head(model_config, task),
        vocab_size=task.vocab_size,
        input_dim=task.input_dim,
        source_vocab_size=getattr(task, "source_vocab_size", None),
        num_outputs=getattr(task, "output_dim", None),
        rngs=rngs,
        remat=remat,
        sequence_split=sequence_split,
    )


def create_objective(model_config: Mapping[str, Any], task: Task) -> "Objective":
    """The objective of the model ``create_task_model`` builds for ``task``."""
    head = task_head(model_config, task)
    if head == "regression":
        return Regression(loss=model_config.get("regression_loss", "mse"))
    return OBJECTIVES[head]()


@dataclasses.dataclass(frozen=True)
class Objective:
    """Sums of a batch (``loss_sum`` over ``weight_sum``, which also scales the gradient, and
    the sums of ``ratios``), and the metrics they make."""

    ratios: ClassVar[dict[str, tuple[str, str]]] = {}  # metric: (numerator, denominator)

    def sums(self, model: nnx.Module, batch: Mapping[str, Array]) -> dict[str, Array]:
        raise NotImplementedError

    def metrics(self, sums: Mapping[str, Any]) -> dict[str, Any]:
        """Ratios of summed values (jnp arrays in a step, floats in an evaluation)."""
        total = _at_least_one(sums["weight_sum"])
        metrics = {"loss": sums["loss_sum"] / total}
        for name, (numerator, denominator) in self.ratios.items():
            metrics[name] = sums[numerator] / _at_least_one(sums[denominator])
        return metrics


def _at_least_one(x):
    return jnp.maximum(x, 1.0) if isinstance(x, jax.Array) else max(float(x), 1.0)


def _outputs(model: nnx.Module, batch: Mapping[str, Array]) -> Array:
    outputs, _ = model(
        batch["inputs"], segment_starts=batch.get("segment_starts"), mask=batch.get("mask")
    )
    return outputs


def _mask(batch: Mapping[str, Array]) -> Array:
    inputs = batch["inputs"]
    return batch.get("mask", jnp.ones(inputs.shape[:2], bool))


@dataclasses.dataclass(frozen=True)
class Token(Objective):
    ratios: ClassVar = {"accuracy": ("correct_sum", "weight_sum")}

    def sums(self, model, batch):
        return token_sums(_outputs(model, batch), batch["targets"], batch["weights"])


def token_sums(logits: Array, targets: Array, weights: Array) -> dict[str, Array]:
    """Sums of cross-entropy, correct argmaxes and weights over the weighted positions."""
    weights = weights.astype(jnp.float32)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = jnp.argmax(logits, axis=-1) == targets
    return {
        "loss_sum": jnp.sum(cross_entropy * weights),
        "correct_sum": jnp.sum(correct * weights),
        "weight_sum": jnp.sum(weights),
    }


@dataclasses.dataclass(frozen=True)
class CRF(Objective):
    ratios: ClassVar = {"accuracy": ("correct_sum", "weight_sum")}

    def sums(self, model, batch):
        emissions = _outputs(model, batch)
        weights = batch["weights"].astype(jnp.float32)
        # A row of padding only (the last test batch's) is given one position and no weight.
        chain = _mask(batch).at[:, 0].set(True)
        scores = dict(
            transitions=model.transitions[...].astype(jnp.float32),
            start_transitions=model.start[...].astype(jnp.float32),
            end_transitions=model.end[...].astype(jnp.float32),
            mask=chain,
        )
        log_likelihood = crf_log_likelihood(emissions, batch["targets"], **scores)
        tags, _ = crf_decode(emissions, **scores)
        scored_rows = jnp.sum(weights, axis=1) > 0
        return {
            "loss_sum": -jnp.sum(jnp.where(scored_rows, log_likelihood, 0.0)),
            "correct_sum": jnp.sum((tags == batch["targets"]) * weights),
            "weight_sum": jnp.sum(weights),
        }


@dataclasses.dataclass(frozen=True)
class Pooled(Objective):
    ratios: ClassVar = {"accuracy": ("correct_sum", "weight_sum")}

    def sums(self, model, batch):
        logits = _outputs(model, batch)
        weights = batch["weights"].astype(jnp.float32)
        rows = jnp.sum(weights, axis=1)  # 1 for an example, 0 for padding
        labels = jnp.sum(batch["targets"] * (weights > 0), axis=1)
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return {
            "loss_sum": jnp.sum(cross_entropy * rows),
            "correct_sum": jnp.sum((jnp.argmax(logits, axis=-1) == labels) * rows),
            "weight_sum": jnp.sum(rows),
        }


@dataclasses.dataclass(frozen=True)
class Regression(Objective):
    loss: str = "mse"
    ratios: ClassVar = {"mse": ("squared_error_sum", "weight_sum"),
                        "mae": ("absolute_error_sum", "weight_sum")}  # fmt: skip

    def __post_init__(self):
        if self.loss not in REGRESSION_LOSSES:
            raise ValueError(
                f"model.regression_loss must be one of {', '.join(REGRESSION_LOSSES)}, "
                f"got {self.loss!r}"
            )

    def sums(self, model, batch):
        predictions = _outputs(model, batch)
        targets = batch["targets"].astype(jnp.float32)
        weights = batch["weights"].astype(jnp.float32)
        if self.loss == "gaussian_nll":
            mean, log_scale = predictions[..., 0], predictions[..., 1]
            standardized = (targets - mean) * jnp.exp(-log_scale)
            loss = 0.5 * math.log(2 * math.pi) + log_scale + 0.5 * standardized**2
        else:
            mean = predictions
        squared, absolute = (mean - targets) ** 2, jnp.abs(mean - targets)
        if self.loss != "gaussian_nll":
            loss = squared if self.loss == "mse" else absolute

        def weighted(x):  # mean over the outputs, summed over the weighted positions
            return jnp.sum(jnp.mean(x, axis=-1) * weights)

        return {
            "loss_sum": weighted(loss),
            "squared_error_sum": weighted(squared),
            "absolute_error_sum": weighted(absolute),
            "weight_sum": jnp.sum(weights),
        }


@dataclasses.dataclass(frozen=True)
class CTC(Objective):
    ratios: ClassVar = {"label_error_rate": ("edit_distance_sum", "weight_sum"),
                        "exact_match": ("exact_sum", "example_sum")}  # fmt: skip

    def sums(self, model, batch):
        logits = _outputs(model, batch)
        frames = jnp.maximum(jnp.sum(_mask(batch), axis=1), 1)
        target_mask = batch["target_mask"]
        label_lengths = jnp.sum(target_mask, axis=1)
        rows = jnp.any(target_mask, axis=1)
        losses = ctc_loss(logits, frames, batch["targets"], label_lengths)
        decoded, decoded_lengths = ctc_greedy_decode(logits, frames)
        distances = edit_distances(decoded, decoded_lengths, batch["targets"], label_lengths)
        return {
            "loss_sum": jnp.sum(jnp.where(rows, losses, 0.0)),
            "edit_distance_sum": jnp.sum(jnp.where(rows, distances, 0)).astype(jnp.float32),
            "exact_sum": jnp.sum(rows & (distances == 0)).astype(jnp.float32),
            "example_sum": jnp.sum(rows).astype(jnp.float32),
            "weight_sum": jnp.sum(label_lengths).astype(jnp.float32),
        }


def edit_distances(
    hypotheses: Array, hypothesis_lengths: Array, references: Array, reference_lengths: Array
) -> Array:
    """Levenshtein distance of each row's hypothesis [B, N] (its first hypothesis_lengths[b]
    ids) to its reference [B, M] (the first reference_lengths[b]) -> int32 [B].

    One row of the table per hypothesis symbol: with e_j = min(d[j] + 1, d[j-1] + cost_j),
    the row is d'[j] = min_{k<=j} e_k + (j - k), a cumulative minimum of e_k - k.
    """
    batch, width = references.shape
    columns = jnp.arange(width + 1, dtype=jnp.int32)
    first = jnp.broadcast_to(columns, (batch, width + 1))

    def row(distances, inputs):
        symbol, live, index = inputs  # [B], [B] bool, scalar
        cost = (references != symbol[:, None]).astype(jnp.int32)
        step = jnp.minimum(distances[:, 1:] + 1, distances[:, :-1] + cost)
        step = jnp.concatenate([distances[:, :1] + 1, step], axis=1)
        new = jax.lax.cummin(step - columns, axis=1) + columns
        return jnp.where(live[:, None], new, distances), None

    positions = jnp.arange(hypotheses.shape[1])
    live = positions[:, None] < hypothesis_lengths[None, :]
    table, _ = jax.lax.scan(row, first, (hypotheses.T, live, positions))
    return jnp.take_along_axis(table, reference_lengths[:, None].astype(jnp.int32), axis=1)[:, 0]


@dataclasses.dataclass(frozen=True)
class Seq2Seq(Objective):
    ratios: ClassVar = {"accuracy": ("correct_sum", "weight_sum"),
                        "exact_match": ("exact_sum", "example_sum")}  # fmt: skip

    def sums(self, model, batch):
        logits = model(batch["inputs"], batch.get("mask"), batch["decoder_inputs"])
        sums = token_sums(logits, batch["targets"], batch["weights"])
        weights = batch["weights"] > 0
        wrong = jnp.any(weights & (jnp.argmax(logits, axis=-1) != batch["targets"]), axis=1)
        rows = jnp.any(weights, axis=1)
        sums["exact_sum"] = jnp.sum(rows & ~wrong).astype(jnp.float32)
        sums["example_sum"] = jnp.sum(rows).astype(jnp.float32)
        return sums


OBJECTIVES: dict[str, type[Objective]] = {
    "token": Token,
    "crf": CRF,
    "pooled": Pooled,
    "regression": Regression,
    "ctc": CTC,
    "seq2seq": Seq2Seq,
}
