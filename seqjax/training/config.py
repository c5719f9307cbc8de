"""Experiment configs: Python files returning an ``ml_collections.ConfigDict``.

``load_config("configs/mqar.py:arg", ["model.mixer=gru"])`` imports the file, calls its
``get_config(arg)`` and applies ``key=value`` overrides, each checked against the keys and
types the config already has, so a misspelt key fails with the keys that do exist.
``check_config`` then refuses every key that nothing reads and every value out of range:
no setting is accepted and ignored.

``config.imports`` names modules (comma-separated) imported before anything is built, so a
mixer or task that a user's package registers can be trained and evaluated by name.

``model.init_from`` names a Hugging Face checkpoint directory to fine-tune: the model section
becomes what its converter makes of its config.json (the recipe ``from_pretrained`` builds),
a ``text`` task reads its tokens with the checkpoint's tokenizer.json, and a model option
given together with init_from that the checkpoint contradicts is an error naming it.
"""

import ast
import difflib
import importlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from seqjax import layers
from seqjax.models.backbone import REMAT_POLICIES
from seqjax.training.sharding import mesh_defaults

SECTIONS_THAT_MUST_MATCH_ON_RESUME = ("model", "task")
TOP_LEVEL_KEYS = ("seed", "imports", "task", "model", "optimizer", "training", "mesh")
# The training options every config must set.
TRAINING_KEYS = (
    "batch_size",
    "num_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_batch_size",
)
# Training options every config has, with these values unless it sets them.
TRAINING_DEFAULTS = dict(
    grad_accumulation_steps=1,
    compute_dtype="float32",
    remat="none",
    skip_nonfinite_updates=False,
)
COMPUTE_DTYPES = ("float32", "bfloat16")


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
    names one per layer), updated by ``overrides``: 2 layers of width 64 with RMS norm, and
    every mixer's options (attention with 2 heads); the task's first head, causal."""
    model = dict(
        head=None,
        bidirectional=False,
        mixer=mixer,
        num_layers=2,
        d_model=64,
        mlp_expansion=2,
        norm="rms",
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
    keys = apply_overrides(config, overrides)
    if "model" in config and config.model.get("init_from") is not None:
        start_from_pretrained(config, keys)
    if "model" in config:
        check_mixer_overrides(keys, used_mixers(config.model))
    return config


TOKENIZER_FILE = "tokenizer.json"
_ABSENT = object()


def pretrained_model(init_from: Any) -> tuple[dict[str, Any], int]:
    """The model section of a run that starts from the checkpoint directory ``init_from``
    (its converter's recipe, with ``init_from`` made absolute) and the checkpoint's vocabulary
    size. Only config.json is read; the weights are read when training starts at step 0."""
    from seqjax.interop import pretrained

    if not isinstance(init_from, str | os.PathLike):
        raise ConfigError(f"model.init_from must be a checkpoint directory, got {init_from!r}")
    try:
        recipe = pretrained.read_recipe(init_from)
    except pretrained.PretrainedError as error:
        raise ConfigError(f"model.init_from: {error}") from None
    model = {**recipe.model_config, "init_from": str(recipe.directory.resolve())}
    return _lists_to_tuples(json.loads(json.dumps(model))), recipe.vocab_size


def pretrained_task(task: Mapping[str, Any], init_from: str, vocab_size: int) -> dict:
    """The task section of a run that starts from the checkpoint in ``init_from``: a ``text``
    task's tokens are those of the checkpoint's tokenizer.json, over its vocabulary. Another
    task keeps its tokens (its vocabulary must be the checkpoint's: see Trainer)."""
    task = dict(task)
    if task.get("name") != "text":
        return task
    tokenizer = Path(init_from) / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise ConfigError(
            f"model.init_from: {init_from} has no {TOKENIZER_FILE}, which the text task "
            "reads its tokens with"
        )
    return {**task, "tokenizer_file": str(tokenizer), "vocab_size": vocab_size}


def start_from_pretrained(config: ml_collections.ConfigDict, given: Sequence[str]) -> None:
    """Makes the model and task sections those of ``model.init_from`` (pretrained_model,
    pretrained_task); a key of ``given`` (the overrides) under ``model`` that the checkpoint
    has with another value, or does not have, is a ConfigError naming each such key."""
    model, vocab_size = pretrained_model(config.model.init_from)
    values, contradictions = config.model.to_dict(), []
    for key in given:
        section, _, path = key.partition(".")
        if section != "model" or path == "init_from":
            continue
        value, wanted = _lookup(values, path), _lookup(model, path)
        if wanted is _ABSENT:
            contradictions.append(f"{key}={value!r} (the checkpoint's model has no {path})")
        elif value != wanted:
            contradictions.append(f"{key}={value!r} (the checkpoint has {wanted!r})")
    if contradictions:
        raise ConfigError(
            f"model.init_from={model['init_from']} makes the model the checkpoint's, which "
            f"these options contradict: {'; '.join(contradictions)}; leave them out"
        )
    task = pretrained_task(config.task, model["init_from"], vocab_size)
    with config.ignore_type():
        config.model = ml_collections.ConfigDict(model)
        config.task = ml_collections.ConfigDict(task)


def check_pretrained(config: ml_collections.ConfigDict) -> None:
    """A config with ``model.init_from`` holds the checkpoint's model section and task (as
    load_config makes them); otherwise a ConfigError naming each difference."""
    init_from = config.model.get("init_from")
    if init_from is None:
        return
    model, vocab_size = pretrained_model(init_from)
    task = pretrained_task(config.task, model["init_from"], vocab_size)
    model["init_from"] = init_from  # the directory as the config names it
    conflicts = differences(_relevant(model), _relevant(config.model.to_dict()), "model")
    conflicts += differences(task, config.task.to_dict(), "task")
    if conflicts:
        raise ConfigError(
            f"model.init_from={init_from}: the config is not the checkpoint's (checkpoint -> "
            f"config): {'; '.join(conflicts)}; load_config gives the checkpoint's"
        )


def _lookup(section: Mapping[str, Any], dotted_key: str) -> Any:
    for name in dotted_key.split("."):
        if not isinstance(section, Mapping) or name not in section:
            return _ABSENT
        section = section[name]
    return section


def parse_overrides(arguments: Sequence[str]) -> list[str]:
    """Command-line ``--config.<key>=<value>`` or ``--config.<key> <value>`` items ->
    ``key=value`` strings; anything else is a ConfigError naming it."""
    overrides, index = [], 0
    while index < len(arguments):
        item = arguments[index]
        if not item.startswith("--config."):
            raise ConfigError(
                f"unrecognized argument {item!r} (overrides look like --config.KEY=VALUE)"
            )
        key_value = item.removeprefix("--config.")
        if "=" not in key_value:
            if index + 1 == len(arguments):
                raise ConfigError(f"{item} needs a value (--config.KEY=VALUE)")
            index += 1
            key_value = f"{key_value}={arguments[index]}"
        overrides.append(key_value)
        index += 1
    return overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> list[str]:
    """Applies ``key=value`` overrides; returns the keys set.

    ``imports`` is applied first and its modules imported, so that the other overrides can
    name the mixers those modules register (``model.mixers.<name>.<option>``).
    """
    pairs = []
    for override in overrides:
        key, separator, value = override.partition("=")
        if not separator:
            raise ConfigError(f"config override {override!r} must look like key=value")
        pairs.append((key, value))
    for key, value in pairs:
        if key == "imports":
            set_value(config, key, value)
    import_modules(config)
    for key, value in pairs:
        if key != "imports":
            set_value(config, key, value)
    return [key for key, _ in pairs]


def module_names(imports: Any) -> list[str]:
    """The module names of ``config.imports``: a string of comma-separated dotted names."""
    if not isinstance(imports, str):
        raise ConfigError(
            f"config.imports must be a string of comma-separated module names, got {imports!r}"
        )
    names = [name.strip() for name in imports.split(",") if name.strip()]
    for name in names:
        if not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"config.imports: {name!r} is not a module name (pkg.module)")
    return names


def import_modules(config: ml_collections.ConfigDict) -> None:
    """Imports the modules of ``config.imports`` (their mixers and tasks register themselves)
    and gives every mixer registered since the config was built its options section in
    ``config.model.mixers``."""
    for name in module_names(config.get("imports", "")):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"config.imports: cannot import {name!r}: {error}") from None
    if "model" in config and isinstance(config.model.get("mixers"), ml_collections.ConfigDict):
        for mixer in layers.available():
            if mixer not in config.model.mixers:
                config.model.mixers[mixer] = layers.default_options(mixer)


