"""Evaluation of trained runs: load a workdir's model at a checkpoint, score its test split;
score any language model on a text file.

A forecasting run is scored on the original scale of its series as well (sMAPE, MASE; MSE and
MAE on the normalized scale), overall and at each forecast step (``evaluate_forecasts``).

A checkpoint that is corrupt or holds non-finite values is refused when loaded
(CheckpointError), and metrics that are not finite when scored (NonFiniteResultError): a
diverged run never becomes a result.

A text of tokens x_0 .. x_{N-1} is scored as one pass would score it, read in windows of
``window`` tokens with the model's state carried from each window into the next, so nothing
is read twice and the first token of a window is predicted from the last position of the
one before:

    nats = Σ_{t=1}^{N-1} −log p(x_t | x_<t)      loss = nats / (N − 1)      perplexity = e^loss
    bits per byte = nats / (ln 2 · bytes of the text)

The first token is given, not predicted (a tokenizer that starts every text with a
beginning-of-text token makes that token the given one).
"""

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from seqjax import forecasting
from seqjax.data import Task, create_task
from seqjax.data.tokenizer import ByteTokenizer, Tokenizer
from seqjax.models.backbone import LanguageModel
from seqjax.training import config as config_lib
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.evaluate import evaluate
from seqjax.training.objectives import create_objective, create_task_model
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
    model = nnx.eval_shape(
        lambda: create_task_model(config.model, task, rngs=nnx.Rngs(config.seed))
    )
    # Built abstractly (no parameter computed) and restored onto the first device.
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)
    checkpoints = Checkpoints(workdir / CHECKPOINT_DIR, read_only=True)
    step = checkpoints.latest_step() if step is None else step
    try:
        params, _ = checkpoints.restore(step, params)
    finally:
        checkpoints.close()
    return LoadedRun(
        config=config, task=task, model=nnx.merge(graphdef, params), step=step, workdir=workdir
    )


def evaluate_run(
    run: LoadedRun,
    *,
    batch_size: int,
    task: Task | None = None,
    forecasts: "ForecastEvaluation | None" = None,
) -> dict:
    """The metrics of ``run`` on the test split of ``task`` (default: the run's task); a
    NonFiniteResultError if any is NaN or infinite. A forecasting task's metrics are its
    objective's and the overall scores of ``evaluate_forecasts`` (``forecasts``, if the
    caller has them already)."""
    graphdef, params = nnx.split(run.model)
    task = task or run.task
    objective = create_objective(run.config.model, task)
    metrics = evaluate(graphdef, params, task, batch_size=batch_size, objective=objective)
    if task.kind == "forecasting":
        forecasts = forecasts or evaluate_forecasts(run, batch_size=batch_size, task=task)
        metrics = {**metrics, **forecasts.scores.overall}
    _check_finite(run, task, metrics)
    return metrics


def _check_finite(run: LoadedRun, task: Task, metrics: dict[str, float]) -> None:
    nonfinite = [name for name, value in metrics.items() if not math.isfinite(value)]
    if nonfinite:
        raise NonFiniteResultError(
            f"the checkpoint at step {run.step} in {run.workdir} gives non-finite "
            f"{', '.join(nonfinite)} on the test split of {task.name}; "
            "it is not reported as a result"
        )


@dataclasses.dataclass
class ForecastEvaluation:
    scores: forecasting.ForecastScores  # overall and per-horizon sMAPE, MASE, MSE, MAE
    forecasts: np.ndarray  # [N, H, C] on the original scale, one per window of the split


def _mean(outputs):
    """The forecast of a regression head: its outputs, or a Gaussian head's mean."""
    return outputs[..., 0] if outputs.ndim == 4 else outputs  # [B, T, D(, 2)]


@functools.partial(jax.jit, static_argnums=0)
def _direct_forecasts(graphdef, params, inputs):
    """The last output [B, H*C] of a direct multi-horizon forecaster."""
    outputs, _ = nnx.merge(graphdef, params)(inputs)
    return _mean(outputs)[:, -1]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _rolled_out_forecasts(graphdef, params, inputs, horizon):
    """[B, H, C]: the one-step forecast after the look-back ``inputs`` [B, L, C], then each
    forecast fed back as the next input, the state carried."""
    model = nnx.merge(graphdef, params)
    outputs, state = model(inputs)

    def step(carry, _):
        value, state = carry
        outputs, state = model(value[:, None], state=state)
        return (_mean(outputs)[:, -1], state), value

    _, forecasts = jax.lax.scan(step, (_mean(outputs)[:, -1], state), length=horizon)
    return jnp.swapaxes(forecasts, 0, 1)


