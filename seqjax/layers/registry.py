"""The token-mixer registry: ``available()`` lists mixer names, ``create`` builds one by name.

Every mixer is a Flax NNX module with the same face::

    y, new_state = mixer(x, state=None, segment_starts=None)   # x, y: [B, T, D]
    state = mixer.init_state(batch_size)                       # a pytree of arrays

Passing ``state=None`` starts from ``init_state``; ``segment_starts`` [B, T] resets the state
before the tokens that start a packed segment.

A mixer's options are the keyword parameters of its constructor; a constructor that takes
``**options`` passes them on to its parent class's, whose options it accepts too (with its
own defaults where it names one again). Registering a class checks its inputs at every call
(a floating-point [B, T, D] x with D = d_model, B, T >= 1, a boolean [B, T]
``segment_starts``: checks.py), returns y in x's dtype whatever the parameters' dtype, and
checks ``d_model`` at construction; ``create`` also checks each option against its type
hint (or, without one, the type of its default), so text given for a number is refused by
name.

A mixer whose ops can run sequence-parallel declares ``sequence_split`` (a
``seqjax.ops.sequence_parallel.SequenceSplit``, set by the backbone) and passes it to every
op it calls that runs over time; one that does not declare it has no sequence-parallel form,
and ``create`` refuses to build it with a split.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any

from flax import nnx

from seqjax.layers.bidirectional import MERGES, Bidirectional
from seqjax.layers.checks import check_choice, check_mixer_inputs, check_size, check_type
from seqjax.ops.sequence_parallel import SequenceSplit

_MIXERS: dict[str, type[nnx.Module]] = {}
# Set by the backbone, not by configs: a mixer that declares them learns where it sits and
# the mesh axis its ops split the time axis over.
BACKBONE_ARGUMENTS = ("layer_index", "num_layers", "sequence_split")
_NOT_OPTIONS = ("self", "d_model", "rngs")


def register(name: str) -> Callable[[type[nnx.Module]], type[nnx.Module]]:
    """Class decorator that registers a token mixer under ``name``."""

    def decorate(cls: type[nnx.Module]) -> type[nnx.Module]:
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} is already registered by {_MIXERS[name].__name__}")
        cls.__init__ = _checking_width(_unchecked(cls.__init__))
        cls.__call__ = _checking_inputs(_unchecked(cls.__call__), name)
        _MIXERS[name] = cls
        return cls

    return decorate


def _unchecked(method: Callable) -> Callable:
    """The method without the checks a registered parent class wrapped around it."""
    return getattr(method, "__wrapped__", method)


def _checking_width(init: Callable) -> Callable:
    @functools.wraps(init)
    def checked_init(self, d_model: int, *args: Any, **kwargs: Any) -> None:
        check_size("d_model", d_model)
        init(self, d_model, *args, **kwargs)
        self.d_model = d_model

    return checked_init


def _checking_inputs(call: Callable, name: str) -> Callable:
    @functools.wraps(call)
    def checked_call(self, x, *, state=None, segment_starts=None):
        check_mixer_inputs(name, x, segment_starts, self.d_model)
        y, new_state = call(self, x, state=state, segment_starts=segment_starts)
        return y.astype(x.dtype), new_state

    return checked_call


def available() -> tuple[str, ...]:
    """The registered mixer names, sorted."""
    return tuple(sorted(_MIXERS))


def mixer_class(name: str) -> type[nnx.Module]:
    """The class registered as ``name``; a ValueError lists the known names otherwise."""
    if name not in _MIXERS:
        raise ValueError(f"unknown mixer {name!r}; available mixers: {', '.join(available())}")
    return _MIXERS[name]


def _constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The named parameters of ``cls``'s constructor and, if it takes ``**options``, those of
    its parent class's that it does not name itself."""
    position = next(i for i, owner in enumerate(cls.__mro__) if "__init__" in vars(owner))
    signature = inspect.signature(cls.__mro__[position].__init__).parameters
    named = {
        name: parameter
        for name, parameter in signature.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    if not any(parameter.kind is parameter.VAR_KEYWORD for parameter in signature.values()):
        return named
    return {**_constructor_parameters(cls.__mro__[position + 1]), **named}


def _option_parameters(name: str) -> dict[str, inspect.Parameter]:
    parameters = _constructor_parameters(mixer_class(name))
    return {
        option: parameter
        for option, parameter in parameters.items()
        if option not in (*_NOT_OPTIONS, *BACKBONE_ARGUMENTS)
    }


def mixer_options(name: str) -> tuple[str, ...]:
    """The keyword options that mixer ``name`` accepts besides ``d_model`` and ``rngs``."""
    return tuple(_option_parameters(name))


def default_options(name: str) -> dict[str, Any]:
    """Mixer ``name``'s options with their default values, as a config section shows them."""
    return {option: parameter.default for option, parameter in _option_parameters(name).items()}


def create(
    name: str,
    *,
    d_model: int,
    rngs: nnx.Rngs,
    layer_index: int = 0,
    num_layers: int = 1,
    sequence_split: SequenceSplit | None = None,
    bidirectional: bool = False,
    merge: str | None = None,
    shared_weights: bool | None = None,
    **options: Any,
) -> nnx.Module:
    """Builds the mixer registered as ``name`` with width ``d_model`` and its ``options``.

    ``layer_index`` and ``num_layers`` reach only mixers whose constructor declares them
    (HGRN's forget-gate lower bound rises with depth), and so does ``sequence_split``; a
    mixer that does not declare it is refused when one is given. A bad option value is a
    ValueError that starts with the mixer's name.

    ``bidirectional=True`` builds a ``Bidirectional`` of two such mixers, one forward and one
    over each segment reversed (one for both with ``shared_weights=True``), merged by
    ``merge``: "concat" (the default), "sum" or "gate" (seqjax/layers/bidirectional.py).
    """
    parameters = _option_parameters(name)
    unknown = sorted(set(options) - set(parameters))
    if unknown:
        raise ValueError(
            f"mixer {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(parameters) or '(none)'}"
        )
    declared = _constructor_parameters(mixer_class(name))
    if sequence_split is not None and "sequence_split" not in declared:
        raise ValueError(
            f"mixer {name!r} cannot run sequence-parallel (split over mesh axis "
            f"{sequence_split.axis!r}): it has no sequence-parallel form (its constructor takes "
            "no sequence_split), so its recurrence would need the whole sequence on every device"
        )
    backbone = dict(layer_index=layer_index, num_layers=num_layers, sequence_split=sequence_split)
    backbone = {argument: value for argument, value in backbone.items() if argument in declared}
    try:
        for option, value in options.items():
            check_type(option, value, _expected_type(parameters[option]))
        build = functools.partial(
            mixer_class(name), d_model=d_model, rngs=rngs, **backbone, **options
        )
        check_type("bidirectional", bidirectional, bool)
        if not bidirectional:
            given = {"merge": merge, "shared_weights": shared_weights}
            given = [f"{key}={value!r}" for key, value in given.items() if value is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} given, but only a bidirectional mixer "
                    "(bidirectional=True) takes merge and shared_weights"
                )
            return build()
        merge = "concat" if merge is None else merge
        check_choice("merge", merge, MERGES)
        check_type("shared_weights", shared_weights, bool | None)
        directions = [build() for _ in range(1 if shared_weights else 2)]
        return Bidirectional(name, *directions, merge=merge, rngs=rngs)
    except ValueError as error:
        raise ValueError(f"mixer {name!r}: {error}") from error


def _expected_type(parameter: inspect.Parameter) -> Any:
    """An option's type hint, or the type of its default if it has none (None: unchecked)."""
    if parameter.annotation is not parameter.empty:
        return parameter.annotation
    if parameter.default in (parameter.empty, None):
        return None
    return type(parameter.default)
