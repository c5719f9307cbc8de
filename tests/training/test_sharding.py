"""Sharded training on 8 simulated CPU devices equals training on one device.

20 steps of a tiny Mamba + GLA language model on the meshes (data=8), (fsdp=8),
(data=2, fsdp=2, tensor=2) and (data=2, sequence=4) give the losses and parameters of one
device; sharded weights really are split (each device holds 1/n of them) from creation on;
on the sequence mesh every op over time of the step runs sequence-parallel, and evaluation
(batches whole on every device) gives the one device's metrics; a model with a mixer that
cannot run sequence-parallel refuses to train there, naming it; a checkpoint saved on
(fsdp=8) restores on one device and continues with the same losses; gradient accumulation
with rematerialization changes nothing; bfloat16 compute keeps float32 parameters and state.
"""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sequence_split import recording_splits
from tolerances import SHARDED_FLOAT32

from seqjax.data import create_task
from seqjax.training import ConfigError, load_config, train
from seqjax.training.checkpoint import Checkpoints
from seqjax.training.evaluate import evaluate
from seqjax.training.sharding import create_mesh
from seqjax.training.step import TrainState, train_step
from seqjax.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
STEPS = 20
TINY = [
    "model.mixer=mamba,gla",
    "model.d_model=32",
    "model.num_layers=2",
    "model.mlp_expansion=2",
    "model.mixers.gla.num_heads=2",
    "model.mixers.gla.chunk_size=4",
    "task.vocab_size=32",
    "task.seq_len=16",
    "task.num_kv_pairs=2",
    "task.num_train_examples=256",
    "task.num_test_examples=16",
    "training.batch_size=16",
    f"training.num_steps={STEPS}",
    "training.log_every=1",
    "training.eval_every=0",
    "training.checkpoint_every=0",
    "training.eval_batch_size=16",
    "optimizer.warmup_steps=2",
]
# The MLP's first kernel [D, 2 * 2D] = [32, 128] has logical axes (embed, mlp) -> (fsdp, tensor).
MESHES = {
    "data=8": (dict(data=8), (32, 128)),
    "fsdp=8": (dict(data=1, fsdp=8), (4, 128)),
    "data=2,fsdp=2,tensor=2": (dict(data=2, fsdp=2, tensor=2), (16, 64)),
    "data=2,sequence=4": (dict(data=2, sequence=4), (32, 128)),
}


def tiny_config(*overrides):
    return load_config(str(ROOT / "configs" / "mqar.py"), [*TINY, *overrides])


def mesh_overrides(axes):
    return [f"mesh.{axis}={size}" for axis, size in axes.items()]


@dataclasses.dataclass
class Run:
    trainer: Trainer
    losses: np.ndarray  # of every step
    params: dict  # the final parameters, on the host
    kernel_placement: tuple[int, set]  # of the MLP kernel as created: devices, shard shapes
    checkpoint: Path | None  # the state after STEPS // 2 steps, if asked
    eval_metrics: dict | None  # of the final state, if asked


def run(config, mesh, checkpoint_to=None, evaluates=False):
    task = create_task(**config.task)
    trainer = Trainer(config, task, mesh)
    state = trainer.initial_state()
    kernel = state.params["backbone"]["blocks"][0]["mlp"]["gate_and_up"]["kernel"].get_value()
    placement = (len(kernel.sharding.device_set), {s.data.shape for s in kernel.addressable_shards})
    losses = []
    for step in range(STEPS):
        if checkpoint_to and step == STEPS // 2:
            checkpoints = Checkpoints(checkpoint_to)
            checkpoints.save(step, state.params, state.opt_state)
            checkpoints.close()
        state, metrics = trainer.step(state, trainer.batch(step))
        losses.append(float(metrics["loss"]))
    params = jax.device_get(state.params)
    eval_metrics = None
    if evaluates:
        batch_size = config.training.eval_batch_size
        eval_metrics = evaluate(
            trainer.graphdef,
            state.params,
            task,
            batch_size=batch_size,
            objective=trainer.objective,
            mesh=mesh,
        )
    return Run(trainer, np.array(losses), params, placement, checkpoint_to, eval_metrics)


def assert_same_params(actual, expected):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, **SHARDED_FLOAT32), actual, expected)


@pytest.fixture(scope="module")
def one_device():
    config = tiny_config("mesh.data=1")
    return run(config, create_mesh(config.mesh, jax.devices()[:1]), evaluates=True)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    axes, _ = MESHES["fsdp=8"]
    config = tiny_config(*mesh_overrides(axes))
    return run(config, create_mesh(config.mesh), tmp_path_factory.mktemp("checkpoints"))


