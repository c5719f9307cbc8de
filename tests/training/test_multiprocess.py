"""Two processes joined by jax.distributed on 127.0.0.1 (CPU collectives), two devices each,
train on a (data=2, fsdp=2) mesh the same run as one process on one device with the same
global batch: the same losses, one metrics file written by process 0, and checkpoints written
by both that restore in a single process. A signal to one process stops both at one step."""

import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import tiny_run
from flax import nnx
from tiny_run import ROOT
from tolerances import SHARDED_FLOAT32

from seqjax.evaluation import load_run
from seqjax.training import load_config, train
from seqjax.training.metrics import read_metrics
from seqjax.training.sharding import create_mesh

# The tiny run with a GLA model on a batch that splits over the 4 devices of the mesh.
TINY = [
    *tiny_run.TINY,
    "model.mixer=gla",
    "model.d_model=32",
    "model.mlp_expansion=2",
    "model.mixers.gla.num_heads=2",
    "model.mixers.gla.implementation=reference",
    "task.num_test_examples=16",
    "training.batch_size=16",
    "training.num_steps=6",
    "training.eval_every=0",
    "training.checkpoint_every=3",
]


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def train_losses(workdir):
    return [record["loss"] for record in read_metrics(workdir) if record["split"] == "train"]


def start_two_processes(workdir, *overrides):
    """train.py on the tiny run in two processes of two devices each, on a (2, 2) mesh."""
    command = [sys.executable, "train.py", *(f"--config.{o}" for o in [*TINY, *overrides])]
    command += ["--config.mesh.data=2", "--config.mesh.fsdp=2", "--workdir", str(workdir)]
    environment = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
        "JAX_NUM_PROCESSES": "2",
    }
    return [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env={**environment, "JAX_PROCESS_ID": str(index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for index in range(2)
    ]


def test_two_processes_train_the_same_run_as_one(tmp_path):
    workdir = tmp_path / "two_processes"
    processes = start_two_processes(workdir)
    config = load_config(str(ROOT / "configs" / "mqar.py"), [*TINY, "mesh.data=1"])
    single = tmp_path / "one_process"
    train(config, single, interactive=False, mesh=create_mesh(config.mesh, jax.devices()[:1]))
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert "done: step 6" in outputs[0] and "done: step" not in outputs[1]

    np.testing.assert_allclose(train_losses(workdir), train_losses(single), **SHARDED_FLOAT32)
    assert len(train_losses(workdir)) == 6  # one line per step: only process 0 wrote
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [3, 6]
    restored = jax.tree.leaves(nnx.state(load_run(workdir).model))
    expected = jax.tree.leaves(nnx.state(load_run(single).model))
    assert len(restored) == 17
    for actual, wanted in zip(restored, expected, strict=True):
        np.testing.assert_allclose(np.asarray(actual), np.asarray(wanted), **SHARDED_FLOAT32)


def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path):
    workdir = tmp_path / "run"
    first, second = start_two_processes(
        workdir, "training.num_steps=100000", "training.checkpoint_every=0"
    )
    for line in first.stdout:  # only process 0 prints progress
        if line.startswith("step 3/"):
            second.send_signal(signal.SIGTERM)
            break
    outputs = [first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]]
    assert [first.returncode, second.returncode] == [128 + signal.SIGTERM] * 2, outputs
    [stopped] = [int(p.name) for p in (workdir / "checkpoints").iterdir()]
    assert f"stopped by SIGTERM at step {stopped}" in outputs[0]
    assert max(record["step"] for record in read_metrics(workdir)) == stopped
    assert len(jax.tree.leaves(nnx.state(load_run(workdir).model))) == 17
