"""The gated MLP of the residual blocks (GLU variants, Shazeer 2020)."""

import jax
from flax import nnx

from seqjax.layers.partitioning import EMBED, MLP, name_axes
from seqjax.typing import Array

ACTIVATIONS = {"silu": jax.nn.silu, "gelu": jax.nn.gelu, "relu": jax.nn.relu}


class GatedMLP(nnx.Module):
    """y = W_down (act(W_gate x) ⊙ W_up x); SwiGLU with ``activation="silu"``. x: [B, T, D]."""

    def __init__(self, d_model: int, hidden_size: int, *, activation: str = "silu", rngs: nnx.Rngs):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
            )
        self.activation = activation
        self.gate_and_up = nnx.Linear(d_model, 2 * hidden_size, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(hidden_size, d_model, use_bias=False, rngs=rngs)
        name_axes(self.gate_and_up.kernel, EMBED, MLP)
        name_axes(self.down.kernel, MLP, EMBED)

    def __call__(self, x: Array) -> Array:
        gate, up = jax.numpy.split(self.gate_and_up(x), 2, axis=-1)
        return self.down(ACTIVATIONS[self.activation](gate) * up)
