"""Heads: the inner width of a mixer as H heads of equal size, and back."""

from seqjax.typing import Array


def split_heads(x: Array, num_heads: int) -> Array:
    """[..., H·K] -> [..., H, K]."""
    return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def merge_heads(x: Array) -> Array:
    """[..., H, K] -> [..., H·K]."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])
