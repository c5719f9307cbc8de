"""from_pretrained and save_pretrained without transformers: the safetensors reader and writer
against the safetensors library, sharded checkpoints with an index, placement on a mesh, the
errors for bad checkpoints, and the host memory of loading a large one."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from seqjax.interop import PretrainedError, from_pretrained, save_pretrained
from seqjax.interop.pretrained import INDEX_FILE
from seqjax.interop.safetensors import SafetensorsError, SafetensorsFile, write_safetensors

safetensors_numpy = pytest.importorskip(
    "safetensors.numpy", reason="the safetensors library is the reference for the format"
)

VOCAB = 48


def mamba_config(hidden: int = 16, layers: int = 2, vocab: int = VOCAB, **overrides) -> dict:
    """config.json of a transformers MambaForCausalLM (what its save_pretrained writes)."""
    return {
        "model_type": "mamba",
        "architectures": ["MambaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "state_size": 4,
        "num_hidden_layers": layers,
        "layer_norm_epsilon": 1e-5,
        "expand": 2,
        "conv_kernel": 4,
        "intermediate_size": 2 * hidden,
        "time_step_rank": math.ceil(hidden / 16),
        "hidden_act": "silu",
        "use_bias": False,
        "use_conv_bias": True,
        "tie_word_embeddings": True,
        "time_step_min": 0.001,
        "time_step_max": 0.1,
        "residual_in_fp32": True,
        **overrides,
    }


def mamba_tensors(config: dict, seed: int = 0, dtype=np.float32):
    """Random tensors of every weight of that model, in transformers' names and layouts,
    yielded one at a time."""
    rng = np.random.default_rng(seed)
    d, e, n = config["hidden_size"], config["intermediate_size"], config["state_size"]
    r, w = config["time_step_rank"], config["conv_kernel"]

    def draw(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype) * 0.1

    yield "backbone.embeddings.weight", draw(config["vocab_size"], d)
    for i in range(config["num_hidden_layers"]):
        prefix = f"backbone.layers.{i}"
        yield f"{prefix}.norm.weight", 1 + draw(d)
        yield f"{prefix}.mixer.in_proj.weight", draw(2 * e, d)
        yield f"{prefix}.mixer.conv1d.weight", draw(e, 1, w)
        yield f"{prefix}.mixer.conv1d.bias", draw(e)
        yield f"{prefix}.mixer.x_proj.weight", draw(r + 2 * n, e)
        yield f"{prefix}.mixer.dt_proj.weight", draw(e, r)
        yield f"{prefix}.mixer.dt_proj.bias", draw(e)
        yield f"{prefix}.mixer.A_log", draw(e, n)
        yield f"{prefix}.mixer.D", 1 + draw(e)
        yield f"{prefix}.mixer.out_proj.weight", draw(d, e)
    yield "backbone.norm_f.weight", 1 + draw(d)


def write_checkpoint(directory: Path, config: dict, tensors=None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    tensors = mamba_tensors(config) if tensors is None else tensors
    write_safetensors(directory / "model.safetensors", tensors, metadata={"format": "pt"})
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("mamba"), mamba_config())


def test_written_files_equal_the_safetensors_library(tmp_path):
    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.asarray([1.5, -2.25], ml_dtypes.bfloat16),
        "c": np.asarray([[1, 2]], np.int64),
        "empty": np.zeros((0, 3), np.float16),
    }
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    write_safetensors(ours, iter(arrays.items()), metadata={"format": "pt"})
    safetensors_numpy.save_file(arrays, str(theirs), metadata={"format": "pt"})
    for path in (ours, theirs):
        read_by_library = safetensors_numpy.load_file(str(path))
        read_by_us = SafetensorsFile(path)
        assert sorted(read_by_us.names) == sorted(arrays)
        for name, array in arrays.items():
            np.testing.assert_array_equal(read_by_library[name], array)
            assert read_by_us.read(name).dtype == array.dtype
            np.testing.assert_array_equal(read_by_us.read(name), array)
    assert not (tmp_path / "ours.safetensors.data").exists()


def test_a_truncated_safetensors_file_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, iter({"w": np.ones((64, 64), np.float32)}.items()))
    os.truncate(path, path.stat().st_size - 100)
    with pytest.raises(SafetensorsError, match=r"tensor w in .*model.safetensors has 16384 bytes"):
        SafetensorsFile(path)


def test_a_sharded_checkpoint_with_an_index_equals_one_file(checkpoint, tmp_path):
    config = mamba_config()
    tensors = list(mamba_tensors(config))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(json.dumps(config))
    weight_map = {}
    for part, chunk in enumerate((tensors[:7], tensors[7:])):
        name = f"model-0000{part + 1}-of-00002.safetensors"
        write_safetensors(sharded / name, iter(chunk))
        weight_map.update({tensor: name for tensor, _ in chunk})
    (sharded / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    whole, pieces = from_pretrained(checkpoint), from_pretrained(sharded)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(pieces), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tensors_land_where_the_converter_says(checkpoint):
    model = from_pretrained(checkpoint)
    block = model.backbone.blocks[1].mixer
    weights = dict(mamba_tensors(mamba_config()))
    prefix = "backbone.layers.1.mixer"
    np.testing.assert_array_equal(block.in_proj.kernel[...], weights[f"{prefix}.in_proj.weight"].T)
    np.testing.assert_array_equal(
        block.conv.kernel[...], weights[f"{prefix}.conv1d.weight"][:, 0, :].T
    )
    np.testing.assert_array_equal(block.log_decay_rate[...], weights[f"{prefix}.A_log"])
    assert model.head is None  # tied: the logits read the embedding
    assert model.pretrained.model_config["mixers"]["mamba"]["dt_rank"] == 1


def test_dtype_and_mesh_place_every_parameter(checkpoint):
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("tensor",))
    rules = (("embed", None), ("heads", "tensor"), ("vocab", "tensor"), ("mlp", "tensor"))
    model = from_pretrained(checkpoint, dtype=jnp.bfloat16, mesh=mesh, rules=rules)
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert leaf.dtype == jnp.bfloat16
        assert leaf.sharding.mesh == mesh


def test_save_refuses_to_replace_a_directory_unless_asked(checkpoint, tmp_path):
    model = from_pretrained(checkpoint)
    target = tmp_path / "exported"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(PretrainedError, match="exists; pass overwrite=True"):
        save_pretrained(model, target)
    assert (target / "notes.txt").read_text() == "mine"
    save_pretrained(model, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no staging left behind


def test_a_model_built_without_a_checkpoint_is_exported_with_its_config(checkpoint, tmp_path):
    from seqjax.models import create_model

    loaded = from_pretrained(checkpoint)
    model_config = loaded.pretrained.model_config
    built = create_model(model_config, vocab_size=VOCAB, rngs=nnx.Rngs(3))
    with pytest.raises(PretrainedError, match="needs model_type and model_config"):
        save_pretrained(built, tmp_path / "a")
    path = save_pretrained(built, tmp_path / "b", model_type="mamba", model_config=model_config)
    again = from_pretrained(path)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, VOCAB, (1, 9)))
    np.testing.assert_array_equal(np.asarray(built(tokens)[0]), np.asarray(again(tokens)[0]))


def _broken(directory: Path, problem: str) -> Path:
    config = mamba_config()
    tensors = dict(mamba_tensors(config))
    if problem == "unsupported type":
        config["model_type"] = "bert"
    elif problem == "unknown key":
        config["use_fancy_scan"] = True
    elif problem == "unrepresentable":
        config["use_bias"] = True
    elif problem == "missing tensor":
        del tensors["backbone.layers.1.mixer.D"]
    elif problem == "extra tensor":
        tensors["backbone.layers.1.mixer.surprise"] = np.zeros(3, np.float32)
    elif problem == "wrong shape":
        tensors["backbone.layers.0.mixer.x_proj.weight"] = np.zeros((5, 32), np.float32)
    return write_checkpoint(directory, config, iter(tensors.items()))


@pytest.mark.parametrize(
    "problem, message",
    [
        ("unsupported type", r"model_type 'bert' is not supported; supported: .*falcon_mamba"),
        ("unknown key", r"use_fancy_scan not understood by the mamba converter"),
        ("unrepresentable", r"use_bias=True is not supported for mamba \(seqjax computes False"),
        ("missing tensor", r"lacks 1 tensor\(s\) the config asks for: backbone.layers.1.mixer.D"),
        ("extra tensor", r"holds 1 tensor\(s\) the config has no place for: .*mixer.surprise"),
        (
            "wrong shape",
            r"tensor backbone.layers.0.mixer.x_proj.weight has shape \(5, 32\), which gives "
            r"\(32, 5\) for backbone.blocks.0.mixer.x_proj.kernel; the config asks for \(32, 9\)",
        ),
    ],
)
def test_bad_checkpoints_are_named(tmp_path, problem, message):
    with pytest.raises(PretrainedError, match=message):
        from_pretrained(_broken(tmp_path / "checkpoint", problem))


def test_paths_that_are_not_checkpoints_are_named(tmp_path):
    with pytest.raises(PretrainedError, match="is not a local directory; .* downloads nothing"):
        from_pretrained("state-spaces/mamba-130m-hf")
    with pytest.raises(PretrainedError, match="has no config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(mamba_config()))
    with pytest.raises(PretrainedError, match=r"has no \*.safetensors file"):
        from_pretrained(tmp_path)


LOAD_AND_MEASURE = """
import json, sys
import jax
from seqjax.interop import from_pretrained

