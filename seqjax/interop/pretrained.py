"""Pretrained checkpoints in and out: local Hugging Face directories (config.json and
``*.safetensors``, with or without an index) to seqjax language models and back.

A converter is data, not a model (one file per transformers ``model_type`` in
``seqjax/interop/huggingface/``): ``recipe`` maps the checkpoint's config to a seqjax model
config (the ``model`` section train.py takes) and its vocabulary size, ``tensors`` names the
checkpoint tensors each seqjax parameter is made of and how (a transpose, a split, a
concatenation, all exact), and ``export`` writes the config back. Every key of config.json
is read by the converter or named by it as one that does not change what the model
computes (initialization, training or kernel settings); any other key, or a value the
recipe cannot express, is refused by name, never approximated.

Loading builds the model abstractly, then reads the tensors one at a time (safetensors.py),
converts each and places it on the devices (sharded by the parameters' logical axes when a
mesh is given), so the host holds one tensor beside the model, never two copies of it.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seqjax.interop.safetensors import SafetensorsFile, write_safetensors
from seqjax.layers.partitioning import Rules, logical_axes, mesh_spec
from seqjax.models.backbone import LanguageModel
from seqjax.models.factory import create_model

# Keys of any transformers config that say nothing about what the model computes.
GENERIC_KEYS = (
    "model_type",
    "architectures",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "use_cache",
    "initializer_range",
    "_name_or_path",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
INDEX_FILE = "model.safetensors.index.json"


class PretrainedError(ValueError):
    """A checkpoint that cannot be loaded or a model that cannot be saved, saying why."""


class CheckpointConfig:
    """config.json of a checkpoint; every key a converter reads is recorded, so the keys
    left over are known (``unread``)."""

    def __init__(self, values: Mapping[str, Any], source: str):
        self.values, self.source = dict(values), source
        self._read: set[str] = set()

    @property
    def model_type(self) -> str:
        return self.values.get("model_type", "")

    def __getitem__(self, key: str) -> Any:
        if key not in self.values:
            raise PretrainedError(f"{self.source} has no {key!r}, which a {self.model_type} needs")
        self._read.add(key)
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self.values.get(key, default)

    def require(self, key: str, allowed: Any, default: Any = None) -> Any:
        """The value of ``key`` (``default`` if absent), refused unless it is ``allowed``
        (a value, or a tuple of values) because seqjax computes only that."""
        value = self.get(key, default)
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if value not in allowed:
            raise PretrainedError(
                f"{self.source}: {key}={value!r} is not supported for {self.model_type} "
                f"(seqjax computes {' or '.join(map(repr, allowed))})"
            )
        return value

    def ignore(self, *keys: str) -> None:
        """Marks ``keys`` as read: they do not change what the model computes."""
        self._read.update(keys)

    def unread(self) -> list[str]:
        return sorted(set(self.values) - self._read - set(GENERIC_KEYS))


def _one(array: np.ndarray) -> np.ndarray:
    return array


def _tuple(array: np.ndarray) -> tuple[np.ndarray, ...]:
    return (array,)


@dataclasses.dataclass(frozen=True)
class Tensor:
    """A seqjax parameter (dotted path in the model, ``backbone.blocks.0.mixer.skip``) made of
    checkpoint tensors ``names``: ``load(*arrays)`` gives the parameter, ``save(parameter)``
    gives the arrays back, exactly."""

    path: str
    names: tuple[str, ...]
    load: Callable[..., np.ndarray] = _one
    save: Callable[[np.ndarray], tuple[np.ndarray, ...]] = _tuple


def same(path: str, name: str) -> Tensor:
    """A parameter stored as it is."""
    return Tensor(path, (name,))


def transposed(path: str, name: str) -> Tensor:
    """A linear kernel [in, out] stored as PyTorch's weight [out, in]."""
    return Tensor(path, (name,), lambda w: w.T, lambda k: (k.T,))


def conv_taps(path: str, name: str) -> Tensor:
    """A ShortConv's taps [W, C] stored as PyTorch's depthwise Conv1d weight [C, 1, W]."""
    return Tensor(path, (name,), lambda w: w[:, 0, :].T, lambda taps: (taps.T[:, None, :],))