def used_mixers(model: Mapping[str, Any]) -> set[str]:
    """The mixer names of the ``model.mixer`` pattern (comma-separated)."""
    return {name.strip() for name in str(model.get("mixer", "")).split(",")}


def check_mixer_overrides(keys: Sequence[str], used: set[str]) -> None:
    """An override of ``model.mixers.<name>.*`` for a mixer that no model uses would be
    ignored: it is an error instead."""
    for key in keys:
        parts = key.split(".")
        if len(parts) > 3 and parts[:2] == ["model", "mixers"] and parts[2] not in used:
            raise ConfigError(
                f"config override {key!r} sets an option of mixer {parts[2]!r}, which the "
                f"model does not use (its mixers: {', '.join(sorted(used))})"
            )


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the sections and keys it leaves out at their defaults:
    ``mesh`` (every device on the data axis), ``imports`` (none) and the training options of
    TRAINING_DEFAULTS."""
    config = ml_collections.ConfigDict(config.to_dict())
    if "mesh" not in config:
        config.mesh = mesh_defaults()
    if "imports" not in config:
        config.imports = ""
    if "training" in config:
        for key, value in TRAINING_DEFAULTS.items():
            if key not in config.training:
                config.training[key] = value
    return config


# A rule for a config value: a test, and what it expects (for the error message).
Rule = tuple[Callable[[Any], bool], str]


def integer_at_least(minimum: int) -> Rule:
    return (
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
        f"an integer >= {minimum}",
    )


def number_in(low: float, high: float, *, low_included: bool, high_included: bool) -> Rule:
    """A finite real number between ``low`` and ``high`` (which may be infinite)."""

    def holds(v):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            return False
        above = v >= low if low_included else v > low
        below = v <= high if high_included else v < high
        return above and below

    if math.isinf(high):
        return holds, f"a finite number {'>=' if low_included else '>'} {low}"
    interval = "[("[not low_included] + f"{low}, {high}" + "])"[not high_included]
    return holds, f"a number in {interval}"


def one_of(*choices: str) -> Rule:
    return lambda v: v in choices, "one of " + ", ".join(map(repr, choices))


BOOLEAN: Rule = (lambda v: isinstance(v, bool), "True or False")
TRAINING_RULES: dict[str, Rule] = {
    "batch_size": integer_at_least(1),
    "num_steps": integer_at_least(1),
    "log_every": integer_at_least(1),
    "eval_every": integer_at_least(0),  # 0: evaluate only at the end
    "checkpoint_every": integer_at_least(0),  # 0: checkpoint only at the end and when stopped
    "keep_checkpoints": integer_at_least(1),
    "eval_batch_size": integer_at_least(1),
    "grad_accumulation_steps": integer_at_least(1),
    "compute_dtype": one_of(*COMPUTE_DTYPES),
    "remat": one_of(*REMAT_POLICIES),
    "skip_nonfinite_updates": BOOLEAN,
}
OPTIMIZER_RULES: dict[str, Rule] = {
    "learning_rate": number_in(0, math.inf, low_included=False, high_included=False),
    "warmup_steps": integer_at_least(0),
    "end_learning_rate_ratio": number_in(0, 1, low_included=True, high_included=True),
    "b1": number_in(0, 1, low_included=True, high_included=False),
    "b2": number_in(0, 1, low_included=True, high_included=False),
    "eps": number_in(0, math.inf, low_included=False, high_included=False),
    "weight_decay": number_in(0, math.inf, low_included=True, high_included=False),
    "grad_clip_norm": number_in(0, math.inf, low_included=True, high_included=False),  # 0: off
}


def check_section(config: Mapping[str, Any], section: str, rules: Mapping[str, Rule]) -> None:
    """``config[section]`` has exactly the keys of ``rules``, each value passing its rule."""
    if section not in config:
        raise ConfigError(f"config has no {section!r} section")
    values = config[section]
    unknown = sorted(set(values) - set(rules))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(f'{section}.{key}' for key in unknown)}; "
            f"config.{section} has {', '.join(rules)}"
        )
    missing = [key for key in rules if key not in values]
    if missing:
        raise ConfigError(f"config.{section} is missing {', '.join(missing)}")
    for key, (holds, expected) in rules.items():
        if not holds(values[key]):
            raise ConfigError(f"config.{section}.{key} must be {expected}, got {values[key]!r}")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Every top-level key known, ``seed`` and ``imports`` well-formed, and the ``training``
    and ``optimizer`` sections complete and in range (the model, task and mesh sections are
    checked by what builds them)."""
    unknown = sorted(set(config) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown top-level config key(s) {', '.join(unknown)}; a config has "
            f"{', '.join(TOP_LEVEL_KEYS)}"
        )
    for section in ("task", "model"):
        if section not in config:
            raise ConfigError(f"config has no {section!r} section")
    if "name" not in config.task:
        raise ConfigError("config.task.name is missing (the task to train on)")
    holds, expected = integer_at_least(0)
    if not holds(config.get("seed")):
        raise ConfigError(f"config.seed must be {expected}, got {config.get('seed')!r}")
    module_names(config.get("imports", ""))
    check_section(config, "training", TRAINING_RULES)
    check_section(config, "optimizer", OPTIMIZER_RULES)


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


# Model keys whose value here means what a config written before the key existed meant:
# training from scratch, the task's first head, a causal stack.
UNSET_MODEL_KEYS = {"init_from": None, "head": None, "bidirectional": False}


def _relevant(section: dict) -> dict:
    section = {
        key: value
        for key, value in section.items()
        if key not in UNSET_MODEL_KEYS or value != UNSET_MODEL_KEYS[key]
    }
    if "mixers" not in section or "mixer" not in section:
        return section
    used = used_mixers(section)
    mixers = {name: options for name, options in section["mixers"].items() if name in used}
    return {**section, "mixers": mixers}
