"""RetNet: multi-scale retention, a fixed decay per head with rotary relative positions.

"Retentive Network: A Successor to Transformer for Large Language Models" (Sun et al.,
2023). Per head h with its fixed decay γ_h = 1 - 2^(-5-h) and q̃_t, k̃_t the query and key
rotated by the angle t θ (the paper's e^{i t θ}, here rotary positions):

    S_t = γ_h S_{t-1} + k̃_t v_tᵀ,    o_t = S_tᵀ q̃_t / √K

that is ``gated_linear_attention(q̃, k̃ / √K, v, log_decay=log γ_h)`` with a scalar decay per
head, constant over time. The layer: q, k [H, K] and v [H, V] (V = expand_v · K, the paper's
value factor 2) from x; retention; a group norm per head; ⊙ swish(W_g x); output projection:

    y = W_o (swish(W_g x) ⊙ GroupNorm(o))

Rotary positions count tokens since the start of the current segment; the next position is
carried in the state, so a sequence fed in pieces (or token by token) rotates every token by
the same angle as the whole. The paper's parallel form also rescales each row of its decay
matrix; a scale per row and head cancels in the group norm (up to its ε), so it is omitted.

State: {"retention": S [B, H, K, V], "next_position": [B] int32}.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_divides, check_sizes
from seqjax.layers.heads import merge_heads, split_heads
from seqjax.layers.norms import layer_normalize
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.layers.registry import register
from seqjax.ops.attention import rotary_embedding
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

GROUP_NORM_EPSILON = 1e-5


def retention_log_decay(num_heads: int) -> Array:
    """log γ_h for γ_h = 1 - 2^(-5-h), h = 0..H-1 (the paper's decays), float32 [H]."""
    return jnp.log1p(-(2.0 ** (-5.0 - jnp.arange(num_heads, dtype=jnp.float32))))


def segment_positions(
    next_position: Array, length: int, segment_starts: Array | None = None
) -> Array:
    """Positions [B, T] of the next ``length`` tokens: counting on from ``next_position`` [B],
    and from 0 again at every true entry of ``segment_starts`` [B, T]."""
    steps = jnp.arange(length, dtype=jnp.int32)
    positions = next_position.astype(jnp.int32)[:, None] + steps
    if segment_starts is None:
        return positions
    last_start = jax.lax.cummax(jnp.where(segment_starts, steps, -1), axis=1)
    return jnp.where(last_start >= 0, steps - last_start, positions)


def multi_scale_retention(
    q: Array, k: Array, v: Array, positions: Array, *, rotary_base: float = 10_000.0, **op_options
) -> tuple[Array, Array]:
    """Retention of the module docstring before the group norm; returns ``(o, S_T)``.

    Args:
      q, k: [B, T, H, K] with K even (before the rotation).  v: [B, T, H, V].
      positions: [B, T] integer positions of the rotation.
      rotary_base: of the rotation.
      op_options: of ``gated_linear_attention`` (initial_state S [B, H, K, V],
        segment_starts, chunk_size, implementation, sequence_split).

    Returns:
      o [B, T, H, V] and S_T [B, H, K, V] (float32).
    """
    batch, length, heads, key_size = q.shape
    log_decay = jnp.broadcast_to(retention_log_decay(heads), (batch, length, heads))
    return gated_linear_attention(
        rotary_embedding(q, positions, base=rotary_base),
        rotary_embedding(k, positions, base=rotary_base),
        v,
        log_decay=log_decay,
        scale=key_size**-0.5,
        **op_options,
    )


@register("retnet")
class RetNet(nnx.Module):
    """Multi-scale retention (Sun et al., 2023); see the module docstring. x: [B, T, D].

    Options: ``num_heads`` H (K = D / H, even), ``expand_v`` (V = expand_v · K),
    ``rotary_base``, ``chunk_size`` and ``implementation`` (of ``gated_linear_attention``).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_heads: int = 4,
        expand_v: int = 2,
        rotary_base: float = 10_000.0,
        chunk_size: int = 64,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(num_heads=num_heads, expand_v=expand_v, chunk_size=chunk_size)
        check_divides("num_heads", num_heads, "d_model", d_model)
        if (d_model // num_heads) % 2:
            raise ValueError(
                f"the key size d_model / num_heads = {d_model // num_heads} must be even for "
                "rotary positions"
            )
        self.num_heads, self.key_size = num_heads, d_model // num_heads
        self.value_size = expand_v * self.key_size
        self.rotary_base = rotary_base
        self.chunk_size, self.implementation = chunk_size, implementation
        self.sequence_split = sequence_split
        inner = num_heads * self.value_size

        def projection(width):
            return linear(d_model, width, EMBED, HEADS, use_bias=False, rngs=rngs)

        self.query, self.key = projection(d_model), projection(d_model)
        self.value, self.gate = projection(inner), projection(inner)
        per_head = (num_heads, self.value_size)
        self.norm_scale = param(jnp.ones(per_head, jnp.float32), HEADS, None)
        self.norm_bias = param(jnp.zeros(per_head, jnp.float32), HEADS, None)
        self.output = linear(inner, d_model, HEADS, EMBED, use_bias=False, rngs=rngs)

    @property
    def decays(self) -> Array:
        """γ_h [H]."""
        return jnp.exp(retention_log_decay(self.num_heads))

    def init_state(self, batch_size: int) -> PyTree:
        shape = (batch_size, self.num_heads, self.key_size, self.value_size)
        return {
            "retention": jnp.zeros(shape, jnp.float32),
            "next_position": jnp.zeros((batch_size,), jnp.int32),
        }

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        positions = segment_positions(state["next_position"], x.shape[1], segment_starts)
        o, retention_state = multi_scale_retention(
            split_heads(self.query(x), self.num_heads),
            split_heads(self.key(x), self.num_heads),
            split_heads(self.value(x), self.num_heads),
            positions,
            initial_state=state["retention"],
            segment_starts=segment_starts,
            rotary_base=self.rotary_base,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        normed = merge_heads(
            layer_normalize(o, self.norm_scale[...], self.norm_bias[...], GROUP_NORM_EPSILON)
        )
        y = self.output(jax.nn.silu(self.gate(x)) * normed)
        return y, {"retention": retention_state, "next_position": positions[:, -1] + 1}
