"""An RWKV-7 checkpoint in the official ``.pth`` format, loaded without torch, against the
``rwkv`` package's own model of it: a tiny model with random weights (2 layers of width 64,
two heads of 32, four distinct low ranks, layer 0's unused v0, v1, v2 saved as RWKV-LM does),
logits of its sequence and its token-by-token forms at two lengths, 16 greedy tokens,
bfloat16 storages, and what the restricted unpickler and the name checks refuse."""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seqjax.interop.pretrained import PretrainedError
from seqjax.interop.rwkv7 import load_rwkv7, read_pth
from seqjax.models import generate
from tests.tolerances import (
    PRETRAINED_BFLOAT16_RELATIVE,
    PRETRAINED_FLOAT32_RELATIVE,
    relative_error,
)

torch = pytest.importorskip("torch", reason="the rwkv package's model is the reference")
# Read when rwkv.model is imported: the RWKV-7 model, TorchScript, no CUDA kernel.
os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
rwkv_model = pytest.importorskip("rwkv.model", reason="its RWKV-7 model is the reference")

LAYERS, WIDTH, HEAD_SIZE, VOCAB, HIDDEN = 2, 64, 32, 64, 256
RANKS = dict(w=8, a=12, v=4, g=16)
LENGTHS = (5, 70)  # the second crosses the chunks of the chunked delta rule (64)
NEW_TOKENS = 16


def official_weights(layers: int = LAYERS, seed: int = 0) -> dict[str, "torch.Tensor"]:
    """A random RWKV-7 in RWKV-LM's names and shapes; no weight is zero or one, so each one
    counts, and the mixes lie in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    heads = WIDTH // HEAD_SIZE

    def normal(*shape, scale=1.0, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=generator)

    def norm(name):
        return {
            f"{name}.weight": normal(WIDTH, scale=0.1, mean=1.0),
            f"{name}.bias": normal(WIDTH, scale=0.1),
        }

    weights = {"emb.weight": normal(VOCAB, WIDTH), **norm("blocks.0.ln0")}
    for layer in range(layers):
        block, att, ffn = f"blocks.{layer}", f"blocks.{layer}.att", f"blocks.{layer}.ffn"
        weights |= norm(f"{block}.ln1") | norm(f"{block}.ln2")
        for mix in "rwkvag":
            weights[f"{att}.x_{mix}"] = torch.rand(1, 1, WIDTH, generator=generator)
        for name, rank in RANKS.items():
            if name != "g":
                weights[f"{att}.{name}0"] = normal(1, 1, WIDTH)
            weights[f"{att}.{name}1"] = normal(WIDTH, rank, scale=WIDTH**-0.5)
            weights[f"{att}.{name}2"] = normal(rank, WIDTH, scale=rank**-0.5)
        weights[f"{att}.k_k"] = normal(1, 1, WIDTH, scale=0.2, mean=0.7)
        weights[f"{att}.k_a"] = normal(1, 1, WIDTH, scale=0.2, mean=1.0)
        weights[f"{att}.r_k"] = normal(heads, HEAD_SIZE, scale=0.3)
        for projection in ("receptance", "key", "value", "output"):
            weights[f"{att}.{projection}.weight"] = normal(WIDTH, WIDTH, scale=WIDTH**-0.5)
        weights |= norm(f"{att}.ln_x")
        weights[f"{ffn}.x_k"] = torch.rand(1, 1, WIDTH, generator=generator)
        weights[f"{ffn}.key.weight"] = normal(HIDDEN, WIDTH, scale=WIDTH**-0.5)
        weights[f"{ffn}.value.weight"] = normal(WIDTH, HIDDEN, scale=HIDDEN**-0.5)
    weights |= norm("ln_out")
    weights["head.weight"] = normal(VOCAB, WIDTH, scale=WIDTH**-0.5)
    return weights


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("rwkv7") / "tiny.pth"
    torch.save(official_weights(), path)
    return path


@pytest.fixture(scope="module")
def reference(checkpoint):
    return rwkv_model.RWKV(model=str(checkpoint.with_suffix("")), strategy="cpu fp32")


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_rwkv7(checkpoint)


def tokens(length: int) -> np.ndarray:
    return np.random.default_rng(length).integers(0, VOCAB, (2, length))


def reference_logits(reference, rows: np.ndarray) -> np.ndarray:
    """The rwkv package's sequence form, one row at a time: [B, T, V]."""
    return np.stack(
        [reference.forward(row.tolist(), None, full_output=True)[0].float().numpy() for row in rows]
    )


def stepped_reference_logits(reference, row: np.ndarray) -> np.ndarray:
    """The rwkv package's token-by-token form with its state: [T, V]."""
    state, logits = None, []
    for token in row.tolist():
        step, state = reference.forward(token, state)
        logits.append(step.numpy())
    return np.stack(logits)


@nnx.jit
def _logits(model, rows):
    return model(rows)[0]


