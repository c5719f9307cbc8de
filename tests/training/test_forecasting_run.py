"""A forecaster on a user's CSV file through train.py and eval.py: trained, resumed
bit-identically, and scored on the original scale at every forecast step; the autoregressive
strategy's layout and roll-out."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_run import ROOT, assert_same_params, load_script, params_of, train_losses

from seqjax.data import create_task
from seqjax.evaluation import LoadedRun, evaluate_forecasts, load_run
from seqjax.training import load_config
from seqjax.training.objectives import create_task_model


def write_load_csv(path):
    rng = np.random.default_rng(0)
    hours = np.arange(300)
    load = 100 + 10 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, 1, len(hours))
    temperature = 15 + 5 * np.cos(2 * np.pi * hours / 24) + rng.normal(0, 0.5, len(hours))
    columns = zip(hours, load, temperature, strict=True)
    start = np.datetime64("2026-01-01T00:00")
    rows = [f"{start + np.timedelta64(int(h), 'h')},{v:.3f},{t:.3f}" for h, v, t in columns]
    path.write_text("time,load,temperature\n" + "\n".join(rows) + "\n")
    return path


def test_a_csv_forecaster_trains_resumes_exactly_and_is_scored_by_eval(tmp_path, capsys):
    """With calendar covariates: inputs of 2 + 6 channels, forecasts of the 2 values."""
    csv_path = write_load_csv(tmp_path / "load.csv")
    arguments = [
        "--config", str(ROOT / "configs" / "forecasting.py"),
        "--config.task.dataset=csv", f"--config.task.csv_path={csv_path}",
        "--config.task.lookback=24", "--config.task.horizon=6", "--config.task.seasonality=24",
        "--config.task.calendar_features=True",
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


def test_the_autoregressive_roll_out_carries_the_state_as_rereading_would(tmp_path):
    config = load_config(
        str(ROOT / "configs" / "forecasting.py"),
        [
            "task.dataset=csv", f"task.csv_path={write_load_csv(tmp_path / 'load.csv')}",
            "task.lookback=12", "task.horizon=5", "task.strategy=autoregressive",
            "model.d_model=16", "model.num_layers=2", "model.mixer=gru",
        ],
    )  # fmt: skip
    task = create_task(**config.task)
    assert task.output_dim == 2
    batch = next(task.test_batches(4))
    assert batch["targets"].shape == (4, 12, 2) and (batch["weights"] == 1).all()
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])
    first_step = task._splits["test"]["forecasts"][:4, 0]
    np.testing.assert_array_equal(batch["targets"][:, -1], first_step)

    model = create_task_model(config.model, task, rngs=nnx.Rngs(0))
    run = LoadedRun(config=config, task=task, model=model, step=0, workdir=tmp_path)
    rolled = evaluate_forecasts(run, batch_size=8).forecasts

    # the same forecasts by reading the look-back and the forecasts so far again each step
    inputs = jnp.asarray(task._splits["test"]["inputs"])
    for _ in range(5):
        outputs, _ = model(inputs)
        inputs = jnp.concatenate([inputs, outputs[:, -1:]], axis=1)
    reread = task.to_original(np.asarray(inputs[:, 12:]))
    np.testing.assert_allclose(rolled, reread, rtol=1e-5, atol=1e-4 * np.abs(reread).max())
