"""RWKV-6 (Finch) and RWKV-7 (Goose) time mixing: matrix-valued states with token shift.

RWKV-6, "Eagle and Finch: RWKV with Matrix-Valued States and Dynamic Recurrence" (Peng et
al., 2024). Per head, with a data-dependent decay w_t = exp(-exp(w̃_t)) per key and a bonus
u for the current token:

    o_t = r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ),     S_t = diag(w_t) S_{t-1} + k_t v_tᵀ

r, k, v, g and w̃ are read from data-dependent interpolations (ddlerp, low-rank) of x_t and
x_{t-1}; the block is W_o (GroupNorm(o) ⊙ SiLU(g)).

RWKV-7, "RWKV-7 "Goose" with Expressive Dynamic State Evolution" (Peng et al., 2025). With
decay w_t = exp(-e^{-0.5} σ(·)) per key, in-context learning rate a_t = σ(·), removal key
κ̂_t = normalize(k_t ⊙ ξ) and replacement key k̃_t = k_t ⊙ (1 + (a_t - 1) ⊙ α):

    S_t = diag(w_t) S_{t-1} - (a_t ⊙ κ̂_t)(κ̂_tᵀ S_{t-1}) + k̃_t v_tᵀ,   o_t = S_tᵀ r_t

(RWKV's own [V, K] state is this Sᵀ; see ``generalized_delta_rule``); the block is
W_o ((GroupNorm(o) + (r_t·(ρ ⊙ k̃_t)) v_t) ⊙ g_t) with a low-rank sigmoid gate g.

RWKV-7's value residual mixes every later layer's values with the first layer's,
v_t ← v_t + (v¹_t - v_t) ⊙ σ(ν + (x_v W_ν↓) W_ν↑). The values cross layers, so they travel in
the carry a stack passes from block to block (``RWKV7.call_with_carry``): the first ``rwkv7``
layer that sees a carry without them puts its own v there.

RWKV-7's channel mixing, the other half of its block, is a mixer of its own here
(``rwkv7_channel_mix``: it has a token shift, so a state), y_t = W_v relu(W_k x_k)² with
x_k = x_t + (x_{t-1} - x_t) ⊙ μ; an RWKV-7 model alternates the two with no gated MLP. Output
projections have the default initialization (RWKV zero-initializes them, which would leave a
fresh mixer with no output at all).

State: {"shift": x_{T} for the next token shift [B, D], "wkv": S [B, H, K, K]}, with RWKV-6's
S the state after the last token (its decay w_T already applied); the channel mix's is
{"shift": x_T [B, D]}.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_divides, check_mixer_inputs, check_sizes
from seqjax.layers.heads import split_heads
from seqjax.layers.initializers import symmetric_uniform
from seqjax.layers.norms import layer_normalize
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.layers.registry import register
from seqjax.ops.conv import causal_conv1d
from seqjax.ops.delta_rule import generalized_delta_rule
from seqjax.ops.linear_attention import gated_linear_attention
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

# GroupNorm epsilon of RWKV-6 and RWKV-7's output norm (1e-5 · head_size_divisor², 8² = 64).
GROUP_NORM_EPSILON = 64e-5
# RWKV-6's decay exponent w̃ is capped at 3, so log w = -exp(w̃) >= -20: a decay below
# e^-20 ≈ 2e-9 is already nothing next to float32's resolution, and the cap keeps the
# cumulative log decays of a chunk (at most C · 20) small enough that the differences the
# chunked form takes of them stay accurate (and finite: -exp(w̃) overflows for w̃ > 88).
MAX_DECAY_EXPONENT = 3.0
# The carry entry holding the first rwkv7 layer's values v [B, T, D] for the layers after it.
VALUE_FIRST = "rwkv7_value_first"


def token_shift(
    x: Array,
    previous: Array,
    segment_starts: Array | None = None,
    sequence_split: SequenceSplit | None = None,
) -> tuple[Array, Array]:
    """x_{t-1} for every t: ``previous`` [B, D] before the first token, zero at segment starts.

    With ``sequence_split`` it is the causal convolution with taps (1, 0), whose split form
    hands each shard the last token of the one before (the copy is exact).
    Returns the shifted inputs [B, T, D] and the last token [B, D] (float32) for the state.
    """
    if sequence_split is not None:
        taps = jnp.stack([jnp.ones(x.shape[-1]), jnp.zeros(x.shape[-1])])
        shifted, last = causal_conv1d(
            x,
            taps,
            initial_state=previous[:, None],
            segment_starts=segment_starts,
            sequence_split=sequence_split,
        )
        return shifted, last[:, 0]
    shifted = jnp.concatenate([previous[:, None].astype(x.dtype), x[:, :-1]], axis=1)
    if segment_starts is not None:
        shifted = jnp.where(segment_starts[..., None], jnp.zeros((), x.dtype), shifted)
    return shifted, x[:, -1].astype(jnp.float32)


def current_token_bonus(r: Array, k: Array, v: Array, bonus: Array) -> Array:
    """(r_t · (bonus ⊙ k_t)) v_t per head: r, k [B, T, H, K], v [B, T, H, V], bonus [H, K]."""
    weights = jnp.sum(r * bonus * k, axis=-1, keepdims=True, dtype=jnp.float32)
    return weights * v.astype(jnp.float32)


def rwkv6_ddlerp(
    x: Array, shifted: Array, mix_x: Array, mix_base: Array, mix_down: Array, mix_up: Array
) -> Array:
    """Finch's data-dependent interpolations of x_t and x_{t-1}, one per input w, k, v, r, g:

        x_□ = x + (x_{t-1} - x) ⊙ (μ_□ + tanh((x + (x_{t-1} - x) ⊙ μ_x) A) B_□)

    Shapes: x, shifted [B, T, D], mix_x [D], mix_base [5, D], mix_down [D, 5R],
    mix_up [5, R, D]. Returns [5, B, T, D].
    """
    delta = shifted - x
    low_rank = jnp.tanh((x + delta * mix_x) @ mix_down)
    low_rank = low_rank.reshape(*x.shape[:2], *mix_up.shape[:2])  # [B, T, 5, R]
    mix = mix_base[:, None, None] + jnp.einsum("btfr,frd->fbtd", low_rank, mix_up)
    return x + delta * mix


def rwkv6_log_decay(decay_exponent: Array) -> Array:
    """log w_t = -exp(w̃_t) (w̃ capped at MAX_DECAY_EXPONENT), in float32: w in (0, 1)."""
    capped = jnp.minimum(decay_exponent.astype(jnp.float32), MAX_DECAY_EXPONENT)
    return -jnp.exp(capped)


def rwkv6_recurrence(
    r: Array,
    k: Array,
    v: Array,
    log_decay: Array,
    bonus: Array,
    *,
    segment_starts: Array | None = None,
    **op_options,
) -> tuple[Array, Array]:
    """o_t = r_tᵀ (S_{t-1} + diag(u) k_t v_tᵀ), S_t = diag(w_t) S_{t-1} + k_t v_tᵀ.

    ``gated_linear_attention`` reads its state after each update, so it runs on the
    sequences shifted by one step, (k_{t-1}, v_{t-1}, log w_{t-1}), with zeros at position 0
    and at segment starts: its state after step t is then RWKV's S_{t-1}, the state r_t
    reads. The last token's update, shifted out of the sequence, is applied afterwards.

    Args:
      r, k: [B, T, H, K].  v: [B, T, H, V].  log_decay: log w [B, T, H, K], <= 0.
      bonus: u [H, K].
      segment_starts: bool [B, T]; the state is reset to zero before each true position.
      op_options: of ``gated_linear_attention`` (initial_state S [B, H, K, V] after the
        previous token, chunk_size, implementation, sequence_split).

    Returns:
      o [B, T, H, V] in float32 and the state after the last token [B, H, K, V].
    """

    def previous_step(t):
        t = jnp.concatenate([jnp.zeros_like(t[:, :1]), t[:, :-1]], axis=1)
        if segment_starts is None:
            return t
        return jnp.where(segment_starts[:, :, None, None], jnp.zeros((), t.dtype), t)

    output, state = gated_linear_attention(
        r,
        previous_step(k),
        previous_step(v),
        log_decay=previous_step(log_decay),
        segment_starts=segment_starts,
        **op_options,
    )
    output = output.astype(jnp.float32) + current_token_bonus(r, k, v, bonus)
    k_last, v_last = (t[:, -1].astype(jnp.float32) for t in (k, v))
    state = jnp.exp(log_decay[:, -1])[..., None] * state + k_last[..., None] * v_last[..., None, :]
    return output, state


def rwkv7_log_decay(decay_logits: Array) -> Array:
    """log w_t = -e^{-0.5} σ(logits), in float32: w in (e^{-e^{-0.5}}, 1) ≈ (0.545, 1).

    (RWKV's code writes w = exp(-exp(-softplus(-logits) - 0.5)), the same number.)
    """
    return -math.exp(-0.5) * jax.nn.sigmoid(decay_logits.astype(jnp.float32))


def rwkv7_keys(
    k: Array, icl_rate: Array, removal_key_scale: Array, icl_key_scale: Array
) -> tuple[Array, Array]:
    """The removal key κ̂ = normalize(k ⊙ ξ) and replacement key k̃ = k ⊙ (1 + (a - 1) ⊙ α).

    k, icl_rate a: [B, T, H, K]; removal_key_scale ξ, icl_key_scale α: [H, K].
    """
    removal_key = k * removal_key_scale
    norm = jnp.linalg.norm(removal_key.astype(jnp.float32), axis=-1, keepdims=True)
    removal_key = removal_key / jnp.maximum(norm, 1e-12).astype(k.dtype)
    return removal_key, k * (1.0 + (icl_rate - 1.0) * icl_key_scale)


def rwkv7_value_residual(v: Array, value_first: Array, mix_logits: Array) -> Array:
    """RWKV-7's value residual v + (v¹ - v) ⊙ σ(logits): v, v¹ (the first layer's), logits
    [B, T, D]."""
    return v + (value_first - v) * jax.nn.sigmoid(mix_logits).astype(v.dtype)


def rwkv7_recurrence(
    r: Array,
    replacement_key: Array,
    v: Array,
    removal_key: Array,
    icl_rate: Array,
    log_decay: Array,
    **op_options,
) -> tuple[Array, Array]:
    """S_t = diag(w_t) S_{t-1} - (a_t ⊙ κ̂_t)(κ̂_tᵀ S_{t-1}) + k̃_t v_tᵀ, o_t = S_tᵀ r_t.

    All of r, k̃, κ̂, a, log w [B, T, H, K]; v [B, T, H, V]; state [B, H, K, V] (RWKV's
    [V, K] state transposed); op_options: of ``generalized_delta_rule`` (initial_state,
    segment_starts, chunk_size, implementation, sequence_split). Returns o [B, T, H, V] in
    float32 and the final state.
    """
    output, state = generalized_delta_rule(
        r,
        replacement_key,
        v,
        removal_key,
        icl_rate * removal_key,
        log_decay=log_decay,
        **op_options,
    )
    return output.astype(jnp.float32), state


def _depth_ratios(layer_index: int, num_layers: int) -> tuple[float, float]:
    """RWKV's (ratio_0_to_1, ratio_1_to_almost0) of a layer's depth."""
    return layer_index / max(num_layers - 1, 1), 1.0 - layer_index / num_layers


def _channel_fractions(d_model: int) -> Array:
    return jnp.arange(d_model, dtype=jnp.float32) / d_model  # RWKV's "ddd"


def _orthogonal(key: Array, shape: tuple[int, int], scale: float) -> Array:
    """RWKV's ortho_init: an orthogonal matrix with gain scale · sqrt(max(rows/cols, 1))."""
    gain = math.sqrt(shape[0] / shape[1]) if shape[0] > shape[1] else 1.0
    return jax.nn.initializers.orthogonal(scale=gain * scale)(key, shape, jnp.float32)


