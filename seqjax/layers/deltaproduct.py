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

from typing import Any

import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_sizes
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
    segment_starts: Array | None = None,
    **op_options,
) -> tuple[Array, Array]:
    """The DeltaProduct recurrence of the module docstring, as n_h delta-rule micro-steps
    per token; returns (o [B, T, H, V], S_T [B, H, K, V]).

    Args:
      q: [B, T, H, K].  k: [B, T, n_h, H, K].  v: [B, T, n_h, H, V].  beta: [B, T, n_h, H].
      log_decay: None or log α_t [B, T, H] (<= 0).
      segment_starts: bool [B, T]; the state is zeroed before each true position.
      op_options: of ``delta_rule`` (initial_state, scale, chunk_size counting micro-steps,
        implementation, sequence_split).
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
        segment_starts=None if segment_starts is None else at_step(segment_starts, 0, bool),
        **op_options,
    )
    return o.reshape(batch, length, n, heads, v.shape[-1])[:, :, -1], final_state


@register("deltaproduct")
class DeltaProduct(DeltaNet):
    """DeltaProduct (Siems et al., 2025); see the module docstring. x: [B, T, D].

    Options: those of ``deltanet`` plus ``num_householder`` n_h, ``gated`` (Gated DeltaNet's
    decay, with ``dt_min``/``dt_max``); ``chunk_size`` counts micro-steps.
    """

    recurrence = staticmethod(householder_product_delta_rule)

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_householder: int = 2,
        gated: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        **deltanet_options: Any,
    ):
        check_sizes(num_householder=num_householder)
        self.num_householder = num_householder
        super().__init__(d_model, rngs=rngs, **deltanet_options)
        if gated:
            self._add_decay(d_model, dt_min, dt_max, rngs)
