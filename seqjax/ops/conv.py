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

from seqjax.ops import checks, sequence_parallel
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array


def causal_conv1d(
    x: Array,
    kernel: Array,
    *,
    bias: Array | None = None,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    sequence_split: SequenceSplit | None = None,
) -> tuple[Array, Array]:
    """Causal depthwise convolution over axis 1; returns ``(y, final_state)``.

    Args:
      x: inputs [B, T, C].
      kernel: per-channel taps [W, C]; ``kernel[W - 1]`` multiplies the current input.
      bias: [C] added to every output, or None.
      initial_state: the W - 1 inputs before x [B, W-1, C], oldest first (zeros if None).
      segment_starts: bool [B, T]; inputs before a true position are not seen from it on.
      sequence_split: run sequence-parallel over this mesh axis (seqjax.ops.sequence_parallel);
        each shard needs at least W - 1 steps.

    All of x, kernel, bias and initial_state floating point (seqjax.ops.checks).

    Returns:
      y [B, T, C] in x's dtype, and the final state [B, W-1, C] in float32: the last W - 1
      inputs (including those of the initial state when T < W - 1), with inputs from before
      the last segment start set to zero.
    """
    op = "causal_conv1d"
    for name, array in (
        ("x", x),
        ("kernel", kernel),
        ("bias", bias),
        ("initial_state", initial_state),
    ):
        checks.floating(op, name, array)
    x, kernel = jnp.asarray(x), jnp.asarray(kernel)
    if x.ndim != 3:
        raise ValueError(f"{op}: x must be [B, T, C], got shape {x.shape}")
    checks.nonempty(op, "x", x)
    batch, length, channels = x.shape
    if kernel.ndim != 2 or kernel.shape[1] != channels or kernel.shape[0] < 1:
        raise ValueError(
            f"{op}: kernel must be [W, C] with C = {channels}, got shape {kernel.shape}"
        )
    width = kernel.shape[0]
    state_shape = (batch, width - 1, channels)
    if initial_state is None:
        initial_state = jnp.zeros(state_shape, jnp.float32)
    checks.shape(op, "initial_state", initial_state, state_shape, "[B, W-1, C]")
    checks.shape(op, "bias", bias, (channels,), "[C]")
    segment_starts = checks.segment_starts(op, segment_starts, batch, length)
    if (split := sequence_parallel.active_split(op, sequence_split)) is not None:

        def local(x, starts, kernel, state):
            starts = None if segment_starts is None else starts
            return causal_conv1d(x, kernel, initial_state=state, segment_starts=starts)

        starts = jnp.zeros((batch, length), bool) if segment_starts is None else segment_starts
        y, final_state = sequence_parallel.split_causal_conv(
            local, split, x.astype(jnp.float32), starts, kernel, initial_state.astype(jnp.float32)
        )
        if bias is not None:
            y = y + jnp.asarray(bias, jnp.float32)
        return y.astype(x.dtype), final_state

    # The state's inputs followed by the new ones: [B, W-1+T, C].
    padded = jnp.concatenate([initial_state.astype(jnp.float32), x.astype(jnp.float32)], axis=1)
    if segment_starts is not None:
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
