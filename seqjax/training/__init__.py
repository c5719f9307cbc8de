"""Training: configs, the train state and step, the loop, checkpoints and metrics."""

from seqjax.training.config import (
    ConfigError,
    load_config,
    mixer_defaults,
    model_defaults,
    optimizer_defaults,
    training_defaults,
)
from seqjax.training.loop import NonFiniteError, TrainResult, train

__all__ = [
    "ConfigError",
    "NonFiniteError",
    "TrainResult",
    "load_config",
    "mixer_defaults",
    "model_defaults",
    "optimizer_defaults",
    "train",
    "training_defaults",
]
