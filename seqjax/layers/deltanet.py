"""DeltaNet and Gated DeltaNet: linear attention whose matrix state is corrected by the delta
rule instead of only accumulated.

"Parallelizing Linear Transformers with the Delta Rule over Sequence Length" (Yang et al.,
2024), per head with unit-norm q_t, k_t and β_t = σ(W_β x_t):

    S_t = (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,    o_t = S_tᵀ q_t / √K

"Gated Delta Networks: Improving Mamba2 with Delta Rule" (Yang et al., 2025) adds a scalar
decay per head, parametrized as in Mamba-2: α_t = exp(-exp(A_log) softplus(W_α x_t + b_Δ)),

    S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ.

The block (as in flash-linear-attention): q, k, v projections, each through a short causal
depthwise conv (width 4) and SiLU; q and k L2-normalized per head; the delta rule
(``seqjax.ops.delta_rule``); a per-head RMSNorm of the outputs, times SiLU(W_g x) with an
output gate (on by default only for Gated DeltaNet); an output projection.
With more value heads than key heads (``num_value_heads``, as Qwen3-Next), each query and
key head is shared by a group of H_v / H value heads, each with its own state, β and decay.
``negative_eigenvalues=True`` takes β_t = 2σ(W_β x_t) ∈ (0, 2), so I - β_t k_t k_tᵀ can have
the eigenvalue 1 - β_t < 0 ("Unlocking State-Tracking in Linear RNNs Through Negative
Eigenvalues", Grazzi et al., 2025).

State: {"conv": the last W - 1 conv inputs [B, W-1, 2HK + H_vV], "recurrent": S [B, H_v, K, V]}
(H_v = H unless ``num_value_heads`` says otherwise).
DeltaProduct (deltaproduct.py) reuses this block with several keys and values per token.
"""

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_divides, check_sizes
from seqjax.layers.conv import ShortConv
from seqjax.layers.heads import merge_heads, split_heads
from seqjax.layers.mamba2 import ssd_decay_parameters, ssd_log_decay
from seqjax.layers.norms import RMSNorm
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.layers.registry import register
from seqjax.ops.delta_rule import delta_rule
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

L2_NORM_EPSILON = 1e-6
OUTPUT_NORM_EPSILON = 1e-5


