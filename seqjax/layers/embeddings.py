"""Input embeddings: token ids to vectors, or real-valued features to vectors."""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_size
from seqjax.layers.partitioning import EMBED, VOCAB, linear, param
from seqjax.typing import Array


def check_token_ids(tokens: Array, vocab_size: int, name: str = "tokens") -> None:
    """Raises a ValueError unless ``tokens`` are integer ids [B, T] (B, T >= 1) in
    [0, vocab_size).

    Traced values cannot be inspected, only their dtype and shape; callers check the data
    before it enters jit.
    """
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {jnp.result_type(tokens)}")
    if jnp.ndim(tokens) != 2 or 0 in jnp.shape(tokens):
        raise ValueError(
            f"{name} must be [B, T] with at least one sequence and one position, got shape "
            f"{jnp.shape(tokens)}"
        )
    if isinstance(tokens, jax.core.Tracer):
        return
    low, high = int(jnp.min(tokens)), int(jnp.max(tokens))
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"{name} must be token ids in [0, {vocab_size}), got values from {low} to {high}"
        )


class TokenEmbedding(nnx.Module):
    """A lookup table [vocab_size, D]; ``attend`` reuses it as a tied output layer."""

    def __init__(self, vocab_size: int, d_model: int, *, rngs: nnx.Rngs):
        check_size("vocab_size", vocab_size)
        check_size("d_model", d_model)
        self.vocab_size = vocab_size
        table = nnx.initializers.normal(stddev=1.0)(rngs.params(), (vocab_size, d_model))
        self.embedding = param(table, VOCAB, EMBED)

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
        check_size("input_dim", input_dim)
        check_size("d_model", d_model)
        self.input_dim = input_dim
        self.projection = linear(input_dim, d_model, None, EMBED, rngs=rngs)

    def __call__(self, features: Array) -> Array:
        """features: floating point [B, T, F] -> [B, T, D]."""
        if not jnp.issubdtype(jnp.result_type(features), jnp.floating):
            raise ValueError(f"inputs must be floating point, got {jnp.result_type(features)}")
        if jnp.ndim(features) != 3 or jnp.shape(features)[-1] != self.input_dim:
            raise ValueError(
                f"inputs must be [B, T, F] with F = {self.input_dim} features, "
                f"got shape {jnp.shape(features)}"
            )
        return self.projection(features)
