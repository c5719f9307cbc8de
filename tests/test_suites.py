"""Evaluation suites: a tiny suite end to end through eval.py (table, JSON, plots, resume),
the suites of configs/suites.py, model names, and a real-valued task through the loop."""

import importlib.util
import json
import re
import textwrap
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from seqjax import suites as suites_module
from seqjax.data import available_tasks, create_task
from seqjax.evaluation import evaluate_forecasts, load_run
from seqjax.suites import Suite, load_suites, model_overrides, run_config
from seqjax.training import load_config, train

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAINING = [
    "model.d_model=16",
    "model.num_layers=1",
    "model.mlp_expansion=1",
    "training.batch_size=8",
    "training.num_steps=4",
    "training.log_every=2",
    "training.eval_every=0",
    "training.checkpoint_every=0",
    "training.eval_batch_size=20",
]


def load_eval_script():
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_tiny_suites_file(path: Path) -> Path:
    path.write_text(
        textwrap.dedent(
            f"""
            from seqjax.suites import Suite

            SUITES = {{
                "tiny": Suite(
                    name="tiny",
                    description="Parity on short strings.",
                    base_config={str(ROOT / "configs" / "chomsky.py")!r},
                    tasks={{
                        "parity_check": dict(
                            name="parity_check",
                            min_train_length=2,
                            max_train_length=6,
                            test_lengths=(6, 12),
                            num_train_examples=64,
                            num_test_examples=20,
                        )
                    }},
                    default_models=("lstm",),
                )
            }}
            """
        )
    )
    return path


def test_tiny_suite_writes_table_json_and_plots_then_resumes(tmp_path, capsys):
    suites_file = write_tiny_suites_file(tmp_path / "suites.py")
    workdir = tmp_path / "suite"
    eval_script = load_eval_script()
    arguments = ["--suite", "tiny", "--suites_file", str(suites_file), "--workdir", str(workdir)]
    arguments += ["--models", "lstm,attention", "--tasks", "parity_check"]
    arguments += [f"--config.{o}" for o in TINY_TRAINING]
    assert eval_script.main(arguments) == 0

    report = json.loads((workdir / "results.json").read_text())
    assert report["suite"] == "tiny"
    runs = report["runs"]
    assert [(run["task"], run["model"]) for run in runs] == [
        ("parity_check", "lstm"),
        ("parity_check", "attention"),
    ]
    for run in runs:
        assert run["step"] == 4 and run["max_train_length"] == 6
        assert list(run["by_length"]) == ["6", "12"]
        for metrics in [run["test"], *run["by_length"].values()]:
            assert 0 <= metrics["accuracy"] <= 1 and metrics["num_scored_tokens"] == 20
        assert [step for step, _ in run["train_loss"]] == [2, 4]
        assert (workdir / run["workdir"] / "checkpoints").is_dir()

    table = (workdir / "results.md").read_text()
    assert "| model | steps | test accuracy | L=6 | L=12 |" in table
    for run in runs:
        accuracy = run["by_length"]["12"]["accuracy"]
        assert f"| {run['model']} | 4 | {run['test']['accuracy']:.4f} |" in table
        assert f"{accuracy:.4f} |" in table
    assert table in capsys.readouterr().out
    for plot in ["parity_check_accuracy_by_length.png", "parity_check_loss.png"]:
        image = matplotlib.image.imread(workdir / "plots" / plot)
        assert image.shape[0] > 100 and image.shape[1] > 100
    assert not list(workdir.rglob(".*.tmp")) and not list(workdir.rglob(".*.png"))

    metrics_file = workdir / "parity_check" / "lstm" / "metrics.jsonl"
    before = metrics_file.read_text()
    assert eval_script.main(arguments) == 0  # finished runs are not trained again
    assert metrics_file.read_text() == before
    assert json.loads((workdir / "results.json").read_text()) == report

    fewer = [argument if argument != "lstm,attention" else "lstm" for argument in arguments]
    assert eval_script.main(fewer) == 0  # the attention row, not run again, is kept
    assert json.loads((workdir / "results.json").read_text()) == report
    assert (workdir / "results.md").read_text() == table


