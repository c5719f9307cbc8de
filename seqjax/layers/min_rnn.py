"""minGRU and minLSTM: the GRU and LSTM with gates that depend on the input only, so the
recurrence is linear in h and runs in parallel over the sequence.

"Were RNNs All We Needed?" (Feng et al., 2024):

    minGRU   z_t = σ(W_z x_t),  h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ g(W_h x_t)
    minLSTM  f'_t, i'_t = f_t, i_t / (f_t + i_t),  h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ g(W_h x_t)

with f_t = σ(W_f x_t), i_t = σ(W_i x_t) and the paper's positive candidate
g(v) = v + 1/2 for v ≥ 0, σ(v) otherwise. The paper runs these in log space for stability;
here they run through ``linear_recurrence`` with a float32 state, which needs no logs (the
normalized gates are computed from logits, see ``min_lstm_gates``). A linear layer projects
the N hidden units back to D.

State: h [B, N].
"""

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_sizes
from seqjax.layers.partitioning import EMBED, HEADS, linear
from seqjax.layers.registry import register
from seqjax.ops.scan import linear_recurrence
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array


def positive_candidate(v: Array) -> Array:
    """g(v) = v + 1/2 for v ≥ 0, σ(v) for v < 0: continuous, positive, linear for v ≥ 0."""
    return jnp.where(v >= 0, v + 0.5, jax.nn.sigmoid(v))


def min_gru_gates(update_logits: Array) -> tuple[Array, Array]:
    """(decay, input weight) = (1 - z_t, z_t), z_t = σ(logits), in float32."""
    logits = update_logits.astype(jnp.float32)
    return jax.nn.sigmoid(-logits), jax.nn.sigmoid(logits)


def min_lstm_gates(forget_logits: Array, input_logits: Array) -> tuple[Array, Array]:
    """(f'_t, i'_t) = (f_t, i_t) / (f_t + i_t) with f, i = σ(logits), in float32.

    f / (f + i) = σ(log f - log i) with log σ(v) = -softplus(-v), which stays finite and
    accurate when both gates are tiny.
    """
    log_ratio = jax.nn.softplus(-input_logits.astype(jnp.float32)) - jax.nn.softplus(
        -forget_logits.astype(jnp.float32)
    )  # log f - log i
    return jax.nn.sigmoid(log_ratio), jax.nn.sigmoid(-log_ratio)


class InputGatedRNN(nnx.Module):
    """x [B, T, D] → one projection to the candidate's and ``num_gates`` gates' logits
    [B, T, N] each → a linear recurrence h [B, T, N] (its gates depend on the input only) →
    projection to D. State: h [B, N]."""

    num_gates: int

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int | None = None,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(hidden_size=hidden_size)
        self.hidden_size = hidden = hidden_size or d_model
        self.implementation, self.sequence_split = implementation, sequence_split
        self.input_proj = linear(d_model, (self.num_gates + 1) * hidden, EMBED, HEADS, rngs=rngs)
        self.out_proj = linear(hidden, d_model, HEADS, EMBED, rngs=rngs)

    def init_state(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.hidden_size), jnp.float32)

    def __call__(
        self, x: Array, *, state: Array | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, Array]:
        candidate_logits, *gate_logits = jnp.split(self.input_proj(x), self.num_gates + 1, -1)
        decay, input_weight = self.gates(*gate_logits)
        candidate = positive_candidate(candidate_logits.astype(jnp.float32))
        h, final_state = linear_recurrence(
            decay,
            input_weight * candidate,
            initial_state=state,
            segment_starts=segment_starts,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        return self.out_proj(h.astype(x.dtype)), final_state


@register("min_gru")
class MinGRU(InputGatedRNN):
    """minGRU (Feng et al., 2024): h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ g(W_h x_t). x: [B, T, D].

    Options: ``hidden_size`` N (None for D), ``implementation`` (of ``linear_recurrence``).
    """

    num_gates = 1
    gates = staticmethod(min_gru_gates)


@register("min_lstm")
class MinLSTM(InputGatedRNN):
    """minLSTM (Feng et al., 2024): h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ g(W_h x_t), with the
    normalized gates f', i' = f, i / (f + i). x: [B, T, D].

    Options: ``hidden_size`` N (None for D), ``implementation`` (of ``linear_recurrence``).
    """

    num_gates = 2
    gates = staticmethod(min_lstm_gates)
