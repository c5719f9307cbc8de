"""Bidirectional token mixers: any mixer run forward and over each segment reversed, the two
merged (the bidirectional RNN of Schuster & Paliwal, 1997; the BiLSTM of Graves &
Schmidhuber, 2005; bidirectional Mamba in Vision Mamba, Zhu et al., 2024)::

    f = F(x)        b = R B(R x)        y = merge(f, b)

R reverses every packed segment within itself: position t of the segment [s, e) reads
position s + e - 1 - t. A reversed segment keeps its span, so B sees the same segment
starts as F and its recurrence starts at each segment's true end. R is its own inverse, so
the same gather puts B's outputs back in order. Merges: ``"concat"``, y = W [f; b] with
W [2D, D]; ``"sum"``, y = f + b; ``"gate"``, y = g ⊙ f + (1 - g) ⊙ b with
g = σ(W_g [f; b] + c). With shared weights B is F.

Padding is a boolean ``mask`` [B, T], true at real tokens. Every run of padding is a segment
of its own and a real token after padding starts one, so no real output reads padding in
either direction; padding inputs are never read (NaN there is harmless) and padding outputs
are zeros. Right-padded rows thus equal the examples run one by one.

The reverse pass needs the whole segment, so a bidirectional mixer has no state: it cannot
run step by step, and is refused a state.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_choice, check_mixer_inputs
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.typing import Array

MERGES = ("concat", "sum", "gate")
NO_STATE = (
    "a bidirectional mixer cannot run step by step (its reverse pass needs the whole segment)"
)


def check_mask(where: str, mask: Array, shape: tuple[int, int]) -> None:
    """Refuses a ``mask`` other than a boolean [B, T] of ``shape``; ``where`` starts the
    message."""
    if jnp.shape(mask) != tuple(shape) or jnp.result_type(mask) != jnp.bool_:
        raise ValueError(
            f"{where}mask must be boolean [B, T] = {tuple(shape)}, got "
            f"{jnp.result_type(mask)} of shape {jnp.shape(mask)}"
        )


def padding_segment_starts(segment_starts: Array | None, mask: Array) -> Array:
    """``segment_starts`` [B, T] (None: none) with a start wherever ``mask`` [B, T] changes
    (real tokens to padding or back) and at position 0, so that padding forms segments of its
    own."""
    changes = mask[:, 1:] != mask[:, :-1]
    starts = jnp.concatenate([jnp.ones_like(mask[:, :1]), changes], axis=1)
    return starts if segment_starts is None else segment_starts | starts


def reversal_index(segment_starts: Array) -> Array:
    """The position each position reads when every segment is reversed within itself:
    s + e - 1 - t for t in the segment [s, e). segment_starts [B, T] (position 0 always
    starts one) -> int32 [B, T]."""
    length = segment_starts.shape[1]
    positions = jnp.arange(length, dtype=jnp.int32)
    starts = jnp.asarray(segment_starts).at[:, 0].set(True)
    start = jnp.maximum.accumulate(jnp.where(starts, positions, 0), axis=1)
    next_start = jnp.where(starts[:, 1:], positions[1:], length)
    end = jnp.minimum.accumulate(next_start[:, ::-1], axis=1)[:, ::-1]
    end = jnp.concatenate([end, jnp.full_like(end[:, :1], length)], axis=1)
    return start + end - 1 - positions


def reverse_segments(x: Array, index: Array | None) -> Array:
    """x [B, T, ...] with every segment reversed by ``reversal_index`` (None: whole rows)."""
    if index is None:
        return x[:, ::-1]
    return jnp.take_along_axis(x, index.reshape(*index.shape, *(1,) * (x.ndim - 2)), axis=1)


class Bidirectional(nnx.Module):
    """Mixer ``name`` run forward (``forward``) and over each segment reversed
    (``backward``; None shares ``forward``), merged by ``merge``; see the module docstring.
    x: [B, T, D]. ``seqjax.layers.create(name, ..., bidirectional=True)`` builds one."""

    def __init__(
        self,
        name: str,
        forward: nnx.Module,
        backward: nnx.Module | None = None,
        *,
        merge: str = "concat",
        rngs: nnx.Rngs,
    ):
        check_choice("merge", merge, MERGES)
        self.name = name
        self.d_model = d_model = forward.d_model
        self.merge = merge
        self.forward = forward
        self.backward = backward
        if merge == "concat":
            self.projection = linear(2 * d_model, d_model, HEADS, EMBED, use_bias=False, rngs=rngs)
        elif merge == "gate":
            self.gate = linear(2 * d_model, d_model, HEADS, EMBED, rngs=rngs)

    @property
    def shared_weights(self) -> bool:
        return self.backward is None

    def __call__(
        self,
        x: Array,
        *,
        state: None = None,
        segment_starts: Array | None = None,
        mask: Array | None = None,
    ) -> tuple[Array, None]:
        """(y [B, T, D] in x's dtype, None). ``mask`` [B, T] boolean, true at real tokens."""
        where = f"mixer {self.name!r} (bidirectional)"
        if state is not None:
            raise ValueError(f"{where}: got a state; {NO_STATE}")
        check_mixer_inputs(self.name, x, segment_starts, self.d_model)
        batch, length, _ = x.shape
        starts = segment_starts
        if mask is not None:
            check_mask(f"{where}: ", mask, (batch, length))
            starts = padding_segment_starts(starts, mask)
            x = jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))
        index = None if starts is None else reversal_index(starts)
        reversed_x = reverse_segments(x, index)
        if self.backward is None:
            both_starts = None if starts is None else jnp.concatenate([starts, starts])
            both, _ = self.forward(jnp.concatenate([x, reversed_x]), segment_starts=both_starts)
            forward, backward = both[:batch], both[batch:]
        else:
            forward, _ = self.forward(x, segment_starts=starts)
            backward, _ = self.backward(reversed_x, segment_starts=starts)
        backward = reverse_segments(backward, index)
        y = self._merge(forward, backward)
        if mask is not None:
            y = jnp.where(mask[..., None], y, jnp.zeros((), y.dtype))
        return y.astype(x.dtype), None

    def _merge(self, forward: Array, backward: Array) -> Array:
        if self.merge == "sum":
            return forward + backward
        both = jnp.concatenate([forward, backward], axis=-1)
        if self.merge == "concat":
            return self.projection(both)
        gate = jax.nn.sigmoid(self.gate(both))
        return gate * forward + (1 - gate) * backward

    def init_state(self, batch_size: int) -> None:
        raise ValueError(f"mixer {self.name!r} (bidirectional): {NO_STATE}")