def test_eval_rejects_unknown_suites_models_and_keys(tmp_path, capsys):
    suites_file = write_tiny_suites_file(tmp_path / "suites.py")
    eval_script = load_eval_script()
    base = ["--suites_file", str(suites_file), "--workdir", str(tmp_path / "w")]
    assert eval_script.main(["--suite", "huge", *base]) == 2
    assert "unknown suite 'huge'; suites: tiny" in capsys.readouterr().err
    assert eval_script.main(["--suite", "tiny", "--models", "lstm,transformer", *base]) == 2
    assert "unknown model 'transformer'" in capsys.readouterr().err
    assert eval_script.main(["--suite", "tiny", "--config.training.num_stepz=3", *base]) == 2
    assert "did you mean 'training.num_steps'" in capsys.readouterr().err
    assert eval_script.main(["--suite", "tiny", "--tasks", "parity_check,even_pairs", *base]) == 2
    assert "suite 'tiny' has no task 'even_pairs'; its tasks: parity_check" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "w").exists()


def test_tasks_option_trains_only_the_named_tasks(tmp_path, monkeypatch):
    suite = Suite(
        name="two",
        description="Two Chomsky tasks.",
        base_config=str(ROOT / "configs" / "chomsky.py"),
        tasks={name: dict(name=name) for name in ("parity_check", "even_pairs")},
        default_models=("lstm",),
    )
    trained = []

    def fake_train(config, run_dir, interactive):
        trained.append(config.task.name)
        raise RuntimeError("stop after recording the task")

    monkeypatch.setattr(suites_module, "train", fake_train)
    with pytest.raises(RuntimeError, match="stop after recording"):
        suites_module.run_suite(suite, tmp_path, tasks=["even_pairs"], log=lambda _: None)
    assert trained == ["even_pairs"]


def test_model_names_select_mixers_and_negative_eigenvalues():
    suite = Suite(
        name="s",
        description="",
        base_config="configs/chomsky.py",
        tasks={},
        default_models=(),
        models={"gru": {"optimizer.learning_rate": 0.01}},
    )
    assert model_overrides(suite, "mamba_neg") == {
        "model.mixer": "mamba",
        "model.mixers.mamba.negative_eigenvalues": True,
    }
    assert model_overrides(suite, "gru") == {"model.mixer": "gru", "optimizer.learning_rate": 0.01}
    with pytest.raises(ValueError, match="mixer 'lstm' has no negative_eigenvalues"):
        model_overrides(suite, "lstm_neg")


