"""The layout of a training workdir.

config.json            the config of the latest start or resume (checked on resume)
config_history.jsonl   one line per resume that changed the config: the earlier config, the
                       step it trained up to, and what changed
checkpoints/<step>     orbax checkpoints of parameters and optimizer state, with checksums
corrupt_checkpoints/   checkpoints found corrupt on resume, moved out of the way
metrics.jsonl          train and eval metrics, one JSON object per line
tensorboard/           the same metrics as TensorBoard events
eval/                  eval.py's reports
"""

import json
from pathlib import Path

import ml_collections

from seqjax.training import config as config_lib
from seqjax.training.files import write_atomically

CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_CHECKPOINT_DIR = "corrupt_checkpoints"
EVAL_DIR = "eval"


def load_saved_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config of a workdir's latest start or resume."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a training workdir: it has no {CONFIG_FILE}")
    config = config_lib.from_json(path.read_text())
    # Written before model.pooling was refused for language models, which were then the only
    # models train.py built: it never changed such a run, so it is dropped.
    if "model" in config and "pooling" in config.model and "head" not in config.model:
        del config.model["pooling"]
    return config


def check_resume(workdir: Path, config: ml_collections.ConfigDict, *, has_checkpoint: bool):
    """Refuses a workdir whose checkpoints were trained with another model or task."""
    if not (workdir / CONFIG_FILE).exists():
        if has_checkpoint:
            raise config_lib.ConfigError(
                f"workdir {workdir} has checkpoints but no {CONFIG_FILE}; cannot check they fit"
            )
        return
    conflicts = config_lib.resume_conflicts(load_saved_config(workdir), config)
    if has_checkpoint and conflicts:
        raise config_lib.ConfigError(
            f"workdir {workdir} holds a checkpoint trained with a different config:\n  "
            + "\n  ".join(conflicts)
            + "\nuse a new --workdir, or the same model and task settings to resume"
        )


def save_config(workdir: Path, config: ml_collections.ConfigDict, start_step: int) -> list[str]:
    """Writes ``config`` as the workdir's config; resuming from ``start_step`` with other
    settings (optimizer, step count, ...) first appends the earlier config to
    config_history.jsonl. Returns what changed."""
    path = workdir / CONFIG_FILE
    changes = []
    if start_step and path.exists():
        saved = load_saved_config(workdir)
        changes = config_lib.differences(saved.to_dict(), config.to_dict())
        if changes:
            history = workdir / CONFIG_HISTORY_FILE
            earlier = history.read_text() if history.exists() else ""
            entry = {"until_step": start_step, "changes": changes, "config": saved.to_dict()}
            write_atomically(history, earlier + json.dumps(entry, sort_keys=True) + "\n")
    write_atomically(path, config_lib.to_json(config))
    return changes
