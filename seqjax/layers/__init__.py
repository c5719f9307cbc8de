"""Flax NNX layers: token mixers (registered by name), norms, MLPs and embeddings.

Every module of this package is imported here, so a mixer registers itself by being defined
in a file of ``seqjax/layers`` with ``@register(name)``.
"""

import importlib
import pkgutil

from seqjax.layers.registry import (
    available,
    create,
    default_options,
    mixer_class,
    mixer_options,
    register,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["available", "create", "default_options", "mixer_class", "mixer_options", "register"]
