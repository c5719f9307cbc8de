"""Flax NNX layers: token mixers (registered by name), norms, MLPs and embeddings."""

from seqjax.layers import attention, rnn  # noqa: F401  (importing registers the mixers)
from seqjax.layers.registry import (
    available,
    create,
    default_options,
    mixer_class,
    mixer_options,
    register,
)

__all__ = ["available", "create", "default_options", "mixer_class", "mixer_options", "register"]
