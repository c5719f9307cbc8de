"""The training loop: build, restore, step, log, evaluate, checkpoint, stop cleanly.

    task, model <- config;  restore the latest checkpoint in workdir if there is one
    for step in [start, num_steps):  state = train_step(state, task.train_batch(step))
        every log_every: metrics line;  every eval_every: test-split metrics
        every checkpoint_every, at the end, and on SIGTERM / Ctrl-C: checkpoint

Every batch is a function of (task seed, step), so stopping at step N and resuming gives the
same parameters and losses as running straight through.
"""

import dataclasses
import functools
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from seqjax.data import create_task
from seqjax.models import create_model
from seqjax.training import config as config_lib
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.evaluate import evaluate
from seqjax.training.metrics import MetricsWriter
from seqjax.training.optimizer import create_optimizer, learning_rate_schedule
from seqjax.training.step import TrainState, train_step
from seqjax.training.workdir import CHECKPOINT_DIR, prepare_workdir

TRAINING_KEYS = (
    "batch_size",
    "num_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_batch_size",
)


@dataclasses.dataclass
class TrainResult:
    step: int  # steps completed
    eval_metrics: dict[str, float]  # the latest test-split metrics (empty if none were run)
    stopped_by: str | None  # the signal that stopped training early, if any


class StopSignals:
    """Turns SIGTERM and the first Ctrl-C into a request to checkpoint and stop.

    A second Ctrl-C interrupts at once. Handlers are only installed in the main thread.
    """

    def __init__(self):
        self.received: str | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def check_training_config(config: ml_collections.ConfigDict) -> None:
    """Clear errors for missing sections and bad values before anything is built."""
    for section in ("task", "model", "optimizer", "training"):
        if section not in config:
            raise config_lib.ConfigError(f"config has no {section!r} section")
    missing = [key for key in TRAINING_KEYS if key not in config.training]
    if missing:
        raise config_lib.ConfigError(f"config.training is missing {', '.join(missing)}")
    for key in ("batch_size", "num_steps", "log_every", "eval_batch_size", "keep_checkpoints"):
        if config.training[key] < 1:
            raise config_lib.ConfigError(
                f"config.training.{key} must be at least 1, got {config.training[key]}"
            )
    if "name" not in config.task:
        raise config_lib.ConfigError("config.task.name is missing (the task to train on)")


def _format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def _format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(
        f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in metrics.items()
    )


class Progress:
    """A tqdm bar with loss, tokens/s and ETA on a terminal; plain log lines otherwise."""

    def __init__(self, *, total: int, initial: int, interactive: bool):
        self.total, self.interactive = total, interactive
        self.bar = None
        if interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, steps_done: int, metrics: dict[str, float], rate: float):
        tokens_per_second = metrics.pop("tokens_per_second")
        if self.bar is not None:
            self.bar.update(steps_done)
            self.bar.set_postfix(
                loss=f"{metrics['loss']:.4f}", tok_s=f"{tokens_per_second:,.0f}", refresh=False
            )
        else:
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            print(
                f"step {step}/{self.total}  {_format_metrics(metrics)}  "
                f"{tokens_per_second:,.0f} tokens/s  eta {_format_duration(eta)}",
                flush=True,
            )

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    interactive: bool | None = None,
    until_step: int | None = None,
) -> TrainResult:
    """Trains as ``config`` says, with everything written under ``workdir``.

    ``until_step`` checkpoints and returns after that step, as a preempted job would; the
    learning-rate schedule still follows ``config.training.num_steps``, so running again
    continues the same run.
    """
    check_training_config(config)
    training = config.training
    task = create_task(**config.task)
    model = create_model(
        config.model,
        vocab_size=task.vocab_size,
        input_dim=task.input_dim,
        rngs=nnx.Rngs(config.seed),
    )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    graphdef, params = nnx.split(model)
    schedule = learning_rate_schedule(config.optimizer, training.num_steps)
    optimizer = create_optimizer(config.optimizer, training.num_steps)
    opt_state = optimizer.init(params)

    checkpoints = Checkpoints(workdir / CHECKPOINT_DIR, keep=training.keep_checkpoints)
    start = checkpoints.latest_step() or 0
    prepare_workdir(workdir, config, has_checkpoint=bool(start))
    if start:
        params, opt_state = checkpoints.restore(start, params, opt_state)
    state = TrainState(step=jnp.asarray(start, jnp.int32), params=params, opt_state=opt_state)
    step_fn = jax.jit(
        functools.partial(train_step, graphdef, optimizer, schedule), donate_argnums=0
    )

    interactive = sys.stderr.isatty() if interactive is None else interactive
    writer = MetricsWriter(workdir, start_step=start)
    progress = Progress(total=training.num_steps, initial=start, interactive=interactive)
    if start:
        progress.message(f"resumed from the checkpoint at step {start} in {workdir}")
    tokens_per_step = training.batch_size * task.seq_len
    eval_metrics, last_saved, last_eval = {}, start, None

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate(graphdef, state.params, task, batch_size=training.eval_batch_size)
        writer.write(step, "eval", metrics)
        progress.message(f"eval at step {step}: {_format_metrics(metrics)}")
        return metrics

    step, last_step = start, min(training.num_steps, until_step or training.num_steps)
    with StopSignals() as stop:
        interval_start, interval_steps = time.perf_counter(), 0
        while step < last_step and not stop.received:
            state, metrics = step_fn(state, task.train_batch(step, training.batch_size))
            step += 1
            interval_steps += 1
            if step % training.log_every == 0 or step == training.num_steps:
                metrics = {name: float(value) for name, value in metrics.items()}
                elapsed = time.perf_counter() - interval_start
                writer.write(step, "train", metrics)
                rate = interval_steps / elapsed
                progress.update(
                    step, interval_steps, {**metrics, "tokens_per_second": rate * tokens_per_step},
                    rate,
                )  # fmt: skip
                interval_start, interval_steps = time.perf_counter(), 0
            if training.eval_every and step % training.eval_every == 0:
                eval_metrics, last_eval = run_eval(step), step
            if training.checkpoint_every and step % training.checkpoint_every == 0:
                checkpoints.save(step, state.params, state.opt_state)
                last_saved = step
        if step != last_saved:
            checkpoints.save(step, state.params, state.opt_state)
        checkpoints.close()
    if step == training.num_steps and last_eval != step:
        eval_metrics = run_eval(step)
    progress.close()
    writer.close()
    if stop.received:
        print(
            f"stopped by {stop.received} at step {step}; checkpoint saved in "
            f"{workdir / CHECKPOINT_DIR}. Run the same command to resume.",
            flush=True,
        )
    return TrainResult(step=step, eval_metrics=eval_metrics, stopped_by=stop.received)