@pytest.mark.parametrize("name", MESHES)
def test_training_on_a_mesh_equals_one_device(one_device, fsdp_run, name):
    axes, kernel_shard_shape = MESHES[name]
    split_sequence = axes.get("sequence", 1) > 1
    if name == "fsdp=8":
        sharded = fsdp_run
    else:
        config = tiny_config(*mesh_overrides(axes))
        sharded = run(config, create_mesh(config.mesh), evaluates=split_sequence)
    np.testing.assert_allclose(sharded.losses, one_device.losses, **SHARDED_FLOAT32)
    assert_same_params(sharded.params, one_device.params)
    # Created split: every device holds its own 1/n block of the kernel, none the whole.
    assert sharded.kernel_placement == (8, {kernel_shard_shape})
    if split_sequence:
        trainer = sharded.trainer
        batch = trainer.batch(0)
        assert batch["inputs"].addressable_shards[0].data.shape == (8, 4)
        step = functools.partial(
            train_step,
            trainer.train_graphdef,
            trainer.optimizer,
            trainer.schedule,
            objective=trainer.objective,
        )
        with jax.set_mesh(trainer.mesh), trainer.sharding_context(), recording_splits() as calls:
            jaxpr = str(jax.make_jaxpr(step)(trainer.abstract_state, batch))
        # Every op over time, Mamba's conv and scan and GLA's, runs split: one shard_map
        # forward and one backward each.
        ops = sorted(op for op, _ in calls)
        assert ops == ["causal_conv1d", "gated_linear_attention", "selective_scan"]
        assert all(ran_split for _, ran_split in calls)
        assert jaxpr.count("shard_map") == 2 * len(calls)
        for metric, value in sharded.eval_metrics.items():
            np.testing.assert_allclose(value, one_device.eval_metrics[metric], **SHARDED_FLOAT32)


def test_a_checkpoint_saved_on_fsdp8_continues_on_one_device(one_device, fsdp_run):
    trainer = one_device.trainer  # on one device
    like = trainer.abstract_state
    checkpoints = Checkpoints(fsdp_run.checkpoint, read_only=True)
    params, opt_state = checkpoints.restore(STEPS // 2, like.params, like.opt_state)
    checkpoints.close()
    assert params["head"]["kernel"].get_value().sharding == like.params["head"]["kernel"].sharding
    state = TrainState(jnp.asarray(STEPS // 2, jnp.int32), params, opt_state)
    losses = []
    for step in range(STEPS // 2, STEPS):
        state, metrics = trainer.step(state, trainer.batch(step))
        losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses, one_device.losses[STEPS // 2 :], **SHARDED_FLOAT32)
    assert_same_params(jax.device_get(state.params), one_device.params)


def test_accumulated_rematerialized_steps_equal_whole_ones(one_device):
    config = tiny_config(
        "mesh.data=1", "mesh.fsdp=8", "training.grad_accumulation_steps=2", "training.remat=full"
    )
    accumulated = run(config, create_mesh(config.mesh))
    np.testing.assert_allclose(accumulated.losses, one_device.losses, **SHARDED_FLOAT32)
    assert_same_params(accumulated.params, one_device.params)


def test_bfloat16_compute_keeps_float32_parameters_and_optimizer_state(one_device):
    trainer = one_device.trainer
    step = functools.partial(
        train_step, trainer.graphdef, trainer.optimizer, trainer.schedule,
        objective=trainer.objective, compute_dtype=jnp.bfloat16,
    )  # fmt: skip
    batch = trainer.batch(0)
    assert "bf16[16,16,128]" in str(jax.make_jaxpr(step)(trainer.abstract_state, batch))
    state, metrics = jax.eval_shape(step, trainer.abstract_state, batch)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))}
    assert dtypes == {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}  # int32: Adam's count
    assert metrics["loss"].dtype == jnp.float32


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["mesh.data=3"], r"has 3 devices, but there are 8"),
        (["mesh.data=-1", "mesh.fsdp=-1"], r"at most one -1"),
        (["mesh.data=8", "training.batch_size=12"], r"batch_size \(12\) must be a multiple"),
        (["mesh.data=1", "mesh.sequence=8", "task.seq_len=12"], r"sequence length \(12\)"),
        (
            ["model.mixer=gla,gru", "mesh.data=2", "mesh.sequence=4"],
            r"mixer 'gru' cannot run sequence-parallel",
        ),
        (["mesh.rules=(('embed', 'model'),)"], r"unknown mesh axis 'model'"),
        (["training.compute_dtype=float16"], r"compute_dtype must be one of"),
    ],
)
def test_bad_mesh_settings_are_named(tmp_path, overrides, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        train(tiny_config(*overrides), tmp_path, interactive=False)
