"""DeltaProduct: each token applies a product of n_h generalized Householder transitions.

"DeltaProduct: Improving State-Tracking in Linear RNNs via Householder Products" (Siems et
al., 2025). Each token t brings n_h keys, values and β's (k_{t,j} unit-norm), and its
transition is the product of n_h generalized Householder matrices, i.e. n_h delta-rule steps:

    S_{t,0} = α_t S_{t-1},   S_t = S_{t,n_h},   o_t = S_tᵀ q_t / √K,
    S_{t,j} = (I - β_{t,j} k_{t,j} k_{t,j}ᵀ) S_{t,j-1} + β_{t,j} k_{t,j} v_{t,j}ᵀ   (j = 1..n_h)

(α_t = 1 unless ``gated``, which takes Gated DeltaNet's decay). n_h = 1 is DeltaNet; more
Householder factors give a richer, non-symmetric transition per token, which helps state
tracking (with ``negative_eigenvalues`` β ∈ (0, 2), each factor may reflect).

The block is DeltaNet's (deltanet.py: short convs, SiLU, L2-normalized q and k, per-head
RMSNorm, optional SiLU output gate) with n_h times as many key, value and β channels. The
recurrence runs on the ``delta_rule`` op over n_h interleaved micro-steps per token: the
decay applies at the first micro-step only, the query reads only at the last (q = 0 at the
others, whose outputs are dropped), and a segment start resets the state before the first.

State: {"conv": the last W - 1 conv inputs [B, W-1, (1 + n_h) HK + n_h HV],
"recurrent": S [B, H, K, V]}.
"""

import jax.numpy as jnp
from flax import nnx

from seqjax.layers.deltanet import DeltaNet
from seqjax.layers.registry import register
from seqjax.ops.delta_rule import delta_rule
from seqjax.typing import Array


def householder_product_delta_rule(
    q: Array,
    k: Array,
    v: Array,
    beta: Array,
    *,
    log_decay: Array | None = None,
    initial_state: Array | None = None,
    segment_starts: Array | None = None,
    scale: float | None = None,
    chunk_size: int = 64,
    implementation: str | None = None,
) -> tuple[Array, Array]:
    """The DeltaProduct recurrence of the module docstring, as n_h delta-rule micro-steps
    per token; returns (o [B, T, H, V], S_T [B, H, K, V]).

    Args:
      q: [B, T, H, K].  k: [B, T, n_h, H, K].  v: [B, T, n_h, H, V].  beta: [B, T, n_h, H].
      log_decay: None or log α_t [B, T, H] (<= 0).
      initial_state, segment_starts, scale, chunk_size, implementation: as ``delta_rule``
        (the chunk size counts micro-steps).
    """
    batch, length, n, heads, key_size = k.shape
    if q.shape != (batch, length, heads, key_size):
        raise ValueError(f"q must be [B, T, H, K] = {(batch, length, heads, key_size)}")

    def micro_steps(t: Array) -> Array:  # [B, T, n_h, ...] -> [B, T * n_h, ...]
        return t.reshape(batch, length * n, *t.shape[3:])

    def at_step(values: Array, step: int, dtype) -> Array:  # [B, T, ...] at micro-step `step`
        slots = jnp.zeros((batch, length, n, *values.shape[2:]), dtype)
        return micro_steps(slots.at[:, :, step].set(values.astype(dtype)))

    o, final_state = delta_rule(
        at_step(q, -1, q.dtype),
        micro_steps(k),
        micro_steps(v),
        micro_steps(beta),
        log_decay=None if log_decay is None else at_step(log_decay, 0, jnp.float32),
        initial_state=initial_state,
        segment_starts=None if segment_starts is None else at_step(segment_starts, 0, bool),
        scale=scale,
        chunk_size=chunk_size,
        implementation=implementation,
    )
    return o.reshape(batch, length, n, heads, v.shape[-1])[:, :, -1], final_state


@register("deltaproduct")
class DeltaProduct(DeltaNet):
    """DeltaProduct (Siems et al., 2025); see the module docstring. x: [B, T, D].

    Options: those of ``deltanet`` plus ``num_householder`` n_h, ``gated`` (Gated DeltaNet's
    decay, with ``dt_min``/``dt_max``); ``chunk_size`` counts micro-steps.
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_householder: int = 2,
        num_heads: int = 2,
        head_dim: int | None = None,
        value_dim: int | None = None,
        conv_width: int = 4,
        negative_eigenvalues: bool = False,
        gated: bool = False,
        output_gate: bool = False,
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
            num_householder=num_householder,
            gated=gated,
            dt_min=dt_min,
            dt_max=dt_max,
        )

    def _recurrence(self, q, k, v, beta, log_decay, initial_state, segment_starts):
        return householder_product_delta_rule(
            q,
            k,
            v,
            beta,
            log_decay=log_decay,
            initial_state=initial_state,
            segment_starts=segment_starts,
            scale=self.head_dim**-0.5,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
        )
