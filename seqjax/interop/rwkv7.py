"""RWKV-7 "Goose" checkpoints in BlinkDL's own format (the ``.pth`` files RWKV-LM trains and
the ``rwkv`` package runs) to seqjax language models, without torch.

A ``.pth`` is a zip archive: ``<archive>/data.pkl`` pickles a dict of tensors, each a call of
torch's ``_rebuild_tensor_v2`` on a storage whose persistent id names the raw little-endian
bytes in ``<archive>/data/<key>``. ``read_pth`` unpickles it knowing only that function,
torch's floating-point storage types and ``collections.OrderedDict``; any other global is
refused by name, so nothing in the file runs. Tensors are read one at a time, when asked for.

Official layer i is two seqjax blocks, each a pre-norm residual block with a layer norm and
no gated MLP: block 2i is ``rwkv7`` (ln1, att), block 2i+1 ``rwkv7_channel_mix`` (ln2, ffn).
Every layer after the first has ``value_residual`` (v0, v1, v2); the first layer's v0, v1 and
v2, which RWKV-LM saves and never reads, are ignored. ln0, the layer norm after the
embedding, is applied to the embedding table as it is read (each row is one token's
embedding, so the model computes the same: the rwkv package does this too). Shapes, with
C = H·N the width, N the head size, F the channel mix's width, R each low rank:

    emb.weight [V, C] (ln0 applied)        backbone.embed.embedding
    blocks.0.ln0.weight, .bias [C]         (into the embedding)
    blocks.i.ln1 / ln2 .weight, .bias [C]  blocks.{2i / 2i+1}.mixer_norm.scale, .bias
    att.x_r, x_w, x_k, x_v, x_a, x_g [1, 1, C]   mixer.mix [6, C]
    att.w0 [1, 1, C], w1 [C, R], w2 [R, C]       mixer.decay_base, decay_down, decay_up
    att.a0, a1, a2                               mixer.icl_base, icl_down, icl_up
    att.v0, v1, v2                               mixer.value_residual_base, _down, _up
    att.g1 [C, R], g2 [R, C]                     mixer.gate_down, gate_up
    att.k_k, k_a [1, 1, C]                       mixer.removal_key_scale, icl_key_scale [H, N]
    att.r_k [H, N]                               mixer.bonus
    att.receptance, key, value, output .weight [C, C]   mixer.<same>.kernel, transposed
    att.ln_x.weight, .bias [C]                   mixer.norm_scale, norm_bias
    ffn.x_k [1, 1, C]                            mixer.mix [C]
    ffn.key.weight [F, C], value.weight [C, F]   mixer.key.kernel, value.kernel, transposed
    ln_out.weight, .bias [C]                     backbone.final_norm.scale, .bias
    head.weight [V, C]                           head.kernel, transposed

Anything else in the file (DeepEmbed's s_emb, s0, s1, s2, say) is refused by name.
"""

import contextlib
import dataclasses
import os
import pickle
import re
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from seqjax.interop.pretrained import PretrainedError
from seqjax.models.backbone import LanguageModel
from seqjax.models.factory import create_model

# torch's storage types that RWKV checkpoints use, by element type.
STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "DoubleStorage": np.dtype(np.float64),
}
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's, which RWKV-LM keeps
# Saved by RWKV-LM for layer 0, never read by the model.
UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")


@dataclasses.dataclass(frozen=True)
class _Storage:
    key: str
    dtype: np.dtype
    size: int