def joined(path: str, *names: str, kernels: bool = False) -> Tensor:
    """A parameter made of checkpoint tensors of one shape side by side on its last axis
    (``kernels``: PyTorch linear weights [out, in], each transposed first), as seqjax fuses
    keys and values, or an MLP's gate and up projections."""
    if kernels:
        return Tensor(
            path,
            names,
            lambda *weights: np.concatenate([w.T for w in weights], axis=-1),
            lambda kernel: tuple(part.T for part in np.split(kernel, len(names), axis=-1)),
        )
    return Tensor(
        path,
        names,
        lambda *parts: np.concatenate(parts, axis=-1),
        lambda joint: tuple(np.split(joint, len(names), axis=-1)),
    )


@dataclasses.dataclass(frozen=True)
class Converter:
    """The data for one ``model_type``: see the module docstring.

    ``recipe(config)`` -> (model config, vocab_size); ``tensors(config, model_config)`` ->
    the Tensors of every parameter, and the checkpoint names that may be present without
    being read (a tied output layer saved as well); ``export(model_config, vocab_size,
    config)`` -> the config.json to write, given the one the model came from (or None).
    """

    model_type: str
    architecture: str
    recipe: Callable[[CheckpointConfig], tuple[dict[str, Any], int]]
    tensors: Callable[[CheckpointConfig, Mapping[str, Any]], tuple[list[Tensor], set[str]]]
    export: Callable[[Mapping[str, Any], int, Mapping[str, Any] | None], dict[str, Any]]


_CONVERTERS: dict[str, Converter] = {}


def register_converter(converter: Converter) -> Converter:
    if converter.model_type in _CONVERTERS:
        raise ValueError(f"a converter for {converter.model_type!r} is already registered")
    _CONVERTERS[converter.model_type] = converter
    return converter


def supported_model_types() -> list[str]:
    import seqjax.interop.huggingface  # noqa: F401  (registers the converters)

    return sorted(_CONVERTERS)


def converter_for(model_type: str, source: str) -> Converter:
    supported = supported_model_types()
    if model_type not in _CONVERTERS:
        raise PretrainedError(
            f"{source}: model_type {model_type!r} is not supported; supported: "
            f"{', '.join(supported)}"
        )
    return _CONVERTERS[model_type]


@dataclasses.dataclass(frozen=True)
class PretrainedSource:
    """Where a model was loaded from, kept on it as ``model.pretrained`` (JSON text, so the
    model's graph stays static): the model_type, config.json, the seqjax model config the
    recipe made of it, and the directory (its tokenizer files)."""

    model_type: str
    config_json: str
    model_config_json: str
    directory: str

    @property
    def model_config(self) -> dict[str, Any]:
        return json.loads(self.model_config_json)


def checkpoint_directory(path: str | os.PathLike) -> Path:
    """``path`` as a local checkpoint directory with a config.json (nothing is downloaded)."""
    directory = Path(path)
    if not directory.is_dir():
        raise PretrainedError(
            f"{path} is not a local directory; from_pretrained reads a checkpoint directory "
            "on this machine (config.json and *.safetensors) and downloads nothing"
        )
    if not (directory / "config.json").is_file():
        raise PretrainedError(f"{directory} has no config.json")
    return directory


def read_config(directory: Path) -> CheckpointConfig:
    path = directory / "config.json"
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PretrainedError(f"cannot read {path}: {error}") from error
    if not isinstance(values, dict):
        raise PretrainedError(f"{path} holds {type(values).__name__}, not a JSON object")
    return CheckpointConfig(values, str(path))