def seqjax_logits(model, rows: np.ndarray) -> np.ndarray:
    return np.asarray(_logits(model, jnp.asarray(rows)))


@pytest.mark.parametrize("length", LENGTHS)
def test_logits_equal_the_rwkv_packages_sequence_form(model, reference, length):
    rows = tokens(length)
    error = relative_error(seqjax_logits(model, rows), reference_logits(reference, rows))
    assert error < PRETRAINED_FLOAT32_RELATIVE, error


def test_logits_equal_the_rwkv_packages_token_by_token_form(model, reference):
    rows = tokens(LENGTHS[0])
    expected = np.stack([stepped_reference_logits(reference, row) for row in rows])
    error = relative_error(seqjax_logits(model, rows), expected)
    assert error < PRETRAINED_FLOAT32_RELATIVE, error


def test_greedy_tokens_equal_the_rwkv_packages(model, reference):
    prompt = tokens(6)[0]
    logits, state = reference.forward(prompt.tolist(), None)
    expected = prompt.tolist()
    for _ in range(NEW_TOKENS):
        expected.append(int(np.argmax(logits.numpy())))
        logits, state = reference.forward(expected[-1], state)
    produced = np.asarray(generate(model, prompt[None], max_new_tokens=NEW_TOKENS))[0]
    np.testing.assert_array_equal(produced, expected)


def test_bfloat16_storages_load_as_they_are(tmp_path):
    """Published RWKV-7 files are bfloat16: the parameters keep the stored bits, and the
    logits are within PRETRAINED_BFLOAT16_RELATIVE of the rwkv package's in bfloat16."""
    weights = {name: tensor.bfloat16() for name, tensor in official_weights().items()}
    torch.save(weights, tmp_path / "half.pth")
    half = load_rwkv7(tmp_path / "half.pth")
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(half))
    stored = weights["head.weight"].float().numpy().T
    np.testing.assert_array_equal(np.asarray(half.head.kernel[...], np.float32), stored)
    reference_half = rwkv_model.RWKV(model=str(tmp_path / "half"), strategy="cpu bf16")
    rows = tokens(LENGTHS[-1])
    error = relative_error(seqjax_logits(half, rows), reference_logits(reference_half, rows))
    assert error < PRETRAINED_BFLOAT16_RELATIVE, error


def test_a_one_layer_model_equals_the_rwkv_package(tmp_path):
    torch.save(official_weights(layers=1), tmp_path / "one.pth")
    reference = rwkv_model.RWKV(model=str(tmp_path / "one"), strategy="cpu fp32")
    rows = tokens(LENGTHS[-1])
    error = relative_error(
        seqjax_logits(load_rwkv7(tmp_path / "one.pth"), rows), reference_logits(reference, rows)
    )
    assert error < PRETRAINED_FLOAT32_RELATIVE, error


def test_a_stride_and_an_offset_are_read_as_torch_reads_them(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.save({"transposed": base.t(), "offset": base[1:, 2:]}, tmp_path / "views.pth")
    with read_pth(tmp_path / "views.pth") as tensors:
        np.testing.assert_array_equal(tensors["transposed"].read(), base.t().numpy())
        np.testing.assert_array_equal(tensors["offset"].read(), base[1:, 2:].numpy())


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo this must not run",))


@pytest.mark.parametrize(
    "intruder, global_name",
    [(types.SimpleNamespace(n_layer=2), "types.SimpleNamespace"), (RunsACommand(), "system")],
)
def test_the_unpickler_refuses_every_other_global_by_name(tmp_path, intruder, global_name):
    torch.save({"emb.weight": torch.zeros(2, 2), "args": intruder}, tmp_path / "bad.pth")
    with pytest.raises(PretrainedError, match=rf"pickle global \S*{global_name}.*refused"):
        load_rwkv7(tmp_path / "bad.pth")


# The shapes are checked as the model is built, which needs the carry from two layers on.
@pytest.mark.parametrize(
    "layers, change, message",
    [
        (2, lambda w: w.pop("blocks.1.att.v0"), r"lacks blocks\.1\.att\.v0"),
        (
            2,
            lambda w: w.update({"blocks.0.ffn.s_emb.weight": torch.ones(2)}),
            r"no place for: blocks\.0\.ffn\.s_emb\.weight",
        ),
        (
            1,
            lambda w: w.update({"blocks.0.att.x_g": torch.ones(1, 1, WIDTH + 1)}),
            r"att\.x_g of shape .*\(1, 1, 65\) do not make backbone\.blocks\.0\.mixer\.mix",
        ),
    ],
)
def test_missing_extra_and_misshapen_tensors_are_refused_by_name(tmp_path, layers, change, message):
    weights = official_weights(layers)
    change(weights)
    torch.save(weights, tmp_path / "changed.pth")
    with pytest.raises(PretrainedError, match=message):
        load_rwkv7(tmp_path / "changed.pth")