class _RWKVTimeMix(nnx.Module):
    """What RWKV-6 and RWKV-7 share: heads, GroupNorm and the state.

    Options: ``head_size`` K (capped at D), ``chunk_size`` and ``implementation`` (of the op).
    """

    def __init__(
        self,
        d_model: int,
        *,
        head_size: int = 64,
        chunk_size: int = 64,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(head_size=head_size, chunk_size=chunk_size)
        self.head_size = min(head_size, d_model)
        check_divides("head_size", self.head_size, "d_model", d_model)
        self.num_heads = d_model // self.head_size
        self.chunk_size = chunk_size
        self.implementation, self.sequence_split = implementation, sequence_split

    def init_state(self, batch_size: int) -> PyTree:
        size = (batch_size, self.num_heads, self.head_size, self.head_size)
        return {
            "shift": jnp.zeros((batch_size, self.num_heads * self.head_size), jnp.float32),
            "wkv": jnp.zeros(size, jnp.float32),
        }

    def _add_output_layers(self, d_model: int, norm_scale: float, rngs: nnx.Rngs) -> None:
        """GroupNorm's scale (all ``norm_scale``) and bias per channel, and W_o."""
        self.output = linear(d_model, d_model, HEADS, EMBED, use_bias=False, rngs=rngs)
        self.norm_scale = param(jnp.full((d_model,), norm_scale, jnp.float32), HEADS)
        self.norm_bias = param(jnp.zeros((d_model,), jnp.float32), HEADS)

    def _heads(self, t: Array) -> Array:
        return split_heads(t, self.num_heads)

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        y, new_state, _ = self._mix(x, state, segment_starts)
        return y, new_state

    def _mix(
        self, x: Array, state: PyTree | None, segment_starts: Array | None, **inputs: Any
    ) -> tuple[Array, PyTree, Array]:
        """The token shift, the subclass's ``time_mix`` (its gated outputs before W_o, its
        new matrix state and its values v, given x, x_{t-1}, ``inputs`` and the op's
        options), then W_o. Returns y, the new state and v [B, T, D]."""
        if state is None:
            state = self.init_state(x.shape[0])
        shifted, last = token_shift(x, state["shift"], segment_starts, self.sequence_split)
        gated, wkv, values = self.time_mix(
            x,
            shifted,
            **inputs,
            initial_state=state["wkv"],
            segment_starts=segment_starts,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        return self.output(gated.astype(x.dtype)), {"shift": last, "wkv": wkv}, values

    def _group_norm(self, o: Array) -> Array:
        """Per-head normalization of o [B, T, H, V], learned scale and bias per channel."""
        scale, bias = (
            p[...].reshape(self.num_heads, -1) for p in (self.norm_scale, self.norm_bias)
        )
        return layer_normalize(o, scale, bias, GROUP_NORM_EPSILON)


@register("rwkv6")
class RWKV6(_RWKVTimeMix):
    """RWKV-6 (Finch) time mixing (Peng et al., 2024); see the module docstring. x: [B, T, D].

    Options: those of every RWKV (``head_size`` K, capped at D, ``chunk_size`` and
    ``implementation`` of ``gated_linear_attention``), ``mix_rank`` and ``decay_rank`` (the
    low ranks of ddlerp and of the decay). Initialization follows RWKV-LM's RWKV-6 by depth.
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        mix_rank: int = 32,
        decay_rank: int = 64,
        layer_index: int = 0,
        num_layers: int = 1,
        **time_mix_options: Any,
    ):
        super().__init__(d_model, **time_mix_options)
        check_sizes(mix_rank=mix_rank, decay_rank=decay_rank)
        ratio_0_to_1, ratio_1_to_0 = _depth_ratios(layer_index, num_layers)
        fraction = _channel_fractions(d_model)
        self.mix_x = param(1.0 - fraction**ratio_1_to_0, EMBED)
        mix_base = jnp.stack(  # w, k, v, r, g
            [
                1.0 - fraction**ratio_1_to_0,
                1.0 - fraction**ratio_1_to_0,
                1.0 - (fraction**ratio_1_to_0 + 0.3 * ratio_0_to_1),
                1.0 - fraction ** (0.5 * ratio_1_to_0),
                1.0 - fraction ** (0.5 * ratio_1_to_0),
            ]
        )
        self.mix_base = param(mix_base, None, EMBED)
        self.mix_down = param(jnp.zeros((d_model, 5 * mix_rank), jnp.float32), EMBED, None)
        small = symmetric_uniform(0.01)
        self.mix_up = param(small(rngs.params(), (5, mix_rank, d_model)), None, None, EMBED)
        channel = jnp.arange(d_model, dtype=jnp.float32) / max(d_model - 1, 1)
        self.decay_base = param(-6.0 + 5.0 * channel ** (0.7 + 1.3 * ratio_0_to_1), HEADS)
        self.decay_down = param(jnp.zeros((d_model, decay_rank), jnp.float32), EMBED, None)
        self.decay_up = param(small(rngs.params(), (decay_rank, d_model)), None, HEADS)
        zigzag = (jnp.arange(1, d_model + 1) % 3 - 1) * 0.1
        bonus = ratio_0_to_1 * (1.0 - channel) + zigzag
        self.bonus = param(self._heads(bonus), HEADS, None)

        def projection(scale):
            init = jax.nn.initializers.orthogonal(scale=scale)
            return linear(
                d_model, d_model, EMBED, HEADS, use_bias=False, kernel_init=init, rngs=rngs
            )

        self.receptance, self.key, self.value, self.gate = (projection(s) for s in (1, 0.1, 1, 0.1))
        self._add_output_layers(d_model, ((1 + layer_index) / num_layers) ** 0.7, rngs)

    def time_mix(self, x: Array, shifted: Array, **op_options) -> tuple[Array, Array]:
        x_w, x_k, x_v, x_r, x_g = rwkv6_ddlerp(
            x, shifted, self.mix_x[...], self.mix_base[...], self.mix_down[...], self.mix_up[...]
        )
        decay_exponent = (
            self.decay_base[...] + jnp.tanh(x_w @ self.decay_down[...]) @ self.decay_up[...]
        )
        r, k, v = self.receptance(x_r), self.key(x_k), self.value(x_v)
        o, wkv = rwkv6_recurrence(
            self._heads(r),
            self._heads(k),
            self._heads(v),
            self._heads(rwkv6_log_decay(decay_exponent)),
            self.bonus[...],
            **op_options,
        )
        return self._group_norm(o).reshape(x.shape) * jax.nn.silu(self.gate(x_g)), wkv, v


@register("rwkv7")
class RWKV7(_RWKVTimeMix):
    """RWKV-7 (Goose) time mixing (Peng et al., 2025); see the module docstring. x: [B, T, D].

    Options: those of every RWKV (``head_size`` K, capped at D, ``chunk_size`` and
    ``implementation`` of ``generalized_delta_rule``), ``decay_rank``, ``icl_rank`` and
    ``gate_rank`` (low ranks of w, a and g; None for RWKV's size rules), ``value_residual``
    (mix v with the first rwkv7 layer's values, as every RWKV-7 layer after the first does;
    such a layer runs only within a stack, ``call_with_carry``) and ``value_rank`` (its low
    rank; None for RWKV's rule). Initialization follows RWKV-LM's RWKV-7 by depth.
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        decay_rank: int | None = None,
        icl_rank: int | None = None,
        gate_rank: int | None = None,
        value_residual: bool = False,
        value_rank: int | None = None,
        layer_index: int = 0,
        num_layers: int = 1,
        **time_mix_options: Any,
    ):
        super().__init__(d_model, **time_mix_options)
        check_sizes(
            decay_rank=decay_rank, icl_rank=icl_rank, gate_rank=gate_rank, value_rank=value_rank
        )
        self.value_residual = value_residual
        ratio_0_to_1, ratio_1_to_0 = _depth_ratios(layer_index, num_layers)
        fraction = _channel_fractions(d_model)
        powers = (0.2, 0.9, 0.7, 0.7, 0.9, 0.2)  # r, w, k, v, a, g
        mix = jnp.stack([1.0 - fraction ** (power * ratio_1_to_0) for power in powers])
        self.mix = param(mix, None, EMBED)

        def rank(size, factor):  # RWKV's rule: a multiple of 32, at least 32
            return size or max(32, int(round(factor * d_model**0.5 / 32)) * 32)

        decay_rank, icl_rank, gate_rank = (
            rank(decay_rank, 2.5),
            rank(icl_rank, 2.5),
            rank(gate_rank, 5),
        )
        n = jnp.arange(d_model, dtype=jnp.float32)
        ramp = n / max(d_model - 1, 1) - 0.5
        half = max(self.head_size - 1, 1) / 2
        zigzag = ((n % self.head_size) - half) / half
        zigzag = zigzag * jnp.abs(zigzag)
        decay = -6.0 + 6.0 * (n / max(d_model - 1, 1)) ** (1.0 + ratio_0_to_1**0.3)
        # +0.5 offsets RWKV's -0.5 inside w = -softplus(-(...)) - 0.5.
        self.decay_base = param(decay + 0.5 + 2.5 * zigzag, HEADS)

        def low_rank(rank):  # (down, up): zeros [D, R] and an orthogonal [R, D]
            down = param(jnp.zeros((d_model, rank), jnp.float32), EMBED, None)
            return down, param(_orthogonal(rngs.params(), (rank, d_model), 0.1), None, HEADS)

        self.decay_down, self.decay_up = low_rank(decay_rank)
        self.icl_base = param(-0.19 + 0.3 * zigzag + 0.4 * ramp, HEADS)
        self.icl_down, self.icl_up = low_rank(icl_rank)
        self.gate_down, self.gate_up = low_rank(gate_rank)
        if value_residual:
            self.value_residual_base = param(0.73 - 0.4 * ramp, HEADS)
            self.value_residual_down, self.value_residual_up = low_rank(rank(value_rank, 1.7))
        heads = (self.num_heads, self.head_size)
        self.removal_key_scale = param(self._heads(0.71 - 0.1 * ramp), HEADS, None)  # ξ
        self.icl_key_scale = param(jnp.full(heads, 1.02, jnp.float32), HEADS, None)  # α
        self.bonus = param(jnp.full(heads, -0.04, jnp.float32), HEADS, None)  # ρ

        def projection(bound):
            init = symmetric_uniform(bound)
            return linear(
                d_model, d_model, EMBED, HEADS, use_bias=False, kernel_init=init, rngs=rngs
            )

        bound = d_model**-0.5
        self.receptance = projection(0.5 * bound)
        self.key = projection(0.05 * bound)
        self.value = projection(0.5 * bound)
        self._add_output_layers(d_model, 1.0, rngs)

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if self.value_residual:
            raise ValueError(
                "rwkv7 with value_residual mixes its values with the first rwkv7 layer's, "
                "which only a stack has: run it through call_with_carry (the backbone does)"
            )
        return super().__call__(x, state=state, segment_starts=segment_starts)

    def call_with_carry(
        self,
        x: Array,
        carry: dict[str, Array],
        *,
        state: PyTree | None = None,
        segment_starts: Array | None = None,
    ) -> tuple[Array, PyTree, dict[str, Array]]:
        """The mixer within a stack: ``carry`` holds what the blocks before it pass on.

        Without VALUE_FIRST in it, this layer is the first rwkv7 layer and puts its values
        v [B, T, D] there; with ``value_residual`` its own values are mixed with them.
        Returns y, the new state and the carry for the next block.
        """
        check_mixer_inputs("rwkv7", x, segment_starts, self.d_model)
        value_first = carry.get(VALUE_FIRST)
        if self.value_residual and value_first is None:
            raise ValueError(
                "rwkv7 with value_residual needs the first rwkv7 layer's values, and this "
                "layer is the first rwkv7 layer of its stack (give it value_residual=False)"
            )
        y, new_state, values = self._mix(x, state, segment_starts, value_first=value_first)
        if value_first is None:
            carry = {**carry, VALUE_FIRST: values}
        return y.astype(x.dtype), new_state, carry

    def time_mix(
        self, x: Array, shifted: Array, *, value_first: Array | None = None, **op_options
    ) -> tuple[Array, Array, Array]:
        x_r, x_w, x_k, x_v, x_a, x_g = x + (shifted - x) * self.mix[...][:, None, None]
        v = self.value(x_v)
        values = v
        if self.value_residual:
            mix_logits = (
                self.value_residual_base[...]
                + (x_v @ self.value_residual_down[...]) @ self.value_residual_up[...]
            )
            v = rwkv7_value_residual(v, value_first, mix_logits)
        r, k, v = (self._heads(t) for t in (self.receptance(x_r), self.key(x_k), v))
        decay_logits = (
            self.decay_base[...] + jnp.tanh(x_w @ self.decay_down[...]) @ self.decay_up[...]
        )
        icl_rate = jax.nn.sigmoid(
            self.icl_base[...] + (x_a @ self.icl_down[...]) @ self.icl_up[...]
        )
        gate = jax.nn.sigmoid(x_g @ self.gate_down[...]) @ self.gate_up[...]
        removal_key, replacement_key = rwkv7_keys(
            k, self._heads(icl_rate), self.removal_key_scale[...], self.icl_key_scale[...]
        )
        o, wkv = rwkv7_recurrence(
            r,
            replacement_key,
            v,
            removal_key,
            self._heads(icl_rate),
            self._heads(rwkv7_log_decay(decay_logits)),
            **op_options,
        )
        o = self._group_norm(o) + current_token_bonus(r, replacement_key, v, self.bonus[...])
        return o.reshape(x.shape) * gate, wkv, values


def rwkv7_channel_mix(x: Array, shifted: Array, mix: Array, key: nnx.Linear, value: nnx.Linear):
    """y = W_v relu(W_k (x + (x_{t-1} - x) ⊙ μ))²: x, shifted [B, T, D], mix μ [D]."""
    return value(jnp.square(jax.nn.relu(key(x + (shifted - x) * mix))))


@register("rwkv7_channel_mix")
class RWKV7ChannelMix(nnx.Module):
    """RWKV-7 (Goose) channel mixing (Peng et al., 2025), the feed-forward half of its block
    with the token shift that makes it a mixer; see the module docstring. x: [B, T, D].

    Options: ``hidden_size`` (of W_k; None: 4·D, RWKV-7's). Initialization follows RWKV-LM's
    RWKV-7 by depth.
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int | None = None,
        layer_index: int = 0,
        num_layers: int = 1,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(hidden_size=hidden_size)
        hidden_size = hidden_size or 4 * d_model
        ratio_1_to_0 = _depth_ratios(layer_index, num_layers)[1]
        self.mix = param(1.0 - _channel_fractions(d_model) ** (ratio_1_to_0**4), EMBED)
        key_init = symmetric_uniform(0.5 * d_model**-0.5)
        self.key = linear(
            d_model, hidden_size, EMBED, HEADS, use_bias=False, kernel_init=key_init, rngs=rngs
        )
        self.value = linear(hidden_size, d_model, HEADS, EMBED, use_bias=False, rngs=rngs)
        self.sequence_split = sequence_split

    def init_state(self, batch_size: int) -> PyTree:
        return {"shift": jnp.zeros((batch_size, self.d_model), jnp.float32)}

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        shifted, last = token_shift(x, state["shift"], segment_starts, self.sequence_split)
        return rwkv7_channel_mix(x, shifted, self.mix[...], self.key, self.value), {"shift": last}
