"""A run on a mesh: the train state created sharded, this process's batches, the jitted step.

    trainer = Trainer(config, task, mesh)
    state = trainer.initial_state()           # each device creates only its shards
    state, metrics = trainer.step(state, trainer.batch(step), trainer.stop_signal(signum))

The state is created by a jitted function whose outputs carry the shardings of the
parameters' logical axes, so no parameter is ever whole on one device; with
``model.init_from`` the parameters are the checkpoint's instead (seqjax.interop's
from_pretrained reads each tensor and places it on its shards) and the optimizer state is
created around them. The step is jitted with the state's shardings in and out (the state
donated) and the batch split over the batch and sequence axes; inside it, activations follow
the same rules. When the sequence axis is
split, the step's model is built with ``sequence_split`` (every mixer's ops over time run
sequence-parallel over that axis, and a mixer that cannot run so stops the run before it
starts); ``graphdef``, the model evaluation reads (its batches whole on every device), has
no split.

Every process passes its stop signal (0 when none arrived) into the step, and the step's
metrics hold, replicated on every device, its ``report``: the largest signal of any process,
and the state's first non-finite step and skipped-update count. Reading the report of a step
that has already finished tells every process the same thing at the same step, without a
blocking all-gather.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seqjax.data import Task
from seqjax.layers.partitioning import BATCH, SEQUENCE, Rules, axis_rules
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.training import config as config_lib
from seqjax.training import sharding
from seqjax.training.objectives import create_objective, create_task_model
from seqjax.training.optimizer import create_optimizer, learning_rate_schedule
from seqjax.training.step import TrainState, train_step
from seqjax.typing import PyTree

COMPUTE_DTYPES = {name: jnp.dtype(name) for name in config_lib.COMPUTE_DTYPES}
REPORT = "report"  # the metric that holds a step's report, int32 [3]:
REPORT_STOP_SIGNAL, REPORT_FIRST_NONFINITE_STEP, REPORT_SKIPPED_UPDATES = range(3)


class Trainer:
    """Everything a run needs on ``mesh``; see the module docstring."""

    def __init__(self, config: ml_collections.ConfigDict, task: Task, mesh: Mesh):
        training = config.training
        self.mesh, self.task = mesh, task
        self.rules = sharding.rules_of(config.mesh)
        self.batch_size = training.batch_size
        self.accumulation_steps = training.grad_accumulation_steps
        self.compute_dtype = COMPUTE_DTYPES[training.compute_dtype]
        self.schedule = learning_rate_schedule(config.optimizer, training.num_steps)
        self.optimizer = create_optimizer(config.optimizer, training.num_steps)

        self.objective = create_objective(config.model, task)

        def create_model_now(sequence_split=None):
            return create_task_model(
                config.model,
                task,
                rngs=nnx.Rngs(config.seed),
                remat=training.remat,
                sequence_split=sequence_split,
            )

        def state_of(params):
            return TrainState(
                step=jnp.zeros((), jnp.int32),
                params=params,
                opt_state=self.optimizer.init(params),
                skipped_updates=jnp.zeros((), jnp.int32),
                first_nonfinite_step=jnp.full((), -1, jnp.int32),
            )

        def create_state():
            return state_of(nnx.split(create_model_now())[1])

        self.graphdef = nnx.graphdef(nnx.eval_shape(create_model_now))
        # The step's model: the same parameters, the mixers' ops split over the sequence axis.
        self.sequence_split = _sequence_split(mesh, self.rules)
        self.train_graphdef = (
            self.graphdef
            if self.sequence_split is None
            else nnx.graphdef(
                nnx.eval_shape(functools.partial(create_model_now, self.sequence_split))
            )
        )
        shapes = jax.eval_shape(create_state)
        self.state_shardings = sharding.tree_shardings(shapes, mesh, self.rules)
        self.abstract_state = jax.tree.map(
            lambda shape, where: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=where),
            shapes,
            self.state_shardings,
        )
        self._create_state = jax.jit(create_state, out_shardings=self.state_shardings)
        self.init_from = config.model.get("init_from")
        self._state_of = jax.jit(
            state_of,
            in_shardings=(self.state_shardings.params,),
            out_shardings=self.state_shardings,
            donate_argnums=0,
        )
        self._replicated = NamedSharding(mesh, PartitionSpec())
        # One entry per device, so each process sets only its own.
        self._per_device = NamedSharding(mesh, PartitionSpec(*mesh.axis_names))
        self._signals = {}
        self._steps = {}

    def initial_state(self) -> TrainState:
        """The state at step 0: new parameters, or those of ``model.init_from``."""
        # The checkpoint's model is built abstractly outside the mesh context, where the
        # variables' logical axis names are not taken for mesh axes.
        params = None if self.init_from is None else self.pretrained_params()
        with jax.set_mesh(self.mesh):
            return self._create_state() if params is None else self._state_of(params)

    def pretrained_params(self) -> PyTree:
        """The parameters of the checkpoint in ``model.init_from`` (whose model the config's
        model section is: config.check_pretrained), placed as the state's, in its dtypes."""
        from seqjax.interop import from_pretrained

        model = from_pretrained(self.init_from, mesh=self.mesh, rules=self.rules)
        if model.vocab_size != self.task.vocab_size:
            raise ValueError(
                f"the checkpoint in {self.init_from} has a vocabulary of {model.vocab_size} "
                f"tokens, the task {self.task.name!r} one of {self.task.vocab_size}"
            )
        like = self.abstract_state.params
        params = jax.tree.map(lambda p, shape: p.astype(shape.dtype), nnx.state(model), like)
        return jax.device_put(params, self.state_shardings.params)

    def batch(self, step: int) -> dict[str, jax.Array]:
        """The global batch of ``step``, of which this process loads only its own rows."""
        shape = (self.batch_size, self.task.seq_len)
        where = sharding.batch_sharding(self.mesh, self.rules, shape)
        shard_index, num_shards = sharding.process_rows(where, shape)
        rows = self.task.train_batch(
            step, self.batch_size, shard_index=shard_index, num_shards=num_shards
        )
        return sharding.global_batch(rows, self.mesh, self.rules, self.batch_size)

    def restored_state(
        self, step: int, params: PyTree, opt_state: PyTree, *, skipped_updates: int
    ) -> TrainState:
        """The state of a run restored from its checkpoint at ``step``."""
        step, skipped, none = jax.device_put(
            (np.int32(step), np.int32(skipped_updates), np.int32(-1)), self._replicated
        )
        return TrainState(
            step=step,
            params=params,
            opt_state=opt_state,
            skipped_updates=skipped,
            first_nonfinite_step=none,
        )

    def stop_signal(self, signal_number: int) -> jax.Array:
        """This process's stop signal (0: none) as the step's per-device input."""
        if signal_number not in self._signals:
            shape = self.mesh.devices.shape
            self._signals[signal_number] = jax.make_array_from_callback(
                shape,
                self._per_device,
                lambda _: np.full((1,) * len(shape), signal_number, np.int32),
            )
        return self._signals[signal_number]

    def step(
        self,
        state: TrainState,
        batch: dict[str, jax.Array],
        stop_signal: jax.Array | None = None,
    ) -> tuple[TrainState, PyTree]:
        """One optimizer step; ``state`` is donated (its buffers are reused). Returns the new
        state and the step's metrics, with its report (see the module docstring)."""
        stop_signal = self.stop_signal(0) if stop_signal is None else stop_signal
        key = tuple(sorted(batch))
        if key not in self._steps:
            self._steps[key] = jax.jit(
                self._traced_step,
                in_shardings=(
                    self.state_shardings,
                    {k: v.sharding for k, v in batch.items()},
                    self._per_device,
                ),
                out_shardings=(self.state_shardings, self._replicated),
                donate_argnums=0,
            )
        with jax.set_mesh(self.mesh):
            return self._steps[key](state, batch, stop_signal)

    def _traced_step(self, state, batch, stop_signal):
        with self.sharding_context():
            state, metrics = train_step(
                self.train_graphdef,
                self.optimizer,
                self.schedule,
                state,
                batch,
                objective=self.objective,
                accumulation_steps=self.accumulation_steps,
                compute_dtype=self.compute_dtype,
            )
        metrics[REPORT] = jnp.stack(
            [jnp.max(stop_signal), state.first_nonfinite_step, state.skipped_updates]
        )
        return state, metrics

    def sharding_context(self):
        """While tracing: activations follow the rules."""
        return axis_rules(self.rules, dict(self.mesh.shape))


def _sequence_split(mesh: Mesh, rules: Rules) -> SequenceSplit | None:
    """The split of the time axis over the mesh axis the rules map ``sequence`` to, with the
    batch over the (split) axes of the ``batch`` rule; None unless that axis has more than one
    device."""
    mapping = dict(rules)
    sequence_axis = mapping.get(SEQUENCE)
    if not isinstance(sequence_axis, str) or mesh.shape[sequence_axis] == 1:
        return None
    batch_axes = mapping.get(BATCH) or ()
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    return SequenceSplit(sequence_axis, tuple(a for a in batch_axes if mesh.shape[a] > 1))
