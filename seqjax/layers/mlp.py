"""The gated MLP of the residual blocks (GLU variants, Shazeer 2020): SwiGLU with "silu",
GeGLU with "gelu" (exact, erf) or "gelu_tanh" (the tanh approximation Gemma uses)."""

import functools

import jax
from flax import nnx

from seqjax.layers.checks import check_choice, check_size
from seqjax.layers.partitioning import EMBED, MLP, linear
from seqjax.typing import Array

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
}


class GatedMLP(nnx.Module):
    """y = W_down (act(W_gate x) ⊙ W_up x); SwiGLU with ``activation="silu"``. x: [B, T, D]."""

    def __init__(
        self,
        d_model: int,
        hidden_size: int,
        *,
        activation: str = "silu",
        use_bias: bool = False,
        rngs: nnx.Rngs,
    ):
        check_size("d_model", d_model)
        check_size("hidden_size", hidden_size)
        check_choice("activation", activation, ACTIVATIONS)
        self.activation = activation
        self.gate_and_up = linear(
            d_model, 2 * hidden_size, EMBED, MLP, use_bias=use_bias, rngs=rngs
        )
        self.down = linear(hidden_size, d_model, MLP, EMBED, use_bias=use_bias, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        gate, up = jax.numpy.split(self.gate_and_up(x), 2, axis=-1)
        return self.down(ACTIVATIONS[self.activation](gate) * up)
