"""Faults on the tiny run: divergence, NaN batches, a full disk, unwritable directories,
corrupt checkpoints and non-finite metrics. Each is one line naming the path or step and
the cause; nothing non-finite is saved or reported; the last good checkpoint survives."""

import errno
import json
import math
import os
import re
import shutil
import subprocess

import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import (
    assert_same_params,
    checkpoint_steps,
    load_script,
    params_of,
    strict_json_lines,
    tiny_config,
    train_cli,
)

from seqjax import evaluation
from seqjax.data import base as data_base
from seqjax.data.mqar import MultiQueryAssociativeRecall
from seqjax.evaluation import NonFiniteResultError, evaluate_run, load_run
from seqjax.training import NonFiniteError, train
from seqjax.training import metrics as metrics_module
from seqjax.training.checkpoint import CheckpointError, Checkpoints, CorruptCheckpointError
from seqjax.training.files import WriteError
from seqjax.training.metrics import MetricsWriter
from seqjax.training.workdir import CONFIG_HISTORY_FILE

NAN_BATCHES = (2, 5)  # 0-based batch indices: loop steps 3 and 6


class RecallWithNaNBatches(MultiQueryAssociativeRecall):
    """MQAR whose training batches NAN_BATCHES have NaN weights, so a NaN loss."""

    name = "mqar_with_nan_batches"

    def train_batch(self, step, batch_size, **shard):
        batch = super().train_batch(step, batch_size, **shard)
        if step in NAN_BATCHES:
            batch["weights"] = np.full_like(batch["weights"], np.nan)
        return batch


@pytest.fixture
def nan_batches_task(monkeypatch):
    """RecallWithNaNBatches registered for one test (the task list stays as shipped)."""
    monkeypatch.setitem(data_base._TASKS, RecallWithNaNBatches.name, RecallWithNaNBatches)


