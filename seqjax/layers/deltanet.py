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
``negative_eigenvalues=True`` takes β_t = 2σ(W_β x_t) ∈ (0, 2), so I - β_t k_t k_tᵀ can have
the eigenvalue 1 - β_t < 0 ("Unlocking State-Tracking in Linear RNNs Through Negative
Eigenvalues", Grazzi et al., 2025).

State: {"conv": the last W - 1 conv inputs [B, W-1, 2HK + HV], "recurrent": S [B, H, K, V]}.
DeltaProduct (deltaproduct.py) reuses this block with several keys and values per token.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.mamba import step_size_bias
from seqjax.layers.norms import RMSNorm
from seqjax.layers.registry import register
from seqjax.ops.conv import causal_conv1d
from seqjax.ops.delta_rule import delta_rule
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
    return -jnp.exp(log_decay_rate.astype(jnp.float32)) * step


def _conv_taps(key: Array, width: int, channels: int) -> Array:
    """Depthwise conv taps [W, C], uniform in ±W^-1/2 like PyTorch's Conv1d (fan-in W)."""
    bound = width**-0.5
    return jax.random.uniform(key, (width, channels), minval=-bound, maxval=bound)


@register("deltanet")
class DeltaNet(nnx.Module):
    """DeltaNet (Yang et al., 2024); see the module docstring. x: [B, T, D].

    Options: ``num_heads`` H (few, large heads: the state H K² = D²/H holds more key-value
    associations; 2 heads reach 99.7% on configs/mqar.py in 1000 steps, 4 heads 40%),
    ``head_dim`` K (None: D / H), ``value_dim`` V (None: K),
    ``conv_width`` W, ``negative_eigenvalues``, ``output_gate``, and ``chunk_size`` and
    ``implementation`` of ``delta_rule`` (chunks of 16 were the fastest of 8 to 64 on CPU for
    T = 64: the XLA triangular solve of a 64-step chunk is slow there).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_heads: int = 2,
        head_dim: int | None = None,
        value_dim: int | None = None,
        conv_width: int = 4,
        negative_eigenvalues: bool = False,
        output_gate: bool = False,
        chunk_size: int = 16,
        implementation: str | None = None,
    ):
        self._build(
            d_model,
            rngs,
            num_heads=num_heads,
            head_dim=head_dim,
            value_dim=value_dim,
            conv_width=conv_width,
            negative_eigenvalues=negative_eigenvalues,
            output_gate=output_gate,
            chunk_size=chunk_size,
            implementation=implementation,
        )

    def _build(
        self,
        d_model: int,
        rngs: nnx.Rngs,
        *,
        num_heads: int,
        head_dim: int | None,
        value_dim: int | None,
        conv_width: int,
        negative_eigenvalues: bool,
        output_gate: bool,
        chunk_size: int,
        implementation: str | None,
        num_householder: int = 1,
        gated: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        """The parameters of the delta-rule block, shared with Gated DeltaNet and
        DeltaProduct (``num_householder`` keys, values and β per token)."""
        if conv_width < 1:
            raise ValueError(f"conv_width must be at least 1, got {conv_width}")
        if num_householder < 1:
            raise ValueError(f"num_householder must be at least 1, got {num_householder}")
        self.num_heads = heads = num_heads
        self.head_dim = key_size = head_dim or d_model // num_heads
        self.value_dim = value_size = value_dim or key_size
        if key_size < 1:
            raise ValueError(f"head_dim must be positive, got {key_size} (d_model < num_heads?)")
        self.conv_width = conv_width
        self.num_householder = n = num_householder
        self.negative_eigenvalues = negative_eigenvalues
        self.chunk_size, self.implementation = chunk_size, implementation

        self.q_proj = nnx.Linear(d_model, heads * key_size, use_bias=False, rngs=rngs)
        self.k_proj = nnx.Linear(d_model, n * heads * key_size, use_bias=False, rngs=rngs)
        self.v_proj = nnx.Linear(d_model, n * heads * value_size, use_bias=False, rngs=rngs)
        self.beta_proj = nnx.Linear(d_model, n * heads, use_bias=False, rngs=rngs)
        # One depthwise conv over the concatenated q, k, v channels (three separate ones).
        self.conv_channels = (1 + n) * heads * key_size + n * heads * value_size
        self.conv_kernel = nnx.Param(_conv_taps(rngs.params(), conv_width, self.conv_channels))
        if gated:
            self.decay_proj = nnx.Linear(d_model, heads, use_bias=False, rngs=rngs)
            # A = exp(A_log) uniform in [1, 16] and softplus(b_Δ) log-uniform in
            # [dt_min, dt_max], as Mamba-2 and Gated DeltaNet initialize them.
            rates = jax.random.uniform(rngs.params(), (heads,), minval=1.0, maxval=16.0)
            self.log_decay_rate = nnx.Param(jnp.log(rates))
            self.dt_bias = nnx.Param(step_size_bias(rngs.params(), heads, dt_min, dt_max))
        else:
            self.decay_proj = None
        self.norm = RMSNorm(value_size, epsilon=OUTPUT_NORM_EPSILON)
        self.gate_proj = (
            nnx.Linear(d_model, heads * value_size, use_bias=False, rngs=rngs)
            if output_gate
            else None
        )
        self.out_proj = nnx.Linear(heads * value_size, d_model, use_bias=False, rngs=rngs)

    def init_state(self, batch_size: int) -> PyTree:
        return {
            "conv": jnp.zeros((batch_size, self.conv_width - 1, self.conv_channels), jnp.float32),
            "recurrent": jnp.zeros(
                (batch_size, self.num_heads, self.head_dim, self.value_dim), jnp.float32
            ),
        }

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        batch, length, _ = x.shape
        heads, n = self.num_heads, self.num_householder
        if state is None:
            state = self.init_state(batch)
        features = jnp.concatenate([self.q_proj(x), self.k_proj(x), self.v_proj(x)], axis=-1)
        features, conv_state = causal_conv1d(
            features,
            self.conv_kernel[...],
            initial_state=state["conv"],
            segment_starts=segment_starts,
        )
        q, k, v = jnp.split(
            jax.nn.silu(features), [heads * self.head_dim, (1 + n) * heads * self.head_dim], -1
        )
        q = l2_normalize(q.reshape(batch, length, heads, self.head_dim))
        k = l2_normalize(k.reshape(batch, length, n, heads, self.head_dim))
        v = v.reshape(batch, length, n, heads, self.value_dim)
        beta = delta_beta(
            self.beta_proj(x).reshape(batch, length, n, heads),
            negative_eigenvalues=self.negative_eigenvalues,
        )
        log_decay = None
        if self.decay_proj is not None:
            log_decay = gated_delta_log_decay(
                self.decay_proj(x), self.log_decay_rate[...], self.dt_bias[...]
            )
        o, recurrent_state = self._recurrence(
            q, k, v, beta, log_decay, state["recurrent"], segment_starts
        )
        o = self.norm(o)
        if self.gate_proj is not None:
            gate = self.gate_proj(x).reshape(batch, length, heads, self.value_dim)
            o = o * jax.nn.silu(gate.astype(jnp.float32))
        y = self.out_proj(o.reshape(batch, length, heads * self.value_dim).astype(x.dtype))
        return y, {"conv": conv_state, "recurrent": recurrent_state}

    def _recurrence(
        self,
        q: Array,
        k: Array,
        v: Array,
        beta: Array,
        log_decay: Array | None,
        initial_state: Array,
        segment_starts: Array | None,
    ) -> tuple[Array, Array]:
        """The delta rule over q [B, T, H, K], k [B, T, 1, H, K], v [B, T, 1, H, V] and
        β [B, T, 1, H] (one key, value and β per token); returns (o [B, T, H, V], S_T)."""
        return delta_rule(
            q,
            k[:, :, 0],
            v[:, :, 0],
            beta[:, :, 0],
            log_decay=log_decay,
            initial_state=initial_state,
            segment_starts=segment_starts,
            scale=self.head_dim**-0.5,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
        )


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
        num_heads: int = 2,
        head_dim: int | None = None,
        value_dim: int | None = None,
        conv_width: int = 4,
        negative_eigenvalues: bool = False,
        output_gate: bool = True,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        chunk_size: int = 16,
        implementation: str | None = None,
    ):
        self._build(
            d_model,
            rngs,
            num_heads=num_heads,
            head_dim=head_dim,
            value_dim=value_dim,
            conv_width=conv_width,
            negative_eigenvalues=negative_eigenvalues,
            output_gate=output_gate,
            chunk_size=chunk_size,
            implementation=implementation,
            gated=True,
            dt_min=dt_min,
            dt_max=dt_max,
        )