def checkpoint_files(directory: Path) -> dict[str, SafetensorsFile]:
    """The file holding each tensor: the index's weight map, or every ``*.safetensors``."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise PretrainedError(f"cannot read the weight map of {index}: {error}") from error
        files = {name: directory / name for name in sorted(set(weight_map.values()))}
        missing = [str(path) for path in files.values() if not path.is_file()]
        if missing:
            raise PretrainedError(f"{index} names files that are missing: {', '.join(missing)}")
        opened = {name: SafetensorsFile(path) for name, path in files.items()}
        located = {}
        for tensor, file in weight_map.items():
            if tensor not in opened[file].names:
                raise PretrainedError(f"{index} puts {tensor} in {file}, which does not hold it")
            located[tensor] = opened[file]
        return located
    paths = sorted(directory.glob("*.safetensors"))
    if not paths:
        raise PretrainedError(f"{directory} has no *.safetensors file")
    located = {}
    for path in paths:
        file = SafetensorsFile(path)
        for tensor in file.names:
            if tensor in located:
                raise PretrainedError(f"{tensor} is in both {located[tensor].path} and {path}")
            located[tensor] = file
    return located


def parameter_name(path: Sequence[Any]) -> str:
    return ".".join(str(part) for part in path)


def _placement(variable: nnx.Variable, mesh: Mesh | None, rules: Rules | None):
    if mesh is None:
        return None
    axes = logical_axes(variable)
    spec = mesh_spec(axes, variable.shape, rules, dict(mesh.shape)) if axes else PartitionSpec()
    return NamedSharding(mesh, spec)


def _model_of(model_config: Mapping[str, Any], vocab_size: int) -> LanguageModel:
    """The model of ``model_config``, built abstractly (no parameter is computed)."""
    return nnx.eval_shape(
        lambda: create_model(model_config, vocab_size=vocab_size, rngs=nnx.Rngs(0))
    )


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a checkpoint's config.json makes: the seqjax model config, the vocabulary size,
    and the Tensors of every parameter (with the names that may be present unread)."""

    directory: Path
    config: CheckpointConfig
    model_config: dict[str, Any]
    vocab_size: int
    tensors: list[Tensor]
    optional: set[str]


def read_recipe(path: str | os.PathLike) -> Recipe:
    """The recipe of the checkpoint directory ``path``, from config.json alone (no weights
    are read); a key the converter does not understand is refused by name."""
    directory = checkpoint_directory(path)
    config = read_config(directory)
    converter = converter_for(config.model_type, config.source)
    model_config, vocab_size = converter.recipe(config)
    tensors, optional = converter.tensors(config, model_config)
    unread = config.unread()
    if unread:
        raise PretrainedError(
            f"{config.source}: {', '.join(unread)} not understood by the {config.model_type} "
            "converter, so the model they describe cannot be built as it is"
        )
    return Recipe(directory, config, model_config, vocab_size, tensors, optional)