def test_forecasting_suite_scores_models_and_peers_on_the_same_windows(tmp_path, capsys):
    rng = np.random.default_rng(0)
    values = 20 + np.tile([0.0, 3.0, -2.0, 1.0], 40) + rng.normal(0, 0.3, 160)
    csv_path = tmp_path / "load.csv"
    csv_path.write_text("time,load\n" + "".join(f"{t},{v}\n" for t, v in enumerate(values)))
    (tmp_path / "suites.py").write_text(
        textwrap.dedent(
            f"""
            from seqjax.suites import Suite

            SUITES = {{
                "tiny_forecasting": Suite(
                    name="tiny_forecasting",
                    description="A seasonal series.",
                    base_config={str(ROOT / "configs" / "forecasting.py")!r},
                    tasks={{
                        "load": dict(
                            name="forecasting", dataset="csv", csv_path={str(csv_path)!r},
                            lookback=12, horizon=4, seasonality=4,
                        )
                    }},
                    default_models=("lstm",),
                    metric="smape",
                    report_metrics=("smape", "mase", "mse", "mae"),
                    peers=("SeasonalNaive", "AutoTheta"),
                )
            }}
            """
        )
    )
    workdir = tmp_path / "suite"
    arguments = ["--suite", "tiny_forecasting", "--suites_file", str(tmp_path / "suites.py")]
    arguments += ["--workdir", str(workdir), *(f"--config.{o}" for o in TINY_TRAINING)]
    eval_script = load_eval_script()
    assert eval_script.main(arguments) == 0

    runs = json.loads((workdir / "results.json").read_text())["runs"]
    assert [(run["model"], run["peer"]) for run in runs] == [
        ("SeasonalNaive", True), ("AutoTheta", True), ("lstm", False),
    ]  # fmt: skip
    task = create_task(**run_config(load_suites(tmp_path / "suites.py")["tiny_forecasting"],
                                    "load", "lstm", "", root=ROOT).task)  # fmt: skip
    naive = np.stack([history[-4:] for history in task.peer_histories()])  # one season back
    expected = task.score(naive)
    assert runs[0]["test"] == pytest.approx(expected.overall)
    for name, values in expected.by_horizon.items():
        np.testing.assert_allclose(runs[0]["by_horizon"][name], values)
    lstm = runs[2]
    evaluation = evaluate_forecasts(load_run(workdir / lstm["workdir"]), batch_size=20)
    assert lstm["test"]["smape"] == pytest.approx(evaluation.scores.overall["smape"])
    np.testing.assert_allclose(lstm["by_horizon"]["mse"], evaluation.scores.by_horizon["mse"])
    for run in runs:
        assert len(run["by_horizon"]["mase"]) == 4 and len(run["examples"]) == 3
        for example in run["examples"]:
            window = example["window"]
            np.testing.assert_allclose(example["actual"], task.actual()[window, :, 0])
            np.testing.assert_allclose(example["history"], task.history()[window, -8:, 0])
    np.testing.assert_allclose(
        runs[0]["examples"][1]["forecast"], naive[runs[0]["examples"][1]["window"], :, 0]
    )

    table = (workdir / "results.md").read_text()
    assert "| model | steps | test smape | test mase | test mse | test mae |" in table
    assert f"| SeasonalNaive | - | {runs[0]['test']['smape']:.4f} |" in table
    assert f"| lstm | 4 | {lstm['test']['smape']:.4f} | {lstm['test']['mase']:.4f} |" in table
    assert table in capsys.readouterr().out
    for plot in ["load_smape_by_horizon.png", "load_forecasts.png", "load_loss.png"]:
        image = matplotlib.image.imread(workdir / "plots" / plot)
        assert image.shape[0] > 100 and image.shape[1] > 100

    peer_cache = workdir / "load" / "AutoTheta" / "suite_eval.json"
    fitted = peer_cache.read_text()
    peer_cache.write_text(fitted.replace('"test": {', '"test": {"cached": 1.0, ', 1))
    assert eval_script.main(arguments) == 0  # the peers' cache is read, not refitted
    assert json.loads((workdir / "results.json").read_text())["runs"][1]["test"]["cached"] == 1
    options = {"name": "forecasting", **task.options(), "horizon": 3}
    refitted = suites_module.score_peer("AutoTheta", "load", options, workdir=workdir)
    assert "cached" not in refitted.test and len(refitted.by_horizon["smape"]) == 3
    capsys.readouterr()
    assert eval_script.main([*arguments, "--config.task.horizon=2"]) == 2  # before any fit
    assert "trained with a different config" in capsys.readouterr().err
    assert json.loads(peer_cache.read_text())["task"]["horizon"] == 3


def test_every_configured_suite_builds_its_run_configs():
    suites = load_suites(ROOT / "configs" / "suites.py")
    assert {"chomsky_regular", "state_tracking", "mqar_width", "mnist1d", "parity"} <= set(suites)
    for suite in suites.values():
        for task, task_options in suite.tasks.items():
            for model in suite.default_models:
                for variant in suite.variants:
                    config = run_config(suite, task, model, variant, root=ROOT)
                    assert config.task.name == task_options["name"]
    mqar = suites["mqar_width"]
    assert len(set(mqar.default_models) - {"attention"}) >= 5
    config = run_config(mqar, "mqar_T128", "gla", "d128", root=ROOT)
    assert (config.model.mixer, config.model.d_model, config.task.seq_len) == ("gla", 128, 128)
    parity = suites["parity"]
    config = run_config(parity, "parity", "deltanet_neg", "", root=ROOT)
    assert config.model.mixers.deltanet.negative_eigenvalues is True


def test_real_valued_task_trains_through_the_loop(tmp_path):
    config = load_config(
        str(ROOT / "configs" / "mnist1d.py"),
        ["task.num_samples=100", *TINY_TRAINING, "training.eval_batch_size=10"],
    )
    result = train(config, tmp_path / "mnist1d", interactive=False)
    assert result.step == 4
    assert 0 <= result.eval_metrics["accuracy"] <= 1
    assert result.eval_metrics["num_scored_tokens"] == 20  # one answer per test signal


def test_readme_tasks_table_lists_exactly_the_registered_tasks():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- tasks table")[1].split("\n\n")[0]
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.MULTILINE)
    assert names == available_tasks()
    suites = re.search(r"^Suites: (.*?)\. Tasks:", readme, flags=re.MULTILINE | re.DOTALL)
    listed = re.findall(r"`([a-z0-9_]+)`", suites.group(1))
    assert listed == list(load_suites(ROOT / "configs" / "suites.py"))
