"""The short causal depthwise convolution in front of many mixers' recurrences (Mamba,
Mamba-2, Hawk, mLSTM, sLSTM, DeltaNet): ``seqjax.ops.conv.causal_conv1d`` with its taps.

    y_t = b + Σ_{j<W} w_j ⊙ x_{t-W+1+j}

Taps start uniform in ±W^-1/2, as PyTorch's Conv1d (fan-in W) initializes them. The
channels are the mixer's inner width (logical axis "heads" unless the mixer says otherwise),
the taps are never split. With the mixer's ``sequence_split`` each shard of the sequence
reads the last W - 1 inputs of the shard before. State: the last W - 1 inputs [B, W-1, C].
"""

import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_choice, check_size
from seqjax.layers.initializers import symmetric_uniform
from seqjax.layers.partitioning import HEADS, param
from seqjax.ops.conv import causal_conv1d
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array

BIASES = ("zeros", "uniform")


class ShortConv(nnx.Module):
    """Causal depthwise conv of width W over C channels: x [B, T, C] -> y [B, T, C].

    ``bias``: "zeros", "uniform" (initialized like the taps, as in the Mamba code) or None
    (no bias); ``logical_axis`` names the channels; ``sequence_split`` that of
    ``causal_conv1d``.
    """

    def __init__(
        self,
        width: int,
        channels: int,
        *,
        rngs: nnx.Rngs,
        bias: str | None = "zeros",
        logical_axis: str | None = HEADS,
        sequence_split: SequenceSplit | None = None,
    ):
        check_size("conv_width", width)
        if bias is not None:
            check_choice("bias", bias, BIASES)
        self.width, self.channels = width, channels
        self.sequence_split = sequence_split
        taps = symmetric_uniform(width**-0.5)
        self.kernel = param(taps(rngs.params(), (width, channels)), None, logical_axis)
        bias_init = taps if bias == "uniform" else nnx.initializers.zeros
        self.bias = (
            None if bias is None else param(bias_init(rngs.params(), (channels,)), logical_axis)
        )

    def init_state(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.width - 1, self.channels), jnp.float32)

    def __call__(
        self, x: Array, state: Array, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        return causal_conv1d(
            x,
            self.kernel[...],
            bias=None if self.bias is None else self.bias[...],
            initial_state=state,
            segment_starts=segment_starts,
            sequence_split=self.sequence_split,
        )
