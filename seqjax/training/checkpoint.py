"""Orbax checkpoints of the parameters and optimizer state, one directory per step.

Orbax writes each step into a temporary directory and renames it only when complete, so a
process killed while saving leaves the previous checkpoint as the latest good one.
"""

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from seqjax.typing import PyTree


class CheckpointError(ValueError):
    """A checkpoint that does not exist or does not fit the model being restored."""


def abstract_like(tree: PyTree) -> PyTree:
    """Shape, dtype and sharding of every array: the target that orbax restores into."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


class Checkpoints:
    """The checkpoints in ``directory``: save every step asked, keep the last ``keep``."""

    def __init__(self, directory: str | Path, *, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=not read_only,
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "opt_state")
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, params: PyTree, opt_state: PyTree) -> None:
        """Starts saving ``step`` (asynchronously); ``wait`` blocks until it is on disk."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
            ),
            force=True,
        )

    def restore(
        self, step: int | None, params_like: PyTree, opt_state_like: PyTree | None = None
    ) -> tuple[PyTree, PyTree | None]:
        """Restores ``step`` (None: the latest) into the structure of the given trees."""
        step = self.latest_step() if step is None else step
        if step is None or step not in self.all_steps():
            available = ", ".join(map(str, self.all_steps())) or "none"
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (available steps: {available})"
            )
        items = {"params": ocp.args.StandardRestore(abstract_like(params_like))}
        if opt_state_like is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_like(opt_state_like))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as error:
            raise CheckpointError(
                f"the checkpoint at step {step} in {self.directory} does not fit this model "
                f"(was it saved with another config?): {error}"
            ) from None
        return restored["params"], restored.get("opt_state") if opt_state_like else None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