def from_pretrained(
    path: str | os.PathLike,
    *,
    dtype: Any = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> LanguageModel:
    """The seqjax LanguageModel of the Hugging Face checkpoint directory ``path``.

    ``dtype`` None keeps each floating tensor's stored dtype; ``mesh`` places every parameter
    sharded by its logical axes under ``rules`` (default: training's DEFAULT_RULES).
    """
    recipe = read_recipe(path)
    directory, config = recipe.directory, recipe.config
    model_config, vocab_size = recipe.model_config, recipe.vocab_size
    tensors, optional = recipe.tensors, recipe.optional
    if mesh is not None and rules is None:
        from seqjax.training.sharding import DEFAULT_RULES

        rules = DEFAULT_RULES
    model = _model_of(model_config, vocab_size)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    files = checkpoint_files(directory)
    by_path = _check_coverage(tensors, params, set(files), optional, directory)
    for path_parts, variable in nnx.to_flat_state(params):
        name = parameter_name(path_parts)
        tensor = by_path[name]
        arrays = []
        for checkpoint_name in tensor.names:
            arrays.append(files[checkpoint_name].read(checkpoint_name))
        value = np.asarray(tensor.load(*arrays))
        del arrays
        if value.shape != variable.shape:
            raise PretrainedError(
                f"{directory}: tensor {', '.join(tensor.names)} has shape "
                f"{_shapes(files, tensor.names)}, which gives {value.shape} for {name}; the "
                f"config asks for {variable.shape}"
            )
        target = dtype if dtype is not None else value.dtype
        if not np.issubdtype(value.dtype, np.floating):
            raise PretrainedError(f"{directory}: tensor {tensor.names[0]} is not floating point")
        placed = jax.device_put(jnp.array(value, dtype=target), _placement(variable, mesh, rules))
        del value
        variable.set_value(placed)
    model = nnx.merge(graphdef, params, rest)
    model.pretrained = PretrainedSource(
        config.model_type,
        json.dumps(config.values),
        json.dumps(model_config),
        str(directory.resolve()),
    )
    return model


def _shapes(files: Mapping[str, SafetensorsFile], names: Sequence[str]) -> str:
    return ", ".join(str(files[name].shape(name)) for name in names)


def _check_coverage(
    tensors: Sequence[Tensor],
    params: nnx.State,
    present: set[str],
    optional: set[str],
    directory: Path,
) -> dict[str, Tensor]:
    """Every parameter made of tensors the checkpoint has, and every checkpoint tensor
    used: otherwise an error naming what is missing or extra."""
    by_path = {tensor.path: tensor for tensor in tensors}
    parameters = [parameter_name(path) for path, _ in nnx.to_flat_state(params)]
    unmapped = [name for name in parameters if name not in by_path]
    if unmapped:
        raise PretrainedError(f"the converter maps no tensor to parameter(s) {unmapped}")
    stray = sorted(set(by_path) - set(parameters))
    if stray:
        raise PretrainedError(f"the converter maps tensors to unknown parameter(s) {stray}")
    needed = {name for tensor in tensors for name in tensor.names}
    missing = sorted(needed - present)
    if missing:
        raise PretrainedError(
            f"{directory}: the checkpoint lacks {len(missing)} tensor(s) the config asks "
            f"for: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        )
    extra = sorted(present - needed - optional)
    if extra:
        raise PretrainedError(
            f"{directory}: the checkpoint holds {len(extra)} tensor(s) the config has no "
            f"place for: {', '.join(extra[:8])}{' ...' if len(extra) > 8 else ''}"
        )
    return by_path


def save_pretrained(
    model: LanguageModel,
    path: str | os.PathLike,
    *,
    model_type: str | None = None,
    model_config: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes ``model`` to the directory ``path`` as a Hugging Face checkpoint (config.json,
    model.safetensors, the tokenizer files of the checkpoint it came from) that transformers'
    ``from_pretrained`` loads with the same logits.

    A model loaded by ``from_pretrained`` knows its type and config; another names them
    (``model_type``, ``model_config``: the model section it was built from). The directory is
    written beside ``path`` and renamed into place, so it is whole or absent; an existing
    ``path`` is replaced only with ``overwrite``.
    """
    source = getattr(model, "pretrained", None)
    model_type = model_type or (source.model_type if source else None)
    model_config = model_config or (source.model_config if source else None)
    if model_type is None or model_config is None:
        raise PretrainedError(
            "save_pretrained needs model_type and model_config for a model that "
            "from_pretrained did not load"
        )
    converter = converter_for(model_type, "save_pretrained")
    original = json.loads(source.config_json) if source else None
    vocab_size = model.vocab_size
    config_values = converter.export(model_config, vocab_size, original)
    config_values = {
        "model_type": model_type,
        "architectures": [converter.architecture],
        **config_values,
    }
    config = CheckpointConfig(config_values, "the exported config")
    tensors, _ = converter.tensors(config, model_config)
    params = nnx.state(model, nnx.Param)
    values = {parameter_name(path): variable for path, variable in nnx.to_flat_state(params)}
    missing = sorted({tensor.path for tensor in tensors} - set(values))
    if missing:
        raise PretrainedError(f"the model has no parameter(s) {missing} for a {model_type}")

    target = Path(path)
    if target.exists() and not overwrite:
        raise PretrainedError(f"{target} exists; pass overwrite=True to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write_safetensors(
            staging / "model.safetensors",
            _exported_tensors(tensors, values),
            metadata={"format": "pt"},
        )
        (staging / "config.json").write_text(json.dumps(config_values, indent=2) + "\n")
        if source is not None:
            for name in TOKENIZER_FILES:
                if (Path(source.directory) / name).is_file():
                    shutil.copyfile(Path(source.directory) / name, staging / name)
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _exported_tensors(
    tensors: Sequence[Tensor], values: Mapping[str, nnx.Variable]
) -> Iterator[tuple[str, np.ndarray]]:
    for tensor in tensors:
        parameter = np.asarray(jax.device_get(values[tensor.path].get_value()))
        arrays = tensor.save(parameter)
        for name, array in zip(tensor.names, arrays, strict=True):
            yield name, np.ascontiguousarray(array)


def _replace(staging: Path, target: Path) -> None:
    """Moves ``staging`` to ``target``; an existing ``target`` is moved aside first and
    removed only once the new directory is in place."""
    if not target.exists():
        os.replace(staging, target)
        return
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(target, previous)
    os.replace(staging, target)
    shutil.rmtree(previous, ignore_errors=True)