def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

# jax, its CPU client and the converters are in the baseline, not in the load.
import seqjax.interop.huggingface
jax.numpy.zeros(1).block_until_ready()
before = status_kib("VmRSS")
model = from_pretrained(sys.argv[1])
jax.block_until_ready(jax.tree.leaves(model))
# VmHWM, the peak of this process image (ru_maxrss would carry the parent's across exec).
print(json.dumps({"before_kib": before, "peak_kib": status_kib("VmHWM")}))
"""


def test_loading_a_300_mb_checkpoint_holds_at_most_one_and_a_half_times_its_size(tmp_path):
    """The peak resident memory the load adds (the model on the CPU device included) is at
    most 1.5x the file: tensors are read one at a time and nothing is kept twice."""
    config = mamba_config(hidden=1024, layers=11, vocab=1024)
    directory = write_checkpoint(tmp_path / "large", config)
    size = (directory / "model.safetensors").stat().st_size
    assert size > 290e6
    script = textwrap.dedent(LOAD_AND_MEASURE)
    result = subprocess.run(
        [sys.executable, "-c", script, str(directory)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        # Only what finding Python and seqjax needs: no settings other tests leave behind.
        env={
            **{key: os.environ[key] for key in ("PATH", "HOME", "PYTHONPATH") if key in os.environ},
            "JAX_PLATFORMS": "cpu",
        },
    )
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    added = (measured["peak_kib"] - measured["before_kib"]) * 1024
    print(f"file {size / 1e6:.0f} MB, load added {added / 1e6:.0f} MB ({added / size:.2f}x)")
    assert added <= 1.5 * size, added / size
