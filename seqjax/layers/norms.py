"""Normalization layers, computed in float32 and returned in the input dtype.

A norm's learned vectors [D] have the logical axis of the width they normalize
(partitioning.py): ``"embed"`` for the residual stream, ``"heads"`` for a mixer's inner
width, None for a head's own features (a scale shared by the heads).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_choice, check_number, check_size
from seqjax.layers.partitioning import EMBED, param
from seqjax.typing import Array


def rms_normalize(x: Array, scale: Array, epsilon: float) -> Array:
    """x / sqrt(mean(x²) + ε) ⊙ scale over the last axis (Zhang & Sennrich, 2019)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + epsilon)
    return (normed * scale).astype(x.dtype)


def layer_normalize(x: Array, scale: Array, bias: Array, epsilon: float) -> Array:
    """(x - mean) / sqrt(var + ε) ⊙ scale + bias over the last axis (Ba et al., 2016)."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    variance = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(variance + epsilon)
    return (normed * scale + bias).astype(x.dtype)


class RMSNorm(nnx.Module):
    """Root-mean-square norm with a learned scale, over the last axis [..., D].

    ``scale_offset=1`` stores the scale as its difference from 1 (x̂ ⊙ (1 + w), as Gemma's
    norms do), so a saved ``w`` keeps its bits.
    """

    def __init__(
        self,
        dim: int,
        *,
        logical_axis: str | None,
        epsilon: float = 1e-6,
        scale_offset: float = 0.0,
    ):
        check_size("dim", dim)
        check_number("epsilon", epsilon)
        self.scale = param(jnp.full((dim,), 1.0 - scale_offset, jnp.float32), logical_axis)
        self.epsilon, self.scale_offset = epsilon, scale_offset

    def __call__(self, x: Array) -> Array:
        scale = self.scale[...].astype(jnp.float32) + self.scale_offset
        return rms_normalize(x, scale, self.epsilon)


class LayerNorm(nnx.Module):
    """Layer norm with a learned scale and bias, over the last axis [..., D]."""

    def __init__(self, dim: int, *, logical_axis: str | None, epsilon: float = 1e-5):
        check_size("dim", dim)
        check_number("epsilon", epsilon)
        self.scale = param(jnp.ones((dim,), jnp.float32), logical_axis)
        self.bias = param(jnp.zeros((dim,), jnp.float32), logical_axis)
        self.epsilon = epsilon

    def __call__(self, x: Array) -> Array:
        return layer_normalize(x, self.scale[...], self.bias[...], self.epsilon)


# name -> (class, options): "rms_plus_one" is Gemma's x̂ ⊙ (1 + w).
NORMS = {
    "rms": (RMSNorm, {}),
    "rms_plus_one": (RMSNorm, {"scale_offset": 1.0}),
    "layer": (LayerNorm, {}),
}


def create_norm(kind: str, dim: int, *, epsilon: float | None = None) -> nnx.Module:
    """A norm of the residual stream [..., D] by name (a key of NORMS); ``epsilon`` None
    keeps the norm's default (1e-6 for RMS, 1e-5 for layer norm)."""
    check_choice("norm", kind, NORMS)
    cls, options = NORMS[kind]
    if epsilon is not None:
        options = {**options, "epsilon": epsilon}
    return cls(dim, logical_axis=EMBED, **options)
