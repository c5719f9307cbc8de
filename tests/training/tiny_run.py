"""A tiny MQAR run (a one-layer GRU of width 16, 8 steps, checkpoints at 4 and 8) and the
helpers the training tests share to start, inspect and compare such runs."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from seqjax.evaluation import load_run
from seqjax.training import load_config
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.metrics import METRICS_FILE, read_metrics

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "model.mixer=gru",
    "model.d_model=16",
    "model.num_layers=1",
    "model.mlp_expansion=1",
    "task.vocab_size=32",
    "task.seq_len=16",
    "task.num_kv_pairs=2",
    "task.num_train_examples=256",
    "task.num_test_examples=40",
    "training.batch_size=8",
    "training.num_steps=8",
    "training.log_every=1",
    "training.eval_every=4",
    "training.checkpoint_every=4",
    "training.eval_batch_size=16",
    "optimizer.warmup_steps=2",
]


def tiny_config(*overrides):
    return load_config(str(ROOT / "configs" / "mqar.py"), [*TINY, *overrides])


def train_cli(workdir, *arguments, timeout=300, **options):
    """train.py on the tiny run, as a subprocess: (exit status, stdout, stderr)."""
    command = [sys.executable, "train.py", *(f"--config.{o}" for o in TINY), *arguments]
    completed = subprocess.run(
        [*command, "--workdir", str(workdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, **options,
    )  # fmt: skip
    return completed.returncode, completed.stdout, completed.stderr


def load_script(name):
    """train.py or eval.py as a module, to call its main() in this process."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def params_of(workdir, step=None):
    return nnx.state(load_run(workdir, step=step).model)


def checkpoint_steps(workdir):
    checkpoints = Checkpoints(Path(workdir) / "checkpoints", read_only=True)
    steps = checkpoints.all_steps()
    checkpoints.close()
    return steps


def train_losses(workdir):
    return [(r["step"], r["loss"]) for r in read_metrics(workdir) if r["split"] == "train"]


def strict_json_lines(workdir) -> list[dict]:
    """Every line of the metrics file, parsed as strict JSON (a bare NaN is an error)."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    text = (Path(workdir) / METRICS_FILE).read_text()
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
