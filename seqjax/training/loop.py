"""The training loop: build, restore, step, log, evaluate, checkpoint, stop cleanly.

    task, mesh <- config;  model and optimizer state created sharded on the mesh (the
    parameters read from model.init_from, if set), or restored onto it from the newest
    intact checkpoint in workdir (saved on any mesh)
    for step in [start, num_steps):  state = train_step(state, task.train_batch(step))
        every log_every: metrics line;  every eval_every: test-split metrics
        every checkpoint_every, at the end, and on SIGTERM / Ctrl-C: checkpoint

Every batch is a function of (task seed, step), so stopping at step N and resuming gives the
same parameters and losses as running straight through.

A step with a non-finite loss or gradient changes nothing (train_step guards it). By default
the run then stops with a NonFiniteError naming that step and the last good checkpoint, and
saves nothing after it; with ``training.skip_nonfinite_updates`` it carries on and counts
the skipped updates in the metrics (``skipped_updates``). The loop learns of both, and of a
stop signal on any process, from each step's report, read one step behind (and at log,
eval and checkpoint steps), so the device never waits on the host.
"""

import contextlib
import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from typing import NamedTuple

import jax
import ml_collections
from jax.sharding import Mesh

from seqjax.data import create_task
from seqjax.layers.partitioning import BATCH, SEQUENCE
from seqjax.training import config as config_lib
from seqjax.training import sharding
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.evaluate import evaluate
from seqjax.training.files import writable_directory
from seqjax.training.metrics import MetricsWriter
from seqjax.training.trainer import (
    REPORT,
    REPORT_FIRST_NONFINITE_STEP,
    REPORT_SKIPPED_UPDATES,
    REPORT_STOP_SIGNAL,
    Trainer,
)
from seqjax.training.workdir import (
    CHECKPOINT_DIR,
    CONFIG_HISTORY_FILE,
    CORRUPT_CHECKPOINT_DIR,
    check_resume,
    save_config,
)


@dataclasses.dataclass
class TrainResult:
    step: int  # steps completed
    eval_metrics: dict[str, float]  # the latest test-split metrics (empty if none were run)
    stopped_by: str | None  # the signal that stopped training early (on any process), if any
    skipped_updates: int = 0  # non-finite updates skipped (training.skip_nonfinite_updates)


class NonFiniteError(RuntimeError):
    """Training reached a non-finite loss or gradient (and was not told to skip it)."""


class Report(NamedTuple):
    """A step's report (Trainer.step), read back from the device."""

    stop_signal: int  # the largest signal number any process had received; 0: none
    first_nonfinite_step: int  # -1: none yet
    skipped_updates: int

    @classmethod
    def read(cls, report: jax.Array) -> "Report":
        values = [int(value) for value in jax.device_get(report)]
        return cls(
            stop_signal=values[REPORT_STOP_SIGNAL],
            first_nonfinite_step=values[REPORT_FIRST_NONFINITE_STEP],
            skipped_updates=values[REPORT_SKIPPED_UPDATES],
        )


