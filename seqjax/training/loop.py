"""The training loop: build, restore, step, log, evaluate, checkpoint, stop cleanly.

    task, mesh <- config;  model and optimizer state created sharded on the mesh, or
    restored onto it from the latest checkpoint in workdir (saved on any mesh)
    for step in [start, num_steps):  state = train_step(state, task.train_batch(step))
        every log_every: metrics line;  every eval_every: test-split metrics
        every checkpoint_every, at the end, and on SIGTERM / Ctrl-C: checkpoint

Every batch is a function of (task seed, step), so stopping at step N and resuming gives the
same parameters and losses as running straight through.
"""

import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from seqjax.data import create_task
from seqjax.layers.partitioning import BATCH, SEQUENCE
from seqjax.models.backbone import REMAT_POLICIES
from seqjax.training import config as config_lib
from seqjax.training import sharding
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.evaluate import evaluate
from seqjax.training.metrics import MetricsWriter
from seqjax.training.step import TrainState
from seqjax.training.trainer import COMPUTE_DTYPES, Trainer
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

    def agreed(self) -> bool:
        """Whether to stop now: with several processes, whether any of them was signalled,
        so that all stop at the same step (one that stopped alone would hang the others)."""
        if jax.process_count() == 1:
            return self.received is not None
        flags = multihost_utils.process_allgather(np.int32(self.received is not None))
        return bool(np.any(flags))

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
    for key in (
        "batch_size", "num_steps", "log_every", "eval_batch_size", "keep_checkpoints",
        "grad_accumulation_steps",
    ):  # fmt: skip
        if config.training[key] < 1:
            raise config_lib.ConfigError(
                f"config.training.{key} must be at least 1, got {config.training[key]}"
            )
    if config.training.compute_dtype not in COMPUTE_DTYPES:
        raise config_lib.ConfigError(
            f"config.training.compute_dtype must be one of {', '.join(COMPUTE_DTYPES)}, "
            f"got {config.training.compute_dtype!r}"
        )
    if config.training.remat not in REMAT_POLICIES:
        raise config_lib.ConfigError(
            f"config.training.remat must be one of {', '.join(REMAT_POLICIES)}, "
            f"got {config.training.remat!r}"
        )
    if "name" not in config.task:
        raise config_lib.ConfigError("config.task.name is missing (the task to train on)")


def check_fits_mesh(config: ml_collections.ConfigDict, mesh: Mesh, task) -> None:
    """The batch must split evenly over the batch axes and micro-batches, and the sequence
    over the sequence axis."""
    rules = sharding.rules_of(config.mesh)
    training = config.training
    rows = training.batch_size // training.grad_accumulation_steps
    batch_devices = sharding.axis_product(mesh, dict(rules).get(BATCH))
    if training.batch_size % training.grad_accumulation_steps or rows % batch_devices:
        raise config_lib.ConfigError(
            f"config.training.batch_size ({training.batch_size}) must be a multiple of "
            f"grad_accumulation_steps ({training.grad_accumulation_steps}) times the "
            f"{batch_devices} devices of the batch axes {dict(rules).get(BATCH)} of mesh "
            f"{dict(mesh.shape)}"
        )
    sequence_devices = sharding.axis_product(mesh, dict(rules).get(SEQUENCE))
    if task.seq_len % sequence_devices:
        raise config_lib.ConfigError(
            f"the task's sequence length ({task.seq_len}) must be a multiple of the "
            f"{sequence_devices} devices of the sequence axis of mesh {dict(mesh.shape)}"
        )


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
    mesh: Mesh | None = None,
) -> TrainResult:
    """Trains as ``config`` says, with everything written under ``workdir``.

    ``until_step`` checkpoints and returns after that step, as a preempted job would; the
    learning-rate schedule still follows ``config.training.num_steps``, so running again
    continues the same run. ``mesh`` replaces the one ``config.mesh`` describes.

    With several processes (``jax.distributed``), every process runs this with the same
    config and workdir: each loads its own rows of every batch, all write the checkpoints
    together, and only process 0 writes the config and metrics and prints progress.
    """
    config = config_lib.with_defaults(config)
    check_training_config(config)
    training = config.training
    task = create_task(**config.task)
    mesh = sharding.create_mesh(config.mesh) if mesh is None else mesh
    check_fits_mesh(config, mesh, task)
    is_main = jax.process_index() == 0
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, task, mesh)

    checkpoints = Checkpoints(workdir / CHECKPOINT_DIR, keep=training.keep_checkpoints)
    start = checkpoints.latest_step() or 0
    prepare_workdir(workdir, config, has_checkpoint=bool(start), write=is_main)
    if start:
        like = trainer.abstract_state
        params, opt_state = checkpoints.restore(start, like.params, like.opt_state)
        state = TrainState(
            step=jax.device_put(jnp.asarray(start, jnp.int32), like.step.sharding),
            params=params,
            opt_state=opt_state,
        )
    else:
        state = trainer.initial_state()

    interactive = sys.stderr.isatty() if interactive is None else interactive
    writer = MetricsWriter(workdir, start_step=start) if is_main else None
    progress = Progress(
        total=training.num_steps, initial=start, interactive=interactive and is_main
    )
    if start:
        progress.message(f"resumed from the checkpoint at step {start} in {workdir}")
    tokens_per_step = training.batch_size * task.seq_len
    eval_metrics, last_saved, last_eval = {}, start, None

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate(
            trainer.graphdef, state.params, task, batch_size=training.eval_batch_size, mesh=mesh
        )
        if writer:
            writer.write(step, "eval", metrics)
            progress.message(f"eval at step {step}: {_format_metrics(metrics)}")
        return metrics

    step, last_step = start, min(training.num_steps, until_step or training.num_steps)
    with StopSignals() as stop:
        interval_start, interval_steps = time.perf_counter(), 0
        while step < last_step and not stop.agreed():
            state, metrics = trainer.step(state, trainer.batch(step))
            step += 1
            interval_steps += 1
            if step % training.log_every == 0 or step == training.num_steps:
                metrics = {name: float(value) for name, value in metrics.items()}
                elapsed = time.perf_counter() - interval_start
                rate = interval_steps / elapsed
                if writer:
                    writer.write(step, "train", metrics)
                    progress.update(
                        step, interval_steps,
                        {**metrics, "tokens_per_second": rate * tokens_per_step}, rate,
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
    if writer:
        writer.close()
    if stop.received and is_main:
        print(
            f"stopped by {stop.received} at step {step}; checkpoint saved in "
            f"{workdir / CHECKPOINT_DIR}. Run the same command to resume.",
            flush=True,
        )
    return TrainResult(step=step, eval_metrics=eval_metrics, stopped_by=stop.received)
