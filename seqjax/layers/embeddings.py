"""Input embeddings: token ids to vectors, or real-valued features to vectors."""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.partitioning import EMBED, VOCAB, name_axes
from seqjax.typing import Array


def check_token_ids(tokens: Array, vocab_size: int, name: str = "tokens") -> None:
    """Raises a ValueError if concrete ``tokens`` hold ids outside [0, vocab_size).

    Traced values cannot be inspected; callers check the data before it enters jit.
    """
    if isinstance(tokens, jax.core.Tracer):
        return
    if not jnp.issubdtype(jnp.asarray(tokens).dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {tokens.dtype}")
    low, high = int(jnp.min(tokens)), int(jnp.max(tokens))
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{name} must be token ids in [0, {vocab_size}), got values from {low} to {high}"
        )


class TokenEmbedding(nnx.Module):
    """A lookup table [vocab_size, D]; ``attend`` reuses it as a tied output layer."""

    def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs):
        self.vocab_size = vocab_size
        self.embedding = nnx.Param(
            nnx.initializers.normal(stddev=1.0)(rngs.params(), (vocab_size, d_model))
        )
        name_axes(self.embedding, VOCAB, EMBED)

    def __call__(self, tokens: Array) -> Array:
        """tokens: int [B, T] -> [B, T, D]."""
        check_token_ids(tokens, self.vocab_size)
        return jnp.take(self.embedding[...], tokens, axis=0)

    def attend(self, x: Array) -> Array:
        """x: [B, T, D] -> logits [B, T, vocab_size]."""
        return x @ self.embedding[...].T


class InputProjection(nnx.Module):
    """Real-valued features [B, T, F] -> [B, T, D] by a linear map."""

    def __init__(self, input_dim: int, d_model: int, *, rngs: nnx.Rngs):
        self.input_dim = input_dim
        self.projection = nnx.Linear(input_dim, d_model, rngs=rngs)
        name_axes(self.projection.kernel, None, EMBED)
        name_axes(self.projection.bias, EMBED)

    def __call__(self, features: Array) -> Array:
        if features.shape[-1] != self.input_dim:
            raise ValueError(
                f"inputs must have {self.input_dim} features in the last axis, "
                f"got shape {features.shape}"
            )
        return self.projection(features)
