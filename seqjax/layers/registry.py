"""The token-mixer registry: ``available()`` lists mixer names, ``create`` builds one by name.

Every mixer is a Flax NNX module with the same face::

    y, new_state = mixer(x, state=None, segment_starts=None)   # x, y: [B, T, D]
    state = mixer.init_state(batch_size)                       # a pytree of arrays

Passing ``state=None`` starts from ``init_state``; ``segment_starts`` [B, T] resets the state
before the tokens that start a packed segment.
"""

import inspect
from collections.abc import Callable
from typing import Any

from flax import nnx

_MIXERS: dict[str, type[nnx.Module]] = {}
# Set by the backbone, not by configs: a mixer that declares them learns where it sits.
DEPTH_ARGUMENTS = ("layer_index", "num_layers")


def register(name: str) -> Callable[[type[nnx.Module]], type[nnx.Module]]:
    """Class decorator that registers a token mixer under ``name``."""

    def decorate(cls: type[nnx.Module]) -> type[nnx.Module]:
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} is already registered by {_MIXERS[name].__name__}")
        _MIXERS[name] = cls
        return cls

    return decorate


def available() -> tuple[str, ...]:
    """The registered mixer names, sorted."""
    return tuple(sorted(_MIXERS))


def mixer_class(name: str) -> type[nnx.Module]:
    """The class registered as ``name``; a ValueError lists the known names otherwise."""
    if name not in _MIXERS:
        raise ValueError(f"unknown mixer {name!r}; available mixers: {', '.join(available())}")
    return _MIXERS[name]


def mixer_options(name: str) -> tuple[str, ...]:
    """The keyword options that mixer ``name`` accepts besides ``d_model`` and ``rngs``."""
    parameters = inspect.signature(mixer_class(name).__init__).parameters
    excluded = ("self", "d_model", "rngs", *DEPTH_ARGUMENTS)
    return tuple(p for p in parameters if p not in excluded)


def create(
    name: str,
    *,
    d_model: int,
    rngs: nnx.Rngs,
    layer_index: int = 0,
    num_layers: int = 1,
    **options: Any,
) -> nnx.Module:
    """Builds the mixer registered as ``name`` with width ``d_model`` and its ``options``.

    ``layer_index`` and ``num_layers`` reach only mixers whose constructor declares them
    (HGRN's forget-gate lower bound rises with depth).
    """
    valid = mixer_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"mixer {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    parameters = inspect.signature(mixer_class(name).__init__).parameters
    depth = {"layer_index": layer_index, "num_layers": num_layers}
    depth = {argument: value for argument, value in depth.items() if argument in parameters}
    return mixer_class(name)(d_model=d_model, rngs=rngs, **depth, **options)


def default_options(name: str) -> dict[str, Any]:
    """Mixer ``name``'s options with their default values, as a config section shows them."""
    parameters = inspect.signature(mixer_class(name).__init__).parameters
    return {option: parameters[option].default for option in mixer_options(name)}
