"""A mixer defined in a module outside the repository, named by ``--config.imports``, trains
through train.py, evaluates through eval.py (which imports it again from the saved config)
and through a suite; its options are reachable as ``--config.model.mixers.<name>.*``."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from tiny_run import ROOT, TINY, tiny_config

from seqjax.training import ConfigError
from seqjax.training.metrics import read_metrics

USER_MODULE = '''
"""A user's token mixer: a scaled projection of each token (no mixing over time)."""

from flax import nnx

from seqjax.layers import register


@register("scaled_projection")
class ScaledProjection(nnx.Module):
    def __init__(self, d_model: int, *, scale: float = 1.0, rngs: nnx.Rngs):
        self.projection = nnx.Linear(d_model, d_model, rngs=rngs)
        self.scale = scale

    def __call__(self, x, *, state=None, segment_starts=None):
        return self.scale * self.projection(x), ()

    def init_state(self, batch_size: int):
        return ()
'''
MIXER = ["--config.imports=my_mixers", "--config.model.mixer=scaled_projection"]


@pytest.fixture
def user_code(tmp_path):
    """The environment of a process that finds the user's module on PYTHONPATH."""
    (tmp_path / "user_code").mkdir()
    (tmp_path / "user_code" / "my_mixers.py").write_text(USER_MODULE)
    path = os.pathsep.join(
        p for p in [str(tmp_path / "user_code"), os.environ.get("PYTHONPATH")] if p
    )
    return {**os.environ, "PYTHONPATH": path}


def run(script, *arguments, env):
    completed = subprocess.run(
        [sys.executable, script, *arguments], cwd=ROOT, capture_output=True, text=True,
        env=env, timeout=300,
    )  # fmt: skip
    return completed.returncode, completed.stdout, completed.stderr


def test_a_mixer_from_a_users_module_trains_and_evaluates(tmp_path, user_code):
    workdir = tmp_path / "run"
    tiny = [f"--config.{o}" for o in TINY if not o.startswith("model.mixer=")]
    options = [*MIXER, "--config.model.mixers.scaled_projection.scale=0.5"]
    status, stdout, stderr = run(
        "train.py", *tiny, *options, "--workdir", str(workdir), env=user_code
    )
    assert status == 0, stderr
    assert "training scaled_projection on mqar" in stdout and "done: step 8" in stdout
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["imports"] == "my_mixers"
    assert saved["model"]["mixers"]["scaled_projection"] == {"scale": 0.5}

    status, stdout, stderr = run("eval.py", "--workdir", str(workdir), env=user_code)
    assert status == 0, stderr
    report = json.loads((workdir / "eval" / "step_8.json").read_text())
    [trained] = [r for r in read_metrics(workdir) if r["split"] == "eval" and r["step"] == 8]
    assert report["metrics"]["accuracy"] == pytest.approx(trained["accuracy"])

    elsewhere = {k: v for k, v in user_code.items() if k != "PYTHONPATH"}
    status, _, stderr = run("eval.py", "--workdir", str(workdir), env=elsewhere)
    assert status == 2
    assert "config.imports: cannot import 'my_mixers': No module named 'my_mixers'" in stderr


def test_a_users_mixer_runs_in_a_suite(tmp_path, user_code):
    suites_file = tmp_path / "suites.py"
    suites_file.write_text(
        textwrap.dedent(
            f"""
            from seqjax.suites import Suite

            SUITES = {{"mine": Suite(
                name="mine",
                description="A user's mixer on short parity.",
                base_config={str(ROOT / "configs" / "chomsky.py")!r},
                tasks={{"parity_check": dict(
                    name="parity_check", min_train_length=2, max_train_length=6,
                    test_lengths=(6,), num_train_examples=64, num_test_examples=20,
                )}},
                default_models=("lstm",),
            )}}
            """
        )
    )
    arguments = ["--suite", "mine", "--suites_file", str(suites_file), "--workdir", str(tmp_path)]
    arguments += ["--models", "scaled_projection", "--config.imports=my_mixers"]
    arguments += ["--config.model.d_model=16", "--config.model.num_layers=1"]
    arguments += ["--config.training.num_steps=2", "--config.training.batch_size=8"]
    arguments += ["--config.training.eval_batch_size=20", "--config.training.eval_every=0"]
    status, stdout, stderr = run("eval.py", *arguments, env=user_code)
    assert status == 0, stderr
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert [(r["model"], r["step"]) for r in runs] == [("scaled_projection", 2)]


def test_options_of_a_mixer_not_imported_are_unknown_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'model.mixers.scaled_projection"):
        tiny_config("model.mixers.scaled_projection.scale=0.5")
    with pytest.raises(ConfigError, match=r"cannot import 'no_such_module_here'"):
        tiny_config("imports=no_such_module_here")
