"""The training loop end to end on a tiny MQAR run: exact resume, checkpoints that survive a
kill, SIGTERM, metrics files, eval.py, and clear errors for bad input."""

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny_run import (
    ROOT,
    TINY,
    assert_same_params,
    checkpoint_steps,
    params_of,
    tiny_config,
    train_losses,
)

from seqjax.training import ConfigError, load_config, train, training_defaults
from seqjax.training.metrics import read_metrics


def test_resume_is_bit_identical_to_a_straight_run(tmp_path, trained_run):
    straight_dir, straight = trained_run
    first = train(tiny_config(), tmp_path / "resumed", interactive=False, until_step=3)
    assert first.step == 3
    assert checkpoint_steps(tmp_path / "resumed") == [3]
    resumed = train(tiny_config(), tmp_path / "resumed", interactive=False)
    assert straight.step == resumed.step == 8
    assert_same_params(params_of(straight_dir), params_of(tmp_path / "resumed"))
    assert train_losses(straight_dir) == train_losses(tmp_path / "resumed")
    assert [s for s, _ in train_losses(tmp_path / "resumed")] == list(range(1, 9))
    assert straight.eval_metrics == resumed.eval_metrics


def test_metrics_after_the_restored_step_are_dropped_on_resume(tmp_path):
    workdir = tmp_path / "run"
    train(tiny_config(), workdir, interactive=False, until_step=4)
    # A run killed after step 6 had logged lines its last checkpoint (step 4) does not have,
    # and possibly half a line.
    with open(workdir / "metrics.jsonl", "a") as file:
        file.write(json.dumps({"step": 5, "split": "train", "loss": 123.0}) + "\n")
        file.write('{"step": 6, "spl')
    train(tiny_config(), workdir, interactive=False)
    losses = train_losses(workdir)
    assert [s for s, _ in losses] == list(range(1, 9))
    assert 123.0 not in [loss for _, loss in losses]
    lines = (workdir / "metrics.jsonl").read_text().split("\n")
    assert lines[-1] == "" and all(line.endswith("}") for line in lines[:-1])


def test_training_writes_config_metrics_tensorboard_and_keeps_last_checkpoints(tmp_path, capsys):
    workdir = tmp_path / "run"
    train(tiny_config("training.keep_checkpoints=1"), workdir, interactive=True)
    progress_bar = capsys.readouterr().err
    assert "8/8" in progress_bar and "loss=" in progress_bar and "tok_s=" in progress_bar
    assert json.loads((workdir / "config.json").read_text())["model"]["mixer"] == "gru"
    assert checkpoint_steps(workdir) == [8]
    records = read_metrics(workdir)
    assert {r["split"] for r in records} == {"train", "eval"}
    assert [r["step"] for r in records if r["split"] == "eval"] == [4, 8]
    events = [p.name for p in (workdir / "tensorboard").iterdir()]
    assert any(name.startswith("events.out.tfevents") for name in events)


KILLED_DURING_COMMIT = textwrap.dedent(
    """
    import os, sys
    from orbax.checkpoint._src.path import atomicity
    sys.path.insert(0, {root!r})
    sys.path.insert(0, {tests!r})
    from tiny_run import tiny_config
    from seqjax.training import train

    async def die_while_committing(self, *args, **kwargs):
        os._exit(137)  # like SIGKILL: the files are written, the rename never happens

    atomicity.AtomicRenameTemporaryPath.finalize = die_while_committing
    train(tiny_config(), {workdir!r}, interactive=False)
    """
)


def test_a_checkpoint_killed_while_written_never_replaces_the_last_good_one(tmp_path, trained_run):
    workdir = tmp_path / "run"
    train(tiny_config(), workdir, interactive=False, until_step=4)
    script = KILLED_DURING_COMMIT.format(
        root=str(ROOT), tests=str(Path(__file__).parent), workdir=str(workdir)
    )
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == 137, killed.stderr
    assert checkpoint_steps(workdir) == [4]
    result = train(tiny_config(), workdir, interactive=False)
    assert result.step == 8
    assert_same_params(params_of(workdir), params_of(trained_run[0]))


