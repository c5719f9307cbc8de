"""Shared checks of a converter against the transformers model itself: a tiny model built
from a config with random weights (no hub access), saved, loaded into seqjax, compared on
logits (float32 and bfloat16) and on greedy generation, saved back and loaded by
transformers again."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.models import from_pretrained, generate, save_pretrained
from tests.tolerances import (
    PRETRAINED_BFLOAT16_RELATIVE,
    PRETRAINED_FLOAT32_RELATIVE,
    relative_error,
)

torch = pytest.importorskip("torch", reason="transformers' models are the reference")
transformers = pytest.importorskip("transformers", reason="its models are the reference")

# Two lengths: one short, one longer than the chunk sizes the ops use by default (64).
LENGTHS = (5, 70)
NEW_TOKENS = 16


def randomized(model, seed: int = 0, scale: float = 0.5):
    """Every floating parameter and persistent buffer of a torch model redrawn (weights that
    initialize to zeros or ones would hide a mapping error), so the test sees each one."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
                tensor.copy_(tensor.float() + scale * noise / max(1, tensor.shape[-1]) ** 0.5)
    return model


def causal_lm_class(config):
    """transformers' own causal LM class of a config (MambaConfig -> MambaForCausalLM), named
    rather than looked up in the Auto mapping, which flash-linear-attention's import rewrites
    with its own models of the same model_type."""
    return getattr(transformers, type(config).__name__.removesuffix("Config") + "ForCausalLM")


def reference_model(config, directory: Path, *, seed: int = 0, randomize=randomized):
    """A transformers causal LM of ``config`` with random weights, saved to ``directory``."""
    torch.manual_seed(seed)
    model = causal_lm_class(config)(config).float().eval()
    model = randomize(model, seed)
    model.save_pretrained(directory)
    return model


def token_batch(vocab_size: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + length).integers(0, vocab_size, (2, length))


def reference_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()


def seqjax_logits(model, tokens: np.ndarray) -> np.ndarray:
    logits, _ = model(jnp.asarray(tokens))
    return np.asarray(logits)


def check_logits(reference, directory: Path, vocab_size: int) -> None:
    """float32 logits within PRETRAINED_FLOAT32_RELATIVE at both lengths, bfloat16 weights
    (both sides) within PRETRAINED_BFLOAT16_RELATIVE."""
    model = from_pretrained(directory)
    for length in LENGTHS:
        tokens = token_batch(vocab_size, length)
        error = relative_error(seqjax_logits(model, tokens), reference_logits(reference, tokens))
        assert error < PRETRAINED_FLOAT32_RELATIVE, (length, error)
    half = from_pretrained(directory, dtype=jnp.bfloat16)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(half))
    reference_half = type(reference).from_pretrained(directory, dtype=torch.bfloat16).eval()
    tokens = token_batch(vocab_size, LENGTHS[-1])
    error = relative_error(seqjax_logits(half, tokens), reference_logits(reference_half, tokens))
    assert error < PRETRAINED_BFLOAT16_RELATIVE, error


def check_generation(reference, directory: Path, vocab_size: int) -> None:
    """16 greedy tokens after a prompt equal transformers' ``generate``."""
    model = from_pretrained(directory)
    prompt = token_batch(vocab_size, 6)
    # No end token: transformers would stop (or, told a minimum, never pick it) where a
    # greedy loop picks every argmax.
    settings = transformers.GenerationConfig(
        max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    with torch.no_grad():
        expected = reference.generate(torch.as_tensor(prompt), generation_config=settings)
    expected = expected.numpy()
    produced = np.asarray(generate(model, prompt, max_new_tokens=NEW_TOKENS))
    np.testing.assert_array_equal(produced, expected)


def check_round_trip(reference, directory: Path, tmp_path: Path, vocab_size: int) -> None:
    """save_pretrained -> transformers loads it with the same logits; load -> save -> load is
    bit-identical (every tensor and the config)."""
    model = from_pretrained(directory)
    exported = save_pretrained(model, tmp_path / "exported")
    reloaded = type(reference).from_pretrained(exported).float().eval()
    tokens = token_batch(vocab_size, LENGTHS[-1])
    np.testing.assert_array_equal(
        reference_logits(reloaded, tokens), reference_logits(reference, tokens)
    )
    again = from_pretrained(exported)
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    second = save_pretrained(again, tmp_path / "exported_again")
    assert json.loads((second / "config.json").read_text()) == json.loads(
        (exported / "config.json").read_text()
    )
    assert (second / "model.safetensors").read_bytes() == (
        exported / "model.safetensors"
    ).read_bytes()