def mount(*arguments):
    """Runs mount (needs root and a kernel that allows it); skips the test where it cannot."""
    completed = subprocess.run(["mount", *arguments], capture_output=True, text=True)
    if completed.returncode:
        pytest.skip(f"cannot mount here ({completed.stderr.strip() or 'mount failed'})")


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk))
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def error_line(stderr: str) -> str:
    """The one line train.py printed on stderr (it must be exactly one)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_a_diverging_run_stops_at_its_first_nonfinite_step_and_keeps_its_checkpoints(
    copy_of_trained_run,
):
    workdir = copy_of_trained_run
    before = {step: params_of(workdir, step) for step in (4, 8)}
    status, _, stderr = train_cli(
        workdir, "--config.optimizer.learning_rate=1e6", "--config.training.num_steps=16"
    )
    assert status == 1
    line = error_line(stderr)
    first = int(re.match(r"error: non-finite loss or gradient at step (\d+): ", line).group(1))
    assert line.endswith(
        f"training stopped without saving; the last good checkpoint is step 8 in "
        f"{workdir / 'checkpoints'}. Lower optimizer.learning_rate, or set "
        "training.skip_nonfinite_updates=True to skip such steps"
    )
    resumed = [r for r in strict_json_lines(workdir) if r["split"] == "train" and r["step"] > 8]
    assert [r["step"] for r in resumed] == list(range(9, first + 1))  # stopped at that step
    assert all(r["loss"] is not None and r["grad_norm"] is not None for r in resumed[:-1])
    assert resumed[-1]["loss"] is None or resumed[-1]["grad_norm"] is None
    assert checkpoint_steps(workdir) == [4, 8]  # nothing saved after, nothing rotated away
    for step, params in before.items():  # each restores (finite values, intact files)
        assert_same_params(params_of(workdir, step), params)
    [earlier] = [json.loads(line) for line in (workdir / CONFIG_HISTORY_FILE).open()]
    assert earlier["until_step"] == 8 and earlier["config"]["optimizer"]["learning_rate"] == 3e-3
    assert earlier["changes"] == [
        "optimizer.learning_rate: 0.003 -> 1000000.0",
        "training.num_steps: 8 -> 16",
    ]


def test_skipping_nonfinite_updates_trains_through_nan_batches_and_counts_them(
    tmp_path, nan_batches_task
):
    settings = ["task.name=mqar_with_nan_batches", "training.checkpoint_every=1"]
    config = tiny_config(*settings, "training.keep_checkpoints=8")
    with pytest.raises(NonFiniteError, match="non-finite loss or gradient at step 3: .* step 2"):
        train(config, tmp_path / "stops", interactive=False)
    assert checkpoint_steps(tmp_path / "stops") == [1, 2]

    workdir = tmp_path / "skips"
    config.training.skip_nonfinite_updates = True
    result = train(config, workdir, interactive=False)
    assert (result.step, result.skipped_updates) == (8, 2)
    lines = [r for r in strict_json_lines(workdir) if r["split"] == "train"]
    assert [r["skipped_updates"] for r in lines] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert [r["step"] for r in lines if r["loss"] is None] == [3, 6]
    params = {step: params_of(workdir, step) for step in range(1, 9)}  # all finite
    for skipped in (3, 6):  # parameters and optimizer schedule unchanged by a skipped step
        assert_same_params(params[skipped], params[skipped - 1])
        assert lines[skipped - 1]["learning_rate"] == lines[skipped]["learning_rate"]
    with pytest.raises(AssertionError):
        assert_same_params(params[4], params[3])
    assert result.eval_metrics and all(map(math.isfinite, result.eval_metrics.values()))


def test_a_disk_that_fills_during_a_checkpoint_is_one_error_and_the_last_checkpoint_restores(
    trained_run, small_disk
):
    workdir = small_disk / "run"
    shutil.copytree(trained_run[0], workdir)
    shutil.rmtree(workdir / "checkpoints" / "8")  # resume from 4, save 8 again
    space = os.statvfs(small_disk)
    # Room for the config and metrics, not for the checkpoint (about 200 KiB).
    (small_disk / "filler").write_bytes(bytes(space.f_bavail * space.f_frsize - 100 * 1024))
    status, stdout, stderr = train_cli(workdir, timeout=120)
    assert status == 1, stdout
    assert error_line(stderr) == (
        f"error: cannot write the checkpoint of step 8 in {workdir / 'checkpoints'}: "
        "No space left on device (the checkpoint of step 4 is intact)"
    )
    (small_disk / "filler").unlink()
    assert checkpoint_steps(workdir) == [4]
    assert_same_params(params_of(workdir), params_of(trained_run[0], 4))
    assert [r["step"] for r in strict_json_lines(workdir) if r["split"] == "train"][-1] == 8


def test_an_unwritable_checkpoint_directory_is_one_error_not_a_hang(copy_of_trained_run):
    checkpoints = copy_of_trained_run / "checkpoints"
    shutil.rmtree(checkpoints / "8")
    mount("--bind", str(checkpoints), str(checkpoints))
    try:
        mount("-o", "remount,bind,ro", str(checkpoints))  # root ignores file permissions
        status, _, stderr = train_cli(copy_of_trained_run, timeout=120)
    finally:
        subprocess.run(["umount", str(checkpoints)], check=True)
    assert status == 1
    assert error_line(stderr) == f"error: cannot write in {checkpoints}: Read-only file system"
    assert checkpoint_steps(copy_of_trained_run) == [4]


@pytest.mark.parametrize(
    "file, workdir, message",
    [
        ("run", "run", "cannot use {tmp}/run as a directory: it is a file"),
        ("run", "run/sub", "cannot create {tmp}/run/sub: {tmp}/run is a file, not a directory"),
        ("run/checkpoints", "run", "cannot use {tmp}/run/checkpoints as a directory: it is a file"),
    ],
)
def test_a_workdir_that_cannot_be_a_directory_is_one_error(tmp_path, file, workdir, message):
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text("not a directory")
    with pytest.raises(WriteError, match=re.escape(message.format(tmp=tmp_path))):
        train(tiny_config(), tmp_path / workdir, interactive=False)


@pytest.mark.parametrize("damage", ["truncated", "deleted", "bit-flipped"])
def test_a_corrupt_latest_checkpoint_is_named_and_resume_falls_back(
    copy_of_trained_run, trained_run, damage, capsys
):
    workdir = copy_of_trained_run
    latest = workdir / "checkpoints" / "8"
    data = max((p for p in (latest / "params").rglob("*") if p.is_file()), key=os.path.getsize)
    size, name = data.stat().st_size, data.relative_to(latest)
    if damage == "truncated":
        os.truncate(data, size // 2)
        problem = f"file {name} has {size // 2} bytes, not the {size} saved"
    elif damage == "deleted":
        data.unlink()
        problem = f"file {name} is missing"
    else:
        flipped = bytearray(data.read_bytes())  # eight bytes in the middle
        for index in range(size // 2, size // 2 + 8):
            flipped[index] ^= 0xFF
        data.write_bytes(bytes(flipped))
        problem = f"file {name} does not match its checksum"
    named = f"the checkpoint at step 8 in {workdir / 'checkpoints'} is corrupt: {problem}"
    with pytest.raises(CheckpointError, match=re.escape(named)):
        load_run(workdir)
    assert load_script("eval").main(["--workdir", str(workdir)]) == 1
    assert capsys.readouterr().err == f"error: {named}\n"
    result = train(tiny_config(), workdir, interactive=False)
    output = capsys.readouterr().out
    assert f"{named}; moved it to {workdir / 'corrupt_checkpoints' / '8'}" in output
    assert "resumed from the checkpoint at step 4" in output
    assert result.step == 8 and checkpoint_steps(workdir) == [4, 8]
    assert_same_params(params_of(workdir), params_of(trained_run[0]))


def test_checkpoints_holding_nonfinite_values_are_refused_and_passed_over(tmp_path):
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    good, bad = {"w": jnp.ones(3)}, {"w": jnp.asarray([1.0, np.nan, 2.0])}
    checkpoints.save(1, good, good, skipped_updates=3)
    checkpoints.save(2, bad, good)
    checkpoints.wait()
    assert (tmp_path / "checkpoints" / "2" / "checksums.json").exists()  # intact files
    with pytest.raises(CorruptCheckpointError, match=r"step 2 .* non-finite values in params.w"):
        checkpoints.restore(2, good, good)
    restored, corrupt = checkpoints.restore_newest_intact(good, good)
    assert (restored.step, restored.skipped_updates, list(corrupt)) == (1, 3, [2])
    checkpoints.close()
    only_bad = Checkpoints(tmp_path / "only_bad")
    only_bad.save(1, bad, good)
    with pytest.raises(CheckpointError, match="no intact checkpoint to resume from"):
        only_bad.restore_newest_intact(good, good)
    only_bad.close()


def test_a_checkpoint_of_another_model_is_refused_as_not_fitting_not_as_corrupt(tmp_path):
    """Arrays saved under other names (another model, or a checkpoint written before a
    parameter moved), with or without checksums: refused by name, nothing set aside."""
    checkpoints = Checkpoints(tmp_path / "checkpoints")
    saved, model = {"conv_kernel": jnp.ones(3)}, {"conv": {"kernel": jnp.ones(3)}}
    checkpoints.save(1, saved, saved)
    checkpoints.save(2, saved, saved)
    checkpoints.wait()
    (tmp_path / "checkpoints" / "2" / "checksums.json").unlink()
    for step in (1, 2):
        with pytest.raises(CheckpointError, match="does not fit this model") as error:
            checkpoints.restore(step, model, model)
        assert not isinstance(error.value, CorruptCheckpointError)
        assert "('conv', 'kernel')" in str(error.value) and "('conv_kernel',)" in str(error.value)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        checkpoints.restore_newest_intact(model, model)
    checkpoints.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_nonfinite_metrics_are_not_reported_as_a_result(trained_run, monkeypatch):
    run = load_run(trained_run[0])
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, **k: {"loss": math.nan, "accuracy": 0.5})
    with pytest.raises(NonFiniteResultError, match=r"step 8 .* gives non-finite loss on the test"):
        evaluate_run(run, batch_size=16)


def test_metrics_lines_are_valid_json_and_never_half_written(tmp_path, monkeypatch):
    writer = MetricsWriter(tmp_path, start_step=0)
    writer.write(1, "train", {"loss": math.nan, "grad_norm": math.inf, "skipped_updates": 1})
    writer.write(2, "train", {"loss": 0.5, "grad_norm": -math.inf, "skipped_updates": 1})
    before = (tmp_path / "metrics.jsonl").read_bytes()

    real_write = os.write  # a disk that fills in the middle of a line:
    monkeypatch.setattr(metrics_module.os, "write", lambda fd, data: real_write(fd, data[:9]))
    with pytest.raises(WriteError, match=os.strerror(errno.ENOSPC)):
        writer.write(3, "train", {"loss": 0.25})
    monkeypatch.undo()
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    assert strict_json_lines(tmp_path) == [
        {"step": 1, "split": "train", "loss": None, "grad_norm": None, "skipped_updates": 1},
        {"step": 2, "split": "train", "loss": 0.5, "grad_norm": None, "skipped_updates": 1},
    ]
