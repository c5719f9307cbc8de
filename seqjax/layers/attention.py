"""Softmax attention token mixer with rotary positions, grouped-query heads, an optional
sliding window and a key/value cache as its state.

"Attention Is All You Need" (Vaswani et al., 2017); rotary positions from RoFormer (Su et
al., 2021); grouped-query heads from GQA (Ainslie et al., 2023).

    o_t = Σ_{s ≤ t, t - s < window, seg(s) = seg(t)} softmax_s(q_t·k_s / √K) v_s

The state holds the last ``cache_length`` keys and values in time order with their
positions and segment ids (empty slots have position -1), the next position and the current
segment id, so a sequence fed in pieces, or one token at a time, equals the whole. Without
a window the cache must hold every token of the context (``cache_length``); with a window it
only needs the last ``window`` tokens. ``rotary=False`` leaves positions out of the scores
(no positional encoding; the forgetting-attention subclass in fox_attention.py uses this);
``rotary_fraction`` < 1 rotates only that leading fraction of each head's dimensions (the
partial rotary embedding of Griffin and Bamba), with frequencies over that width.
``output_bias`` gives the output projection a bias (RecurrentGemma's).
``block_size``, ``implementation`` and ``sequence_split`` (set by the backbone) are those of
``softmax_attention``.
"""

import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_divides, check_sizes
from seqjax.layers.heads import merge_heads, split_heads
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.layers.registry import register
from seqjax.ops.attention import rotary_embedding, softmax_attention
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree


@register("attention")
class Attention(nnx.Module):
    """Multi-head causal softmax attention; see the module docstring. x: [B, T, D]."""

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_heads: int = 4,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        window: int | None = None,
        cache_length: int = 2048,
        rotary: bool = True,
        rotary_base: float = 10_000.0,
        rotary_fraction: float = 1.0,
        output_bias: bool = False,
        block_size: int = 128,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim)
        check_sizes(window=window, cache_length=cache_length, block_size=block_size)
        num_kv_heads = num_kv_heads or num_heads
        check_divides("num_kv_heads", num_kv_heads, "num_heads", num_heads)
        if head_dim is None:
            check_divides("num_heads", num_heads, "d_model", d_model)
            head_dim = d_model // num_heads
        if not 0 < rotary_fraction <= 1:
            raise ValueError(f"rotary_fraction must be in (0, 1], got {rotary_fraction!r}")
        self.rotary_size = int(head_dim * rotary_fraction)
        if rotary and (self.rotary_size % 2 or not self.rotary_size):
            raise ValueError(
                f"rotary positions need an even number of rotated dimensions, got "
                f"head_dim * rotary_fraction = {head_dim} * {rotary_fraction}"
            )
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.window = window
        self.cache_length = min(cache_length, window) if window else cache_length
        self.rotary, self.rotary_base = rotary, rotary_base
        self.block_size, self.implementation = block_size, implementation
        self.sequence_split = sequence_split
        self.query = linear(d_model, num_heads * head_dim, EMBED, HEADS, use_bias=False, rngs=rngs)
        self.key_value = linear(
            d_model, 2 * num_kv_heads * head_dim, EMBED, HEADS, use_bias=False, rngs=rngs
        )
        self.output = linear(
            num_heads * head_dim, d_model, HEADS, EMBED, use_bias=output_bias, rngs=rngs
        )

    @property
    def context_limit(self) -> int | None:
        """How many tokens a sequence may have in all before the cache drops the oldest."""
        return None if self.window else self.cache_length

    def init_state(self, batch_size: int) -> PyTree:
        cache_shape = (batch_size, self.cache_length, self.num_kv_heads, self.head_dim)
        return {
            "keys": jnp.zeros(cache_shape, jnp.float32),
            "values": jnp.zeros(cache_shape, jnp.float32),
            "positions": jnp.full((batch_size, self.cache_length), -1, jnp.int32),
            "segment_ids": jnp.zeros((batch_size, self.cache_length), jnp.int32),
            "next_position": jnp.zeros((batch_size,), jnp.int32),
            "segment_id": jnp.zeros((batch_size,), jnp.int32),
        }

    def _rotate(self, x: Array, positions: Array) -> Array:
        """Rotary positions on the leading ``rotary_size`` dimensions of heads [B, T, H, K]."""
        rotated = rotary_embedding(x[..., : self.rotary_size], positions, base=self.rotary_base)
        if self.rotary_size == self.head_dim:
            return rotated
        return jnp.concatenate([rotated, x[..., self.rotary_size :]], axis=-1)

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        attended, new_state = self.attend(x, state=state, segment_starts=segment_starts)
        return self.output(merge_heads(attended)), new_state

    def attend(
        self,
        x: Array,
        *,
        state: PyTree | None = None,
        segment_starts: Array | None = None,
        log_forget: Array | None = None,
    ) -> tuple[Array, PyTree]:
        """Projects x [B, T, D] to heads, attends over the cache and the new tokens, and
        returns the attended values [B, T, H, K] (before the output projection) and the new
        state. With ``log_forget`` [B, T, H] (a forget-gate mixer), the cache also keeps each
        key's log forget value under ``"log_forget"``, and the op adds F_i - F_j to the scores.
        """
        batch, length, _ = x.shape
        cache = self.init_state(batch) if state is None else state
        positions = cache["next_position"][:, None] + jnp.arange(length, dtype=jnp.int32)
        starts = (
            jnp.zeros((batch, length), jnp.int32)
            if segment_starts is None
            else segment_starts.astype(jnp.int32)
        )
        segment_ids = cache["segment_id"][:, None] + jnp.cumsum(starts, axis=1)

        queries = split_heads(self.query(x), self.num_heads)
        keys, values = jnp.split(split_heads(self.key_value(x), 2 * self.num_kv_heads), 2, axis=2)
        if self.rotary:
            queries, keys = (self._rotate(z, positions) for z in (queries, keys))

        # Per-key arrays of the new tokens; the cache holds the same arrays for earlier ones.
        new = {"keys": keys, "values": values, "positions": positions, "segment_ids": segment_ids}
        if log_forget is not None:
            new["log_forget"] = log_forget.astype(jnp.float32)
        appended = {
            name: jnp.concatenate([cache[name].astype(array.dtype), array], axis=1)
            for name, array in new.items()
        }
        uses_segments = state is not None or segment_starts is not None
        # A fresh cache is empty: attend to the new tokens only.
        attend_to = new if state is None else appended
        attended = softmax_attention(
            queries,
            attend_to["keys"],
            attend_to["values"],
            q_positions=positions,
            kv_positions=attend_to["positions"],
            q_segment_ids=segment_ids if uses_segments else None,
            kv_segment_ids=attend_to["segment_ids"] if uses_segments else None,
            causal=True,
            window=self.window,
            log_forget=attend_to.get("log_forget"),
            block_size=self.block_size,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )

        new_state = {
            name: array[:, -self.cache_length :].astype(cache[name].dtype)
            for name, array in appended.items()
        }
        new_state["next_position"] = positions[:, -1] + 1
        new_state["segment_id"] = segment_ids[:, -1]
        return attended, new_state