class StopSignals:
    """Turns SIGTERM and the first Ctrl-C into a request to checkpoint and stop.

    A second Ctrl-C interrupts at once. Handlers are only installed in the main thread.
    ``number`` is the signal received (0: none), which every step reports to every process.
    """

    def __init__(self):
        self.number = 0
        self._previous = {}

    def _handle(self, signum, frame):
        if self.number and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.number = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def check_until_step(until_step: int | None, num_steps: int) -> None:
    if until_step is not None and not (
        isinstance(until_step, int) and 1 <= until_step <= num_steps
    ):
        raise config_lib.ConfigError(
            f"until_step must be an integer in [1, training.num_steps={num_steps}], "
            f"got {until_step!r}"
        )


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

    Raises NonFiniteError when training diverges, CheckpointError when no checkpoint is
    intact, WriteError when a file of the run cannot be written.
    """
    config = config_lib.with_defaults(config)
    config_lib.import_modules(config)
    config_lib.check_config(config)
    config_lib.check_pretrained(config)
    training = config.training
    check_until_step(until_step, training.num_steps)
    task = create_task(**config.task)
    mesh = sharding.create_mesh(config.mesh) if mesh is None else mesh
    check_fits_mesh(config, mesh, task)
    trainer = Trainer(config, task, mesh)
    workdir = writable_directory(workdir)
    checkpoints = Checkpoints(workdir / CHECKPOINT_DIR, keep=training.keep_checkpoints)
    with checkpoints:
        return _train(config, workdir, trainer, checkpoints, interactive, until_step)


def _train(config, workdir, trainer, checkpoints, interactive, until_step) -> TrainResult:
    training, task = config.training, trainer.task
    is_main = jax.process_index() == 0
    check_resume(workdir, config, has_checkpoint=bool(checkpoints.all_steps()))
    like = trainer.abstract_state
    restored, corrupt = checkpoints.restore_newest_intact(like.params, like.opt_state)
    start = restored.step if restored else 0
    if until_step is not None and until_step < start:
        raise config_lib.ConfigError(
            f"until_step ({until_step}) is before step {start} of the checkpoint in {workdir}"
        )
    set_aside = checkpoints.set_aside(sorted(corrupt), workdir / CORRUPT_CHECKPOINT_DIR)
    changes = save_config(workdir, config, start) if is_main else []
    if restored:
        state = trainer.restored_state(
            start, restored.params, restored.opt_state, skipped_updates=restored.skipped_updates
        )
    else:
        state = trainer.initial_state()

    interactive = sys.stderr.isatty() if interactive is None else interactive
    writer = MetricsWriter(workdir, start_step=start) if is_main else None
    progress = Progress(
        total=training.num_steps, initial=start, interactive=interactive and is_main
    )
    for (_, problem), moved in zip(sorted(corrupt.items()), set_aside, strict=True):
        progress.message(f"{problem}; moved it to {moved}")
    if start:
        progress.message(f"resumed from the checkpoint at step {start} in {workdir}")
    elif trainer.init_from is not None:
        progress.message(f"started from the pretrained checkpoint in {trainer.init_from}")
    if changes:
        progress.message(
            f"config changed since step {start} (the earlier one is kept in "
            f"{workdir / CONFIG_HISTORY_FILE}): " + "; ".join(changes)
        )
    tokens_per_step = training.batch_size * task.seq_len
    eval_metrics, last_saved, last_eval = {}, start, None

    def checked(report: Report) -> Report:
        """``report``, unless it shows a non-finite step that is not to be skipped."""
        if report.first_nonfinite_step >= 0 and not training.skip_nonfinite_updates:
            saved = (
                f"the last good checkpoint is step {last_saved} in {checkpoints.directory}"
                if last_saved
                else "no checkpoint was saved"
            )
            raise NonFiniteError(
                f"non-finite loss or gradient at step {report.first_nonfinite_step}: training "
                f"stopped without saving; {saved}. Lower optimizer.learning_rate, or set "
                "training.skip_nonfinite_updates=True to skip such steps"
            )
        return report

    def run_eval(step: int) -> dict[str, float]:
        metrics = evaluate(
            trainer.graphdef,
            state.params,
            task,
            batch_size=training.eval_batch_size,
            objective=trainer.objective,
            mesh=trainer.mesh,
        )
        if writer:
            writer.write(step, "eval", metrics)
            progress.message(f"eval at step {step}: {_format_metrics(metrics)}")
        return metrics

    step, last_step = start, until_step or training.num_steps
    skipped = restored.skipped_updates if restored else 0
    report = Report(stop_signal=0, first_nonfinite_step=-1, skipped_updates=skipped)
    pending = None  # the latest step's report, not yet read
    try:
        with StopSignals() as stop:
            interval_start, interval_steps = time.perf_counter(), 0
            while step < last_step and not report.stop_signal:
                state, metrics = trainer.step(
                    state, trainer.batch(step), trainer.stop_signal(stop.number)
                )
                latest = metrics.pop(REPORT)
                step += 1
                interval_steps += 1
                if pending is not None:  # that step is done, or nearly
                    report = checked(Report.read(pending))
                pending = latest
                logs = step % training.log_every == 0 or step == training.num_steps
                evaluates = training.eval_every and step % training.eval_every == 0
                saves = training.checkpoint_every and step % training.checkpoint_every == 0
                if logs or evaluates or saves:
                    report, pending = Report.read(latest), None
                if logs:
                    metrics = {name: float(value) for name, value in metrics.items()}
                    if training.skip_nonfinite_updates:
                        metrics["skipped_updates"] = report.skipped_updates
                    elapsed = time.perf_counter() - interval_start
                    rate = interval_steps / elapsed
                    if writer:  # written before the check: a non-finite step has its line
                        writer.write(step, "train", metrics)
                        progress.update(
                            step, interval_steps,
                            {**metrics, "tokens_per_second": rate * tokens_per_step}, rate,
                        )  # fmt: skip
                    interval_start, interval_steps = time.perf_counter(), 0
                report = checked(report)
                if evaluates:
                    eval_metrics, last_eval = run_eval(step), step
                if saves:
                    checkpoints.save(
                        step, state.params, state.opt_state, skipped_updates=report.skipped_updates
                    )
                    last_saved = step
            if pending is not None:
                report = checked(Report.read(pending))
            if step != last_saved:
                checkpoints.save(
                    step, state.params, state.opt_state, skipped_updates=report.skipped_updates
                )
            checkpoints.close()
        if step == training.num_steps and last_eval != step:
            eval_metrics = run_eval(step)
    except BaseException:
        progress.close()
        if writer:
            with contextlib.suppress(OSError):  # the error being raised is the one to report
                writer.close()
        raise
    progress.close()
    if writer:
        writer.close()
    stopped_by = signal.Signals(report.stop_signal).name if report.stop_signal else None
    if stopped_by and is_main:
        print(
            f"stopped by {stopped_by} at step {step}; checkpoint saved in "
            f"{workdir / CHECKPOINT_DIR}. Run the same command to resume.",
            flush=True,
        )
    if report.skipped_updates and is_main:
        print(
            f"skipped {report.skipped_updates} updates with a non-finite loss or gradient",
            flush=True,
        )
    return TrainResult(
        step=step,
        eval_metrics=eval_metrics,
        stopped_by=stopped_by,
        skipped_updates=report.skipped_updates,
    )
