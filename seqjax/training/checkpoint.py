"""Orbax checkpoints of the parameters and optimizer state, one directory per step, each
with the checksums of its files.

Orbax writes each step into a temporary directory and renames it only when complete, so a
process killed while saving leaves the previous checkpoint as the latest good one. Once a
save is complete, ``checksums.json`` in its directory records the size and SHA-256 of every
file. Restoring checks them (a file truncated, deleted or changed by a single bit flip),
restores, and checks that every value is finite; ``restore_newest_intact`` falls back past
the checkpoints that fail to the newest one that passes. A checkpoint saved without
checksums (killed between the rename and writing them) is checked by restoring it.

A save that cannot be written (a full disk, a read-only directory) raises ``WriteError``
with the step, the directory and the cause. The directories are created synchronously, so
such a failure is raised in the caller and no background thread is left waiting.
"""

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from seqjax.training.files import WriteError, cause, writable_directory, write_atomically
from seqjax.typing import PyTree

CHECKSUMS_FILE = "checksums.json"
ITEMS = ("params", "opt_state")


class CheckpointError(ValueError):
    """A checkpoint that does not exist, or does not fit the model being restored."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint whose files changed since they were saved, cannot be read, or hold
    non-finite values."""


@dataclasses.dataclass
class Restored:
    step: int
    params: PyTree
    opt_state: PyTree | None
    skipped_updates: int  # non-finite updates skipped up to this step


def quiet_background_failures() -> None:
    """Leaves the saying of a failed save to its WriteError, in one line: orbax logs it as
    several tracebacks (absl), its pending writes as tasks whose exceptions are never
    retrieved (asyncio) and, landing on its closed event loop, as unraisable errors."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.FATAL)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    default_hook = sys.unraisablehook

    def hook(unraisable):
        code = getattr(unraisable.object, "cr_code", None)
        from_orbax = code is not None and "orbax" in code.co_filename
        loop_closed = isinstance(unraisable.exc_value, RuntimeError) and (
            "Event loop is closed" in str(unraisable.exc_value)
        )
        if not (from_orbax or loop_closed):
            default_hook(unraisable)

    sys.unraisablehook = hook


def exit_process(status: int) -> NoReturn:
    """Exits with ``status``; after an error (status 1), without waiting for other threads:
    one of orbax's may never finish after a failed save, and must not keep the process
    alive once the error is said."""
    sys.stdout.flush()
    sys.stderr.flush()
    if status == 1:
        os._exit(status)
    sys.exit(status)


def abstract_like(tree: PyTree) -> PyTree:
    """Shape, dtype and sharding of every array: the target that orbax restores into."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


def file_checksums(directory: Path) -> dict[str, dict]:
    """Size and SHA-256 of every file under ``directory`` but the checksums file."""
    checksums = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = str(path.relative_to(directory))
        if name == CHECKSUMS_FILE:
            continue
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                digest.update(chunk)
        checksums[name] = {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    return checksums


def checksum_problem(directory: Path) -> str | None:
    """What is wrong with the files of a checkpoint against its checksums (None: nothing, or
    no checksums to check against)."""
    path = directory / CHECKSUMS_FILE
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError) as error:
        return f"its {CHECKSUMS_FILE} cannot be read ({cause(error)})"
    current = file_checksums(directory)
    for name, expected in saved.items():
        found = current.get(name)
        if found is None:
            return f"file {name} is missing"
        if found["bytes"] != expected["bytes"]:
            return f"file {name} has {found['bytes']} bytes, not the {expected['bytes']} saved"
        if found["sha256"] != expected["sha256"]:
            return f"file {name} does not match its checksum"
    return None