def evaluate_forecasts(
    run: LoadedRun, *, batch_size: int, task: Task | None = None, split: str = "test"
) -> ForecastEvaluation:
    """The forecasts of ``run`` for the windows of ``split`` of its forecasting ``task``
    (default: the run's), on the original scale, and their scores (``task.score``): the last
    output of a direct forecaster, the roll-out of an autoregressive one; the mean of a
    Gaussian head's forecast."""
    task = task or run.task
    if task.kind != "forecasting":
        raise ValueError(f"task {task.name!r} is not a forecasting task")
    graphdef, params = nnx.split(run.model)
    horizon = task.window_length[1]
    outputs = []
    for batch in task.split_batches(split, batch_size):
        if task.strategy == "autoregressive":
            forecasts = _rolled_out_forecasts(graphdef, params, batch["inputs"], horizon)
        else:
            forecasts = _direct_forecasts(graphdef, params, batch["inputs"])
        outputs.append(np.asarray(forecasts))
    forecasts = task.to_original(np.concatenate(outputs)[: len(task.actual(split))], split)
    scores = task.score(forecasts, split)
    _check_finite(run, task, scores.overall)
    return ForecastEvaluation(scores=scores, forecasts=forecasts)


def tokenizer_of(task: Task) -> Tokenizer:
    """The tokenizer of a language-modelling task: its own, or the bytes (kind "lm")."""
    tokenizer = getattr(task, "tokenizer", None)
    if tokenizer is not None:
        return tokenizer
    if task.kind == "lm":
        return ByteTokenizer()
    raise ValueError(
        f"task {task.name!r} is not language modelling over text, so it has no tokenizer"
    )


@functools.partial(jax.jit, static_argnums=0)
def _window_nats(graphdef, params, state, inputs, targets):
    model = nnx.merge(graphdef, params)
    logits, state = model(inputs, state=state)
    nats = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(nats, dtype=jnp.float32), state


def token_nats(model: LanguageModel, tokens, *, window: int) -> float:
    """Σ_{t≥1} −log p(tokens[t] | tokens[:t]) under ``model`` (nats), read ``window`` tokens
    at a time with the state carried between windows (see the module docstring)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or len(tokens) < 2:
        raise ValueError(f"scoring needs at least 2 tokens in a row, got shape {tokens.shape}")
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    limit = model.backbone.context_limit
    if limit is not None and len(tokens) - 1 > limit:
        raise ValueError(
            f"the text is {len(tokens)} tokens, more than the attention cache holds ({limit}); "
            "raise the attention option cache_length"
        )
    graphdef, params = nnx.split(model)
    state = model.init_state(1)
    total = 0.0
    for start in range(0, len(tokens) - 1, window):
        piece = tokens[start : start + window + 1].astype(np.int32)[None]
        nats, state = _window_nats(graphdef, params, state, piece[:, :-1], piece[:, 1:])
        total += float(nats)
    return total


def text_metrics(
    model: LanguageModel, tokenizer: Tokenizer, tokens, num_bytes: int, *, window: int
) -> dict[str, float]:
    """Loss (nats per predicted token), perplexity and bits per byte of ``tokens`` (the
    ``tokenizer``'s ids of a text of ``num_bytes`` UTF-8 bytes); a NonFiniteResultError if
    the model gives a non-finite loss."""
    if tokenizer.vocab_size > model.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocabulary ({model.vocab_size})"
        )
    nats = token_nats(model, tokens, window=window)
    predicted = len(tokens) - 1
    if not math.isfinite(nats):
        raise NonFiniteResultError(f"the model gives a non-finite loss ({nats}) on the text")
    loss = nats / predicted
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < math.log(np.finfo(np.float64).max) else math.inf,
        "bits_per_byte": nats / (math.log(2) * num_bytes),
        "num_scored_tokens": predicted,
        "num_bytes": num_bytes,
    }


__all__ = [
    "ForecastEvaluation",
    "LoadedRun",
    "NonFiniteResultError",
    "evaluate",
    "evaluate_forecasts",
    "evaluate_run",
    "load_run",
    "text_metrics",
    "token_nats",
    "tokenizer_of",
]
