"""Causal depthwise convolution over time with a carried state: the short convolution of
Mamba, Griffin/Hawk and many linear-attention layers.

    y_t = bias + Σ_{j=0}^{W-1} kernel_j ⊙ x_{t-W+1+j}

so ``kernel[W - 1]`` weighs the current input and ``kernel[0]`` the input W - 1 steps back.
The state is the last W - 1 inputs [B, W-1, C] (zeros at the start), so a sequence fed in
pieces with the state passed between them equals the whole. With packed sequences, inputs
from before the start of the current segment count as zero, and the final state keeps only
inputs of the last segment.

The convolution is a sum of W shifted, scaled copies of the input (W is small: 2 to 4), in
float32 whatever the input dtype; jax differentiates it directly.
"""

import jax.numpy as jnp

from seqjax.typing import Array


def causal_conv1d(
    x: Array,
    kernel: Array,
    *,
    bias: Array | None = None,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
) -> tuple[Array, Array]:
    """Causal depthwise convolution over axis 1; returns ``(y, final_state)``.

    Args:
      x: inputs [B, T, C].
      kernel: per-channel taps [W, C]; ``kernel[W - 1]`` multiplies the current input.
      bias: [C] added to every output, or None.
      initial_state: the W - 1 inputs before x [B, W-1, C], oldest first (zeros if None).
      segment_starts: bool [B, T]; inputs before a true position are not seen from it on.

    Returns:
      y [B, T, C] in x's dtype, and the final state [B, W-1, C] in float32: the last W - 1
      inputs (including those of the initial state when T < W - 1), with inputs from before
      the last segment start set to zero.
    """
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    if x.ndim != 3:
        raise ValueError(f"x must be [B, T, C], got shape {x.shape}")
    batch, length, channels = x.shape
    if kernel.ndim != 2 or kernel.shape[1] != channels or kernel.shape[0] < 1:
        raise ValueError(f"kernel must be [W, C] with C = {channels}, got shape {kernel.shape}")
    width = kernel.shape[0]
    state_shape = (batch, width - 1, channels)
    if initial_state is None:
        initial_state = jnp.zeros(state_shape, jnp.float32)
    elif initial_state.shape != state_shape:
        raise ValueError(
            f"initial_state must be [B, W-1, C] = {state_shape}, got {initial_state.shape}"
        )
    if bias is not None and jnp.shape(bias) != (channels,):
        raise ValueError(f"bias must be [C] = {(channels,)}, got shape {jnp.shape(bias)}")

    # The state's inputs followed by the new ones: [B, W-1+T, C].
    padded = jnp.concatenate([initial_state.astype(jnp.float32), x.astype(jnp.float32)], axis=1)
    if segment_starts is not None:
        if segment_starts.shape != (batch, length):
            raise ValueError(
                f"segment_starts must be [B, T] = {(batch, length)}, got {segment_starts.shape}"
            )
        # Segment ids over the padded axis: the state's inputs belong to segment 0, and each
        # start opens a new segment. An input reaches an output only within one segment.
        ids = jnp.cumsum(segment_starts.astype(jnp.int32), axis=1)
        padded_ids = jnp.concatenate([jnp.zeros((batch, width - 1), jnp.int32), ids], axis=1)
    kernel = kernel.astype(jnp.float32)

    y = jnp.zeros((batch, length, channels), jnp.float32)
    for j in range(width):
        window = padded[:, j : j + length]
        if segment_starts is not None:
            window = jnp.where((padded_ids[:, j : j + length] == ids)[..., None], window, 0)
        y = y + kernel[j] * window
    if bias is not None:
        y = y + jnp.asarray(bias, jnp.float32)

    final_state = padded[:, length:]
    if segment_starts is not None:
        same_segment = padded_ids[:, length:] == ids[:, -1:]
        final_state = jnp.where(same_segment[..., None], final_state, 0)
    return y.astype(x.dtype), final_state