def structure_difference(item_directory: Path, like: PyTree) -> str | None:
    """How the arrays saved in an orbax item differ from those of ``like``, by their paths
    (None: they match, or the item's metadata cannot be read, which restoring then reports).
    Empty nodes (an optimizer's EmptyState) are saved as entries without data and are left
    out. A checkpoint of another model is refused by this before anything is read, whether
    or not it has checksums, rather than taken for a corrupt one."""
    try:
        tree = json.loads((item_directory / "_METADATA").read_text())["tree_metadata"]
        saved = {p for p, m in tree.items() if not m["value_metadata"].get("skip_deserialize")}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    expected = {str(_key_names(path)) for path, _ in jax.tree_util.tree_flatten_with_path(like)[0]}
    missing, unexpected = sorted(expected - saved), sorted(saved - expected)
    if not missing and not unexpected:
        return None
    parts = []
    if missing:
        parts.append(f"lack {len(missing)} arrays of the model, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"hold {len(unexpected)} arrays the model has not, e.g. {unexpected[0]}")
    return " and ".join(parts)


@jax.jit
def _finite_leaves(tree: PyTree) -> jax.Array:
    return jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])


def _key_names(path: tuple) -> tuple[str, ...]:
    """The names of a key path of jax.tree_util, as orbax writes them in its tree metadata."""
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _path_name(path: tuple) -> str:
    """``params.backbone.blocks.0.mixer.kernel.value`` for a key path of jax.tree_util."""
    return ".".join(_key_names(path))


