"""Experiment configs: Python files returning an ``ml_collections.ConfigDict``.

``load_config("configs/mqar.py:arg", ["model.mixer=gru"])`` imports the file, calls its
``get_config(arg)`` and applies ``key=value`` overrides, each checked against the keys and
types the config already has, so a misspelt key fails with the keys that do exist.
"""

import ast
import difflib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from seqjax import layers
from seqjax.training.sharding import mesh_defaults

SECTIONS_THAT_MUST_MATCH_ON_RESUME = ("model", "task")
# Training options every config has, with these values unless it sets them.
TRAINING_DEFAULTS = dict(grad_accumulation_steps=1, compute_dtype="float32", remat="none")


class ConfigError(ValueError):
    """A config file, key or value that cannot be used, with a message saying why."""


def mixer_defaults(**overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Every registered mixer's options with their defaults, updated by ``overrides[name]``.

    Putting them all in a config lets ``--config.model.mixers.<name>.<option>=...`` reach
    any option of any mixer, and records the options a run used.
    """
    sections = {name: layers.default_options(name) for name in layers.available()}
    for name, options in overrides.items():
        if name not in sections:
            raise ConfigError(f"unknown mixer {name!r}; available mixers: {', '.join(sections)}")
        sections[name].update(options)
    return ml_collections.ConfigDict(sections)


def model_defaults(mixer: str, **overrides: Any) -> dict[str, Any]:
    """The ``model`` section most configs share, for ``mixer`` (a name, or comma-separated
    names one per layer), updated by ``overrides``: 2 layers of width 64 with RMS norm, the
    output read at the last position, and every mixer's options (attention with 2 heads)."""
    model = dict(
        mixer=mixer,
        num_layers=2,
        d_model=64,
        mlp_expansion=2,
        norm="rms",
        pooling="last",
        mixers=mixer_defaults(attention=dict(num_heads=2)),
    )
    return _updated("model", model, overrides)


def optimizer_defaults(**overrides: Any) -> dict[str, Any]:
    """The ``optimizer`` section most configs share (AdamW, linear warmup then cosine decay),
    updated by ``overrides``."""
    optimizer = dict(
        learning_rate=1e-3,
        warmup_steps=100,
        end_learning_rate_ratio=0.0,
        b1=0.9,
        b2=0.98,
        eps=1e-8,
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    return _updated("optimizer", optimizer, overrides)


def training_defaults(**overrides: Any) -> dict[str, Any]:
    """The ``training`` section most configs share, updated by ``overrides``; loading a config
    adds the keys of TRAINING_DEFAULTS it leaves out."""
    training = dict(
        batch_size=64,
        num_steps=2000,
        log_every=100,
        eval_every=500,
        checkpoint_every=500,
        keep_checkpoints=2,
        eval_batch_size=250,
    )
    return _updated("training", training, overrides)


def _updated(section: str, defaults: dict[str, Any], overrides: Mapping[str, Any]) -> dict:
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown {section} option(s) {', '.join(unknown)}; options: {', '.join(defaults)}"
        )
    return {**defaults, **overrides}


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``path[:arg]`` and applies ``key=value`` overrides (``model.mixer=gru``)."""
    path, _, arg = spec.partition(":")
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file {path!r} does not exist (expected a Python file)")
    module_spec = importlib.util.spec_from_file_location(f"seqjax_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config() function")
    config = module.get_config(arg) if arg else module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config() must return an ml_collections.ConfigDict")
    config = with_defaults(config)
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator:
            raise ConfigError(f"config override {override!r} must look like key=value")
        set_value(config, key, value)
    return config


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the sections and keys it leaves out at their defaults:
    ``mesh`` (every device on the data axis) and the training options of TRAINING_DEFAULTS."""
    config = ml_collections.ConfigDict(config.to_dict())
    if "mesh" not in config:
        config.mesh = mesh_defaults()
    if "training" in config:
        for key, value in TRAINING_DEFAULTS.items():
            if key not in config.training:
                config.training[key] = value
    return config


def set_value(config: ml_collections.ConfigDict, dotted_key: str, text: str) -> None:
    """Sets ``config[dotted_key]`` from command-line ``text``, parsed as the field's type."""
    *parents, leaf = dotted_key.split(".")
    section, walked = config, []
    for name in [*parents, leaf]:
        if not isinstance(section, ml_collections.ConfigDict) or name not in section:
            where = ".".join(walked) or "the top level"
            known = sorted(section.keys()) if isinstance(section, ml_collections.ConfigDict) else []
            hint = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(
                f"unknown config key {dotted_key!r}"
                + (f" (did you mean {'.'.join([*walked, hint[0]])!r}?)" if hint else "")
                + f"; keys at {where}: {', '.join(known) or '(none)'}"
            )
        if name != leaf:
            section = section[name]
        walked.append(name)
    current = section[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"config key {dotted_key!r} is a section; set one of its keys instead")
    with section.ignore_type():
        section[leaf] = _parse_like(current, text, dotted_key)


def _parse_like(current: Any, text: str, key: str) -> Any:
    try:
        if isinstance(current, bool):
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, tuple | list):
            value = ast.literal_eval(text)
            return type(current)(value if isinstance(value, tuple | list) else (value,))
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"config key {key!r} expects a {type(current).__name__}, got {text!r}"
        ) from None
    # The field is None (or another type): a Python literal if it is one, else the text.
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def from_json(text: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(_lists_to_tuples(json.loads(text)))


def _lists_to_tuples(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


def differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable ``key: saved -> current`` lines where two config trees differ."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        lines = []
        for key in sorted(set(saved) | set(current)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                lines.append(f"{path}: (absent) -> {current[key]!r}")
            elif key not in current:
                lines.append(f"{path}: {saved[key]!r} -> (absent)")
            else:
                lines += differences(saved[key], current[key], path)
        return lines
    return [] if saved == current else [f"{prefix}: {saved!r} -> {current!r}"]


def resume_conflicts(saved: ml_collections.ConfigDict, current: ml_collections.ConfigDict):
    """The differences in the sections a checkpoint depends on (model and task).

    Options of mixers the pattern does not use are ignored, and so are options added to a
    mixer since the run started that keep their default, so new mixers and options do not
    break old workdirs.
    """
    conflicts = []
    for section in SECTIONS_THAT_MUST_MATCH_ON_RESUME:
        old = _relevant(saved.to_dict().get(section, {}))
        new = _relevant(current.to_dict().get(section, {}))
        _fill_options_added_since(old, new)
        conflicts += differences(old, new, section)
    return conflicts


def _fill_options_added_since(saved: dict, current: dict) -> None:
    """A mixer option the saved config lacks was added to seqjax after the run started; at
    its default value it changes nothing, so it counts as saved with that value."""
    for name, options in current.get("mixers", {}).items():
        if name not in layers.available() or name not in saved.get("mixers", {}):
            continue
        defaults = layers.default_options(name)
        for option, value in options.items():
            if option not in saved["mixers"][name] and option in defaults:
                if defaults[option] == value:
                    saved["mixers"][name][option] = value


def _relevant(section: dict) -> dict:
    if "mixers" not in section or "mixer" not in section:
        return section
    used = {name.strip() for name in str(section["mixer"]).split(",")}
    mixers = {name: options for name, options in section["mixers"].items() if name in used}
    return {**section, "mixers": mixers}
