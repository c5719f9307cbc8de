"""A forecaster on a user's CSV file through train.py and eval.py: trained, resumed
bit-identically, and scored on the original scale at every forecast step."""

import json

import numpy as np
import pytest
from tiny_run import ROOT, assert_same_params, load_script, params_of, train_losses

from seqjax.evaluation import evaluate_forecasts, load_run


def write_load_csv(path):
    rng = np.random.default_rng(0)
    hours = np.arange(300)
    load = 100 + 10 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 1, len(hours))
    temperature = 15 + 5 * np.cos(2 * np.pi * hours / 24) + rng.normal(0, 0.5, len(hours))
    columns = zip(hours, load, temperature, strict=True)
    rows = [f"2026-01-01T{h:05d},{v:.3f},{t:.3f}" for h, v, t in columns]
    path.write_text("time,load,temperature\n" + "\n".join(rows) + "\n")
    return path


def test_a_csv_forecaster_trains_resumes_exactly_and_is_scored_by_eval(tmp_path, capsys):
    csv_path = write_load_csv(tmp_path / "load.csv")
    arguments = [
        "--config", str(ROOT / "configs" / "forecasting.py"),
        "--config.task.dataset=csv", f"--config.task.csv_path={csv_path}",
        "--config.task.lookback=24", "--config.task.horizon=6", "--config.task.seasonality=24",
        "--config.model.d_model=16", "--config.model.num_layers=1",
        "--config.training.batch_size=8", "--config.training.num_steps=6",
        "--config.training.checkpoint_every=3", "--config.training.eval_every=3",
        "--config.training.log_every=1",
    ]  # fmt: skip
    train_script = load_script("train")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_script.main([*arguments, "--workdir", str(straight)]) == 0
    partial = [*arguments, "--until_step=3", "--workdir", str(resumed)]
    assert train_script.main(partial) == 0
    assert train_script.main([*arguments, "--workdir", str(resumed)]) == 0
    assert_same_params(params_of(straight), params_of(resumed))
    assert train_losses(straight) == train_losses(resumed)

    capsys.readouterr()
    assert load_script("eval").main(["--workdir", str(resumed)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((resumed / "eval" / "step_6.json").read_text())
    evaluation = evaluate_forecasts(load_run(resumed), batch_size=64)  # eval.py reads 250
    assert evaluation.forecasts.shape == (report["metrics"]["num_scored_tokens"], 6, 2)
    for name, values in evaluation.scores.by_horizon.items():
        # float32 forwards of other batch sizes agree to rounding
        np.testing.assert_allclose(report["by_horizon"][name], values, rtol=1e-6)
        assert report["metrics"][name] == pytest.approx(evaluation.scores.overall[name], rel=1e-6)
    assert "| forecast step | smape | mase | mse | mae |" in printed
    assert f"| 6 | {report['by_horizon']['smape'][5]:.6g} |" in printed