def nonfinite_leaves(tree: PyTree) -> list[str]:
    """The paths of the floating-point arrays of ``tree`` that hold a NaN or an infinity."""
    leaves = [
        (_path_name(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not leaves:
        return []
    finite = np.asarray(_finite_leaves([leaf for _, leaf in leaves]))
    return [name for (name, _), ok in zip(leaves, finite, strict=True) if not ok]


class Checkpoints:
    """The checkpoints in ``directory``: save every step asked, keep the last ``keep``.

    As a context manager it closes on exit; leaving with an exception, it closes without
    raising another (the error already raised is the one to report).
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, read_only: bool = False):
        self.directory = Path(directory).absolute()
        if not read_only:
            writable_directory(self.directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep,
            save_interval_steps=0 if read_only else 1,
            create=not read_only,
            read_only=read_only,
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=not read_only,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
        self._saving: int | None = None  # the step being written in the background
        self._closed = False

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, params: PyTree, opt_state: PyTree, *, skipped_updates: int = 0):
        """Starts saving ``step`` (asynchronously); ``wait`` blocks until it is on disk."""
        self.wait()
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    params=ocp.args.StandardSave(params),
                    opt_state=ocp.args.StandardSave(opt_state),
                ),
                custom_metadata={"skipped_updates": int(skipped_updates)},
                force=True,
            )
        except Exception as error:  # orbax and tensorstore raise several types
            raise self._write_error(step, error) from None
        self._saving = step

    def wait(self) -> None:
        """Blocks until the save in progress is on disk, then writes its checksums."""
        if self._saving is None:
            return
        step, self._saving = self._saving, None
        try:
            self.manager.wait_until_finished()
        except Exception as error:
            raise self._write_error(step, error) from None
        if jax.process_index() == 0:
            directory = self.directory / str(step)
            checksums = {"step": step, "files": file_checksums(directory)}
            write_atomically(directory / CHECKSUMS_FILE, json.dumps(checksums, indent=1))

    def _write_error(self, step: int, error: BaseException) -> WriteError:
        # Listed from the directory: orbax's own list is not kept after a failed save.
        intact = sorted(
            int(p.name) for p in self.directory.iterdir() if p.name.isdigit() and p.is_dir()
        )
        intact = [s for s in intact if s != step]
        kept = f"the checkpoint of step {intact[-1]} is intact" if intact else "no earlier one"
        return WriteError(
            f"cannot write the checkpoint of step {step} in {self.directory}: {cause(error)} "
            f"({kept})"
        )

    def restore(
        self, step: int | None, params_like: PyTree, opt_state_like: PyTree | None = None
    ) -> tuple[PyTree, PyTree | None]:
        """Restores ``step`` (None: the latest) into the structure of the given trees,
        checked against its checksums and for non-finite values (a CorruptCheckpointError
        otherwise); returns the parameters and optimizer state (None if not asked for)."""
        step = self.latest_step() if step is None else step
        if step is None or step not in self.all_steps():
            available = ", ".join(map(str, self.all_steps())) or "none"
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (available steps: {available})"
            )
        problem = checksum_problem(self.directory / str(step))
        if problem:
            raise self._corrupt(step, problem)
        likes = {"params": params_like, "opt_state": opt_state_like}
        for item, like in likes.items():
            difference = like is not None and structure_difference(
                self.directory / str(step) / item, like
            )
            if difference:
                raise CheckpointError(
                    f"the checkpoint at step {step} in {self.directory} does not fit this model "
                    f"(was it saved with another config or version?): its {item} {difference}"
                )
        items = {"params": ocp.args.StandardRestore(abstract_like(params_like))}
        if opt_state_like is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_like(opt_state_like))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:  # orbax and tensorstore raise several types
            if (self.directory / str(step) / CHECKSUMS_FILE).exists():
                # The files are as saved: the model they were saved from differs.
                raise CheckpointError(
                    f"the checkpoint at step {step} in {self.directory} does not fit this model "
                    f"(was it saved with another config?): {error}"
                ) from None
            raise self._corrupt(step, f"it cannot be read ({cause(error)})") from None
        params = restored["params"]
        opt_state = restored.get("opt_state") if opt_state_like is not None else None
        nonfinite = nonfinite_leaves({"params": params, "opt_state": opt_state})
        if nonfinite:
            raise self._corrupt(step, f"it holds non-finite values in {', '.join(nonfinite[:3])}")
        return params, opt_state

    def skipped_updates(self, step: int) -> int:
        """The non-finite updates skipped up to ``step``, as its save recorded."""
        return int(self.manager.metadata(step).custom_metadata.get("skipped_updates", 0))

    def restore_newest_intact(
        self, params_like: PyTree, opt_state_like: PyTree | None = None
    ) -> tuple[Restored | None, dict[int, str]]:
        """The newest checkpoint that restores intact (None if there is no checkpoint), and
        why each newer one does not. A CheckpointError if every checkpoint is corrupt."""
        corrupt = {}
        for step in reversed(self.all_steps()):
            try:
                params, opt_state = self.restore(step, params_like, opt_state_like)
            except CorruptCheckpointError as error:
                corrupt[step] = str(error)
                continue
            return Restored(step, params, opt_state, self.skipped_updates(step)), corrupt
        if corrupt:
            raise CheckpointError(
                "no intact checkpoint to resume from:\n  " + "\n  ".join(corrupt.values())
            )
        return None, corrupt

    def set_aside(self, steps: list[int], destination: Path) -> list[Path]:
        """Moves the checkpoints of ``steps`` into ``destination`` (process 0 moves, every
        process waits), out of the way of the checkpoints that resume will write."""
        if not steps:
            return []
        moved = []
        for step in steps:
            # A step set aside before (corrupted twice) keeps its earlier copy.
            target = next(
                destination / name
                for name in (str(step), *(f"{step}.{n}" for n in range(1, 1000)))
                if not (destination / name).exists()
            )
            if jax.process_index() == 0:
                try:
                    destination.mkdir(parents=True, exist_ok=True)
                    shutil.move(self.directory / str(step), target)
                except OSError as error:
                    raise WriteError(
                        f"cannot move the corrupt checkpoint {self.directory / str(step)} to "
                        f"{target}: {cause(error)}"
                    ) from None
            moved.append(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("seqjax: corrupt checkpoints set aside")
        self.manager.reload()
        return moved

    def _corrupt(self, step: int, problem: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(
            f"the checkpoint at step {step} in {self.directory} is corrupt: {problem}"
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.wait()
        finally:
            self.manager.close()

    def __enter__(self) -> "Checkpoints":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):
            self.close()
