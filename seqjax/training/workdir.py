"""The layout of a training workdir.

config.json        the config the run was started with (checked on resume)
checkpoints/<step> orbax checkpoints of parameters and optimizer state
metrics.jsonl      train and eval metrics, one JSON object per line
tensorboard/       the same metrics as TensorBoard events
eval/              eval.py's reports
"""

from pathlib import Path

import ml_collections

from seqjax.training import config as config_lib
from seqjax.training.files import write_atomically

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
EVAL_DIR = "eval"


def load_saved_config(workdir: Path) -> ml_collections.ConfigDict:
    """The config a workdir's run was started with."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{workdir} is not a training workdir: it has no {CONFIG_FILE}")
    return config_lib.from_json(path.read_text())


def prepare_workdir(
    workdir: Path, config: ml_collections.ConfigDict, has_checkpoint: bool, *, write: bool = True
):
    """Checks that the checkpoints of a workdir fit ``config`` and (if ``write``) saves it."""
    saved_path = workdir / CONFIG_FILE
    if saved_path.exists():
        saved = load_saved_config(workdir)
        conflicts = config_lib.resume_conflicts(saved, config)
        if has_checkpoint and conflicts:
            raise config_lib.ConfigError(
                f"workdir {workdir} holds a checkpoint trained with a different config:\n  "
                + "\n  ".join(conflicts)
                + "\nuse a new --workdir, or the same model and task settings to resume"
            )
    elif has_checkpoint:
        raise config_lib.ConfigError(
            f"workdir {workdir} has checkpoints but no {CONFIG_FILE}; cannot check they fit"
        )
    if write:
        write_atomically(saved_path, config_lib.to_json(config))