@dataclasses.dataclass(frozen=True)
class PthTensor:
    """One tensor of a ``.pth`` archive, read by ``read()``: ``size`` elements of a storage
    from ``offset`` with element ``stride``s."""

    archive: zipfile.ZipFile
    member: str
    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]

    def read(self) -> np.ndarray:
        data = np.frombuffer(self.archive.read(self.member), self.storage.dtype)
        if data.size != self.storage.size:
            raise PretrainedError(
                f"{self.member} holds {data.size} elements, its storage {self.storage.size}"
            )
        itemsize = data.dtype.itemsize
        strides = tuple(s * itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(data[self.offset :], self.shape, strides).copy()


class _TensorUnpickler(pickle.Unpickler):
    """Rebuilds torch tensors as PthTensors; refuses every other global by name."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self.archive, self.prefix, self.source = archive, prefix, source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self._rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise PretrainedError(
            f"{self.source} asks for the pickle global {module}.{name}, which a file of "
            "tensors does not need; it is refused (only torch's tensor rebuild function, "
            f"its storage types {', '.join(STORAGE_DTYPES)} and OrderedDict are allowed)"
        )

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise PretrainedError(f"{self.source}: unknown persistent id {pid!r}")
        _, dtype, key, _location, size = pid
        if not isinstance(dtype, np.dtype) or not isinstance(size, int):
            raise PretrainedError(f"{self.source}: unknown storage {pid!r}")
        return _Storage(str(key), dtype, size)

    def _rebuild_tensor(self, storage, offset, shape, stride, *_requires_grad_and_hooks):
        if not isinstance(storage, _Storage):
            raise PretrainedError(f"{self.source}: a tensor without a storage")
        shape, stride = tuple(shape), tuple(stride)
        valid = (
            isinstance(offset, int)
            and offset >= 0
            and len(shape) == len(stride)
            and all(isinstance(n, int) and n >= 0 for n in (*shape, *stride))
        )
        end = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True)) + 1
        if not valid or (0 not in shape and end > storage.size):
            raise PretrainedError(
                f"{self.source}: tensor of shape {shape}, strides {stride} from {offset} "
                f"does not fit its storage of {storage.size} elements"
            )
        member = f"{self.prefix}/data/{storage.key}"
        return PthTensor(self.archive, member, storage, offset, shape, stride)


@contextlib.contextmanager
def read_pth(path: str | os.PathLike) -> Iterator[dict[str, PthTensor]]:
    """The tensors of the torch.save archive ``path`` by name, each read when asked for
    while the context is open."""
    source = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise PretrainedError(
            f"cannot open {source} as a torch.save zip archive ({error}); torch's legacy "
            "format is not read"
        ) from error
    with archive:
        yield _tensors(archive, source)


def _tensors(archive: zipfile.ZipFile, source: str) -> dict[str, PthTensor]:
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise PretrainedError(f"{source} holds {len(pickles)} data.pkl files, not one")
    prefix = pickles[0].removesuffix("/data.pkl")
    if f"{prefix}/byteorder" in archive.namelist():
        if archive.read(f"{prefix}/byteorder") != b"little":
            raise PretrainedError(f"{source} is not little-endian")
    with archive.open(pickles[0]) as file:
        tensors = _TensorUnpickler(file, archive, prefix, source).load()
    if not isinstance(tensors, dict) or not all(
        isinstance(name, str) and isinstance(tensor, PthTensor) for name, tensor in tensors.items()
    ):
        raise PretrainedError(f"{source} holds no dict of named tensors")
    return dict(tensors)


def _layers(shapes: Mapping[str, tuple[int, ...]]) -> int:
    indices = {int(m.group(1)) for name in shapes if (m := re.match(r"blocks\.(\d+)\.", name))}
    if not indices or indices != set(range(max(indices) + 1)):
        raise PretrainedError(f"the blocks are numbered {sorted(indices)}, not 0, 1, ...")
    return max(indices) + 1


def _shape(shapes: Mapping[str, tuple[int, ...]], name: str) -> tuple[int, ...]:
    if name not in shapes:
        raise PretrainedError(f"the checkpoint lacks {name}, which an RWKV-7 model needs")
    return shapes[name]


def rwkv7_model_config(shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, Any], int]:
    """The seqjax model config of an RWKV-7 checkpoint with these tensor shapes, and its
    vocabulary size: every width and low rank is read from a shape."""
    num_heads, head_size = _shape(shapes, "blocks.0.att.r_k")
    vocab_size, width = _shape(shapes, "emb.weight")
    if num_heads * head_size != width:
        raise PretrainedError(
            f"r_k has {num_heads} heads of {head_size}, but the embedding width is {width}"
        )
    num_layers = _layers(shapes)

    def rank(layer, name):
        return _shape(shapes, f"blocks.{layer}.att.{name}")[1]

    def time_mix(layer):
        options = dict(
            head_size=head_size,
            decay_rank=rank(layer, "w1"),
            icl_rank=rank(layer, "a1"),
            gate_rank=rank(layer, "g1"),
            value_residual=layer > 0,
        )
        return options | (dict(value_rank=rank(layer, "v1")) if layer > 0 else {})

    def channel_mix(layer):
        return dict(hidden_size=_shape(shapes, f"blocks.{layer}.ffn.key.weight")[0])

    typical = num_layers > 1  # the options of the layers after the first
    mixers = {"rwkv7": time_mix(int(typical)), "rwkv7_channel_mix": channel_mix(int(typical))}
    layer_options = {}
    for layer in range(num_layers):
        for block, options, name in (
            (2 * layer, time_mix(layer), "rwkv7"),
            (2 * layer + 1, channel_mix(layer), "rwkv7_channel_mix"),
        ):
            changed = {k: v for k, v in options.items() if mixers[name].get(k) != v}
            if changed:
                layer_options[block] = changed
    model_config = {
        "mixer": "rwkv7,rwkv7_channel_mix",
        "num_layers": 2 * num_layers,
        "d_model": width,
        "mlp_hidden_size": 0,
        "norm": "layer",
        "norm_epsilon": LAYER_NORM_EPSILON,
        "mixers": mixers,
        "layer_options": layer_options,
        "tie_embeddings": False,
        "head_bias": False,
    }
    return model_config, vocab_size


def _vector(array: np.ndarray) -> np.ndarray:
    """[1, 1, C] (or [C]) -> [C]; any other shape is left for the shape check to name."""
    return array.reshape(-1) if array.ndim and array.size == array.shape[-1] else array


def _per_head(num_heads: int) -> Callable[[np.ndarray], np.ndarray]:
    def load(array):
        vector = _vector(array)
        return vector.reshape(num_heads, -1) if vector.ndim == 1 else vector

    return load


def _transposed(array: np.ndarray) -> np.ndarray:
    return array.T


def _stacked(*arrays: np.ndarray) -> np.ndarray:
    return np.stack([_vector(array) for array in arrays])


def _normalized_embedding(table: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """ln0 applied to every row of the embedding table, in float64, in the table's dtype."""
    rows = table.astype(np.float64)
    mean = rows.mean(-1, keepdims=True)
    variance = np.square(rows - mean).mean(-1, keepdims=True)
    normed = (rows - mean) / np.sqrt(variance + LAYER_NORM_EPSILON)
    return (normed * scale.astype(np.float64) + bias.astype(np.float64)).astype(table.dtype)


def rwkv7_tensors(num_layers: int, num_heads: int) -> dict[str, tuple[tuple[str, ...], Callable]]:
    """seqjax parameter path -> (the checkpoint names it is made of, how)."""

    def norm(ours, theirs):
        return {
            f"{ours}.scale": ((f"{theirs}.weight",), _vector),
            f"{ours}.bias": ((f"{theirs}.bias",), _vector),
        }

    table = {
        "backbone.embed.embedding": (
            ("emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"),
            _normalized_embedding,
        ),
        **norm("backbone.final_norm", "ln_out"),
        "head.kernel": (("head.weight",), _transposed),
    }
    per_head = _per_head(num_heads)
    for layer in range(num_layers):
        time, channel = f"backbone.blocks.{2 * layer}", f"backbone.blocks.{2 * layer + 1}"
        att, ffn = f"blocks.{layer}.att", f"blocks.{layer}.ffn"
        table |= norm(f"{time}.mixer_norm", f"blocks.{layer}.ln1")
        table |= norm(f"{channel}.mixer_norm", f"blocks.{layer}.ln2")
        low_ranks = [("decay", "w"), ("icl", "a")] + ([("value_residual", "v")] if layer else [])
        mixer = {
            "mix": (tuple(f"{att}.x_{m}" for m in "rwkvag"), _stacked),
            "gate_down": ((f"{att}.g1",), np.asarray),
            "gate_up": ((f"{att}.g2",), np.asarray),
            "removal_key_scale": ((f"{att}.k_k",), per_head),
            "icl_key_scale": ((f"{att}.k_a",), per_head),
            "bonus": ((f"{att}.r_k",), np.asarray),
            "norm_scale": ((f"{att}.ln_x.weight",), _vector),
            "norm_bias": ((f"{att}.ln_x.bias",), _vector),
        }
        for ours, theirs in low_ranks:
            mixer[f"{ours}_base"] = ((f"{att}.{theirs}0",), _vector)
            mixer[f"{ours}_down"] = ((f"{att}.{theirs}1",), np.asarray)
            mixer[f"{ours}_up"] = ((f"{att}.{theirs}2",), np.asarray)
        for projection in ("receptance", "key", "value", "output"):
            mixer[f"{projection}.kernel"] = ((f"{att}.{projection}.weight",), _transposed)
        table |= {f"{time}.mixer.{name}": entry for name, entry in mixer.items()}
        table |= {
            f"{channel}.mixer.mix": ((f"{ffn}.x_k",), _vector),
            f"{channel}.mixer.key.kernel": ((f"{ffn}.key.weight",), _transposed),
            f"{channel}.mixer.value.kernel": ((f"{ffn}.value.weight",), _transposed),
        }
    return table


def load_rwkv7(path: str | os.PathLike, *, dtype: Any = None) -> LanguageModel:
    """The seqjax LanguageModel of the RWKV-7 ``.pth`` checkpoint ``path``.

    ``dtype`` None keeps each tensor's stored dtype. A tensor missing, extra, misshapen or
    not floating point is refused by name.
    """
    source = Path(path)
    with read_pth(source) as tensors:
        return _load(tensors, source, dtype)


def _load(tensors: Mapping[str, PthTensor], source: Path, dtype: Any) -> LanguageModel:
    shapes = {name: tensor.shape for name, tensor in tensors.items()}
    model_config, vocab_size = rwkv7_model_config(shapes)
    num_heads = shapes["blocks.0.att.r_k"][0]
    table = rwkv7_tensors(model_config["num_layers"] // 2, num_heads)
    needed = {name for names, _ in table.values() for name in names}
    missing, extra = sorted(needed - set(tensors)), sorted(set(tensors) - needed - set(UNUSED))
    for kind, names in (
        ("lacks", missing),
        ("holds tensors an RWKV-7 model has no place for:", extra),
    ):
        if names:
            raise PretrainedError(f"{source} {kind} {', '.join(names)}")
    model = nnx.eval_shape(
        lambda: create_model(model_config, vocab_size=vocab_size, rngs=nnx.Rngs(0))
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    for path_parts, variable in nnx.to_flat_state(params):
        parameter = ".".join(map(str, path_parts))
        names, load = table[parameter]
        arrays = [tensors[name].read() for name in names]
        if not all(jnp.issubdtype(array.dtype, jnp.floating) for array in arrays):
            raise PretrainedError(f"{source}: {', '.join(names)} is not floating point")
        try:
            value = np.asarray(load(*arrays))
        except ValueError:  # vectors of different lengths stacked
            value = None
        if value is None or value.shape != variable.shape:
            raise PretrainedError(
                f"{source}: {', '.join(names)} of shape "
                f"{', '.join(str(shapes[name]) for name in names)} do not make "
                f"{parameter}, which needs {variable.shape}"
            )
        variable.set_value(jnp.asarray(value, dtype=value.dtype if dtype is None else dtype))
    return nnx.merge(graphdef, params, rest)
