"""Configs accept no setting that nothing reads: every key of every config in configs/ is
used, and each value out of range, unknown key or option of a mixer not in the model is an
error that names it. One override parser serves train.py and eval.py."""

import math

import pytest
from flax import nnx
from tiny_run import ROOT, load_script, tiny_config

from seqjax.data import create_task
from seqjax.models import create_model
from seqjax.training import ConfigError, load_config, train
from seqjax.training.config import check_config, parse_overrides
from seqjax.training.objectives import create_task_model

CONFIG_FILES = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "suites.py")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda path: path.stem)
def test_every_key_of_every_config_file_is_used(path, tmp_path):
    """Each section is complete and checked, and the task and model are built from exactly
    their keys (each builder refuses a key it does not read)."""
    config = load_config(str(path))
    check_config(config)
    if config.task.name == "text":
        (tmp_path / "corpus.txt").write_text("seqjax " * 200)
        config.task.path = str(tmp_path / "corpus.txt")
    task = create_task(**config.task)
    nnx.eval_shape(lambda: create_task_model(config.model, task, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.learning_rate=-1", "learning_rate must be a finite number > 0, got -1.0"),
        ("optimizer.learning_rate=nan", "optimizer.learning_rate must be a finite number > 0"),
        ("optimizer.b2=1.5", r"optimizer.b2 must be a number in \[0, 1\), got 1.5"),
        ("optimizer.eps=0", "optimizer.eps must be a finite number > 0, got 0"),
        ("optimizer.weight_decay=-0.1", "optimizer.weight_decay must be a finite number >= 0"),
        ("optimizer.grad_clip_norm=-1", "optimizer.grad_clip_norm must be a finite number >= 0"),
        ("optimizer.warmup_steps=-5", "optimizer.warmup_steps must be an integer >= 0, got -5"),
        ("optimizer.end_learning_rate_ratio=2", r"ratio must be a number in \[0, 1\], got 2.0"),
        ("training.checkpoint_every=-1", "checkpoint_every must be an integer >= 0, got -1"),
        ("training.eval_every=-1", "training.eval_every must be an integer >= 0, got -1"),
        ("training.log_every=0", "training.log_every must be an integer >= 1, got 0"),
        ("training.compute_dtype=float16", "compute_dtype must be one of 'float32', 'bfloat16'"),
        ("seed=-1", "config.seed must be an integer >= 0, got -1"),
        ("imports=not-a-module", "config.imports: 'not-a-module' is not a module name"),
    ],
)  # fmt: skip
def test_values_out_of_range_are_refused_by_name(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        train(tiny_config(override), tmp_path / "run", interactive=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_keys_nothing_reads_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model.pooling'"):
        tiny_config("model.pooling=max")
    config = tiny_config()
    config.model.pooling = "mean"  # a config file that sets it for a language model
    with pytest.raises(
        ValueError, match=r"model.pooling \(a key of head pooled\) set, but head 'token' does not"
    ):
        train(config, tmp_path / "run", interactive=False)
    with pytest.raises(ValueError, match=r"pooling must be .*'last'.*'mean'.*, got 'max'"):
        create_model(
            {**tiny_config().model, "pooling": "max"}, head="pooled", vocab_size=8, rngs=nnx.Rngs(0)
        )
    for section, key in [
        (None, "learning_rate"),
        ("optimizer", "momentum"),
        ("training", "epochs"),
    ]:
        config = tiny_config()
        (config if section is None else config[section])[key] = 1
        where = key if section is None else f"{section}.{key}"
        with pytest.raises(ConfigError, match=rf"unknown (top-level )?config key\(s\) {where}"):
            train(config, tmp_path / "run", interactive=False)
    config = tiny_config()
    del config.optimizer.b1
    with pytest.raises(ConfigError, match="config.optimizer is missing b1"):
        train(config, tmp_path / "run", interactive=False)
    with pytest.raises(ConfigError, match=r"sets an option of mixer 'lstm', which the model"):
        tiny_config("model.mixers.lstm.hidden_size=8")  # the model is a GRU


@pytest.mark.parametrize("until_step", [0, -3, 9])
def test_until_step_outside_the_run_is_refused(until_step, capsys):
    arguments = ["--until_step", str(until_step), "--config.training.num_steps=8"]
    assert load_script("train").main([*arguments, "--workdir", "unused"]) == 2
    assert f"until_step must be an integer in [1, training.num_steps=8], got {until_step}" in (
        capsys.readouterr().err
    )


def test_one_override_parser_reads_both_forms_and_names_a_stray_argument(capsys):
    assert parse_overrides(["--config.a.b=1", "--config.c", "x y", "--config.d=e=f"]) == [
        "a.b=1",
        "c=x y",
        "d=e=f",
    ]
    with pytest.raises(ConfigError, match=r"unrecognized argument '--confg.a=1'"):
        parse_overrides(["--confg.a=1"])
    with pytest.raises(ConfigError, match=r"--config.a needs a value"):
        parse_overrides(["--config.a"])
    for script, arguments in [("train", []), ("eval", ["--suite", "tiny"])]:
        with pytest.raises(SystemExit):
            load_script(script).parse_arguments([*arguments, "--config.a"])
        assert "--config.a needs a value" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--suite", "tiny", "--step", "3"], "--step applies only to --generate or test-split"),
        (["--workdir", "w", "--temperature", "0.5"], "--temperature applies only to --generate"),
        (["--workdir", "w", "--models", "lstm"], "--models applies only to --suite"),
        (["--workdir", "w", "--generate", "a", "--batch_size", "8"], "--batch_size applies only"),
        (["--workdir", "w", "--batch_size", "0"], "--batch_size: must be at least 1, got 0"),
        (["--suite", "tiny", "--generate", "a"], "give --suite or --generate, not both"),
    ],
)
def test_eval_options_that_would_be_ignored_are_refused(arguments, message, capsys):
    with pytest.raises(SystemExit):
        load_script("eval").parse_arguments(arguments)
    assert message in capsys.readouterr().err


def test_number_rules_refuse_text_and_non_finite_values():
    config = tiny_config()
    for value in (math.inf, "0.1"):
        with config.optimizer.ignore_type():
            config.optimizer.learning_rate = value
        with pytest.raises(ConfigError, match="learning_rate must be a finite number > 0"):
            check_config(config)


def test_a_workdir_saved_before_model_head_and_bidirectional_resumes():
    from seqjax.training.config import resume_conflicts

    current = tiny_config()
    saved = tiny_config()
    del saved.model["head"], saved.model["bidirectional"]
    assert resume_conflicts(saved, current) == []
    current.model.bidirectional = True
    assert resume_conflicts(saved, current) == ["model.bidirectional: (absent) -> True"]