def test_sigterm_checkpoints_and_exits_then_resumes(tmp_path):
    workdir = tmp_path / "run"
    overrides = [f"--config.{o}" for o in TINY] + ["--config.training.num_steps=100000"]
    process = subprocess.Popen(
        [sys.executable, "train.py", *overrides, "--workdir", str(workdir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in process.stdout:
        if line.startswith("step 5/"):
            process.send_signal(signal.SIGTERM)
            break
    output = process.stdout.read()
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, output
    stopped = max(checkpoint_steps(workdir))
    assert stopped >= 5 and f"stopped by SIGTERM at step {stopped}" in output
    resumed = subprocess.run(
        [sys.executable, "train.py", *overrides[:-1], "--config.training.num_steps=100000",
         f"--until_step={stopped + 2}", "--workdir", str(workdir)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from the checkpoint at step {stopped}" in resumed.stdout
    assert max(checkpoint_steps(workdir)) == stopped + 2


def test_eval_cli_reports_the_same_accuracy_as_training(copy_of_trained_run, trained_run):
    workdir, result = copy_of_trained_run, trained_run[1]
    completed = subprocess.run(
        [sys.executable, "eval.py", "--workdir", str(workdir)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    report = json.loads((workdir / "eval" / "step_8.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(result.eval_metrics["accuracy"])
    assert report["metrics"]["loss"] == pytest.approx(result.eval_metrics["loss"], rel=1e-6)
    assert "| accuracy |" in completed.stdout


def test_resuming_with_an_incompatible_config_is_refused(tmp_path):
    workdir = tmp_path / "run"
    train(tiny_config(), workdir, interactive=False, until_step=2)
    with pytest.raises(ConfigError, match=r"different config:\n  model.d_model: 16 -> 32"):
        train(tiny_config("model.d_model=32"), workdir, interactive=False)
    # Settings that do not change the checkpoint's shape may change.
    train(tiny_config("training.log_every=2"), workdir, interactive=False, until_step=3)


def test_options_added_since_a_run_started_do_not_block_its_resume(tmp_path):
    workdir = tmp_path / "run"
    train(tiny_config(), workdir, interactive=False, until_step=2)
    saved = json.loads((workdir / "config.json").read_text())
    del saved["model"]["mixers"]["gru"]["reset_after"]  # as if written before the option
    (workdir / "config.json").write_text(json.dumps(saved))
    assert train(tiny_config(), workdir, interactive=False, until_step=3).step == 3
    with pytest.raises(ConfigError, match=r"model.mixers.gru.reset_after: True -> False"):
        train(tiny_config("model.mixers.gru.reset_after=false"), workdir, interactive=False)


def test_bad_config_keys_and_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"key 'model.mixr' \(did you mean 'model.mixer'"):
        tiny_config("model.mixr=gru")
    with pytest.raises(ConfigError, match=r"'training.batch_size' expects a int, got 'many'"):
        tiny_config("training.batch_size=many")
    with pytest.raises(ConfigError, match="config file 'nope.py' does not exist"):
        load_config("nope.py")
    with pytest.raises(ValueError, match=r"unknown mixer 'lstn'; available mixers: .*lstm"):
        train(tiny_config("model.mixer=lstn"), tmp_path / "run", interactive=False)
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) batchsize; options"):
        training_defaults(batchsize=8)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--config.model.mixer=nope"], "unknown mixer 'nope'; available mixers:"),
        (["--config.model.widht=3"], "unknown config key 'model.widht'"),
        (["--config", "configs/text.py", "--config.task.path=/no/such/file.txt"],
         "/no/such/file.txt"),
    ],
)  # fmt: skip
def test_train_cli_prints_a_clear_error_not_a_traceback(tmp_path, arguments, message):
    completed = subprocess.run(
        [sys.executable, "train.py", *arguments, "--workdir", str(tmp_path / "run")],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert completed.returncode == 2
    assert message in completed.stderr and "Traceback" not in completed.stderr


def test_empty_text_file_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    config = load_config(str(ROOT / "configs" / "text.py"), [f"task.path={empty}"])
    with pytest.raises(ValueError, match="empty"):
        train(config, tmp_path / "run", interactive=False)