def l2_normalize(x: Array, epsilon: float = L2_NORM_EPSILON) -> Array:
    """x / √(Σ x² + ε) over the last axis, in float32."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + epsilon)


def delta_beta(beta_logits: Array, *, negative_eigenvalues: bool = False) -> Array:
    """β = σ(logits) ∈ (0, 1), or 2σ(logits) ∈ (0, 2) with negative eigenvalues; float32."""
    beta = jax.nn.sigmoid(beta_logits.astype(jnp.float32))
    return 2.0 * beta if negative_eigenvalues else beta


def gated_delta_log_decay(decay_logits: Array, log_decay_rate: Array, dt_bias: Array) -> Array:
    """log α_t = -exp(A_log) softplus(logits + b_Δ) <= 0 (Mamba-2's scalar decay); float32
    [B, T, H] from logits [B, T, H], A_log [H] and b_Δ [H]."""
    step = jax.nn.softplus(decay_logits.astype(jnp.float32) + dt_bias.astype(jnp.float32))
    return ssd_log_decay(step, log_decay_rate)


def single_factor_delta_rule(q: Array, k: Array, v: Array, beta: Array, **op_options):
    """``delta_rule`` over k [B, T, 1, H, K], v [B, T, 1, H, V] and β [B, T, 1, H]: one key,
    value and β per token, in the layout DeltaProduct gives n_h of them."""
    return delta_rule(q, k[:, :, 0], v[:, :, 0], beta[:, :, 0], **op_options)


@register("deltanet")
class DeltaNet(nnx.Module):
    """DeltaNet (Yang et al., 2024); see the module docstring. x: [B, T, D].

    Options: ``num_heads`` H (few, large heads: the state H K² = D²/H holds more key-value
    associations; 2 heads reach 99.7% on configs/mqar.py in 1000 steps, 4 heads 40%),
    ``head_dim`` K (None: D / H), ``value_dim`` V (None: K), ``num_value_heads`` H_v (None:
    H; a multiple of H, value head h reads query and key head h // (H_v / H)),
    ``conv_width`` W, ``negative_eigenvalues``, ``output_gate``, ``output_norm_epsilon``
    (the ε of the per-head RMSNorm), and ``chunk_size`` and
    ``implementation`` of ``delta_rule`` (chunks of 16 were the fastest of 8 to 64 on CPU for
    T = 64: the XLA triangular solve of a 64-step chunk is slow there).
    """

    # Keys, values and β per token: DeltaProduct's n_h Householder factors.
    num_householder = 1
    recurrence = staticmethod(single_factor_delta_rule)

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_heads: int = 2,
        head_dim: int | None = None,
        value_dim: int | None = None,
        num_value_heads: int | None = None,
        conv_width: int = 4,
        negative_eigenvalues: bool = False,
        output_gate: bool = False,
        output_norm_epsilon: float = OUTPUT_NORM_EPSILON,
        chunk_size: int = 16,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(
            num_heads=num_heads,
            head_dim=head_dim,
            value_dim=value_dim,
            num_value_heads=num_value_heads,
            chunk_size=chunk_size,
        )
        if head_dim is None:
            check_divides("num_heads", num_heads, "d_model", d_model)
        num_value_heads = num_value_heads or num_heads
        check_divides("num_heads", num_heads, "num_value_heads", num_value_heads)
        self.num_heads = heads = num_heads
        self.num_value_heads = value_heads = num_value_heads
        self.head_dim = key_size = head_dim or d_model // num_heads
        self.value_dim = value_size = value_dim or key_size
        self.negative_eigenvalues = negative_eigenvalues
        self.chunk_size, self.implementation = chunk_size, implementation
        self.sequence_split = sequence_split
        n = self.num_householder

        def projection(width):
            return linear(d_model, width, EMBED, HEADS, use_bias=False, rngs=rngs)

        self.q_proj = projection(heads * key_size)
        self.k_proj = projection(n * heads * key_size)
        self.v_proj = projection(n * value_heads * value_size)
        self.beta_proj = projection(n * value_heads)
        # One depthwise conv over the concatenated q, k, v channels (three separate ones).
        channels = (1 + n) * heads * key_size + n * value_heads * value_size
        self.conv = ShortConv(
            conv_width, channels, bias=None, sequence_split=sequence_split, rngs=rngs
        )
        self.norm = RMSNorm(value_size, logical_axis=None, epsilon=output_norm_epsilon)
        self.gate_proj = projection(value_heads * value_size) if output_gate else None
        self.out_proj = linear(
            value_heads * value_size, d_model, HEADS, EMBED, use_bias=False, rngs=rngs
        )
        self.decay_proj = nnx.data(None)  # set by _add_decay

    def _add_decay(self, d_model: int, dt_min: float, dt_max: float, rngs: nnx.Rngs) -> None:
        """Gated DeltaNet's decay: logits W_α x, and A_log, b_Δ initialized as Mamba-2's."""
        heads = self.num_value_heads
        self.decay_proj = linear(d_model, heads, EMBED, HEADS, use_bias=False, rngs=rngs)
        self.log_decay_rate, self.dt_bias = ssd_decay_parameters(rngs, heads, dt_min, dt_max)

    def init_state(self, batch_size: int) -> PyTree:
        return {
            "conv": self.conv.init_state(batch_size),
            "recurrent": jnp.zeros(
                (batch_size, self.num_value_heads, self.head_dim, self.value_dim), jnp.float32
            ),
        }

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        heads, value_heads, n = self.num_heads, self.num_value_heads, self.num_householder
        group = value_heads // heads
        if state is None:
            state = self.init_state(x.shape[0])
        features = jnp.concatenate([self.q_proj(x), self.k_proj(x), self.v_proj(x)], axis=-1)
        features, conv_state = self.conv(features, state["conv"], segment_starts)
        q, k, v = jnp.split(
            jax.nn.silu(features), [heads * self.head_dim, (1 + n) * heads * self.head_dim], -1
        )
        # Each query and key head serves its group of value heads (h // group).
        q = jnp.repeat(l2_normalize(split_heads(q, heads)), group, axis=-2)
        k = jnp.repeat(l2_normalize(k.reshape(*k.shape[:2], n, heads, self.head_dim)), group, -2)
        v = v.reshape(*v.shape[:2], n, value_heads, self.value_dim)
        beta = delta_beta(
            split_heads(self.beta_proj(x), n),
            negative_eigenvalues=self.negative_eigenvalues,
        )
        log_decay = None
        if self.decay_proj is not None:
            log_decay = gated_delta_log_decay(
                self.decay_proj(x), self.log_decay_rate[...], self.dt_bias[...]
            )
        o, recurrent_state = self.recurrence(
            q,
            k,
            v,
            beta,
            log_decay=log_decay,
            initial_state=state["recurrent"],
            segment_starts=segment_starts,
            scale=self.head_dim**-0.5,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        o = self.norm(o)
        if self.gate_proj is not None:
            gate = split_heads(self.gate_proj(x), value_heads)
            o = o * jax.nn.silu(gate.astype(jnp.float32))
        y = self.out_proj(merge_heads(o).astype(x.dtype))
        return y, {"conv": conv_state, "recurrent": recurrent_state}


@register("gated_deltanet")
class GatedDeltaNet(DeltaNet):
    """Gated DeltaNet (Yang et al., 2025); see the module docstring. x: [B, T, D].

    Options: those of ``deltanet`` (the output gate on by default) plus ``dt_min`` and
    ``dt_max``, the range of the initial softplus(b_Δ).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        output_gate: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        **deltanet_options: Any,
    ):
        super().__init__(d_model, rngs=rngs, output_gate=output_gate, **deltanet_options)
        self._add_decay(d_model, dt_min, dt_max, rngs)
