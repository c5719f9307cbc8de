"""Nonlinear recurrent token mixers: Elman, LSTM and GRU over the cells in ``ops/cells.py``.

Each mixer projects x [B, T, D] to the cell's gate inputs for all steps at once, scans the
cell with ``run_cell`` and projects the hidden states [B, T, N] back to D.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_sizes
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.layers.registry import register
from seqjax.ops import cells
from seqjax.typing import Array, PyTree


def _batch_zeros(batch_size: int, size: int) -> Array:
    return jnp.zeros((batch_size, size), jnp.float32)


class _RecurrentMixer(nnx.Module):
    """Shared input/output projections and a hidden vector [B, N] as the state; subclasses
    set ``num_gates`` and define ``cell()`` (and ``init_state`` for another state).

    Options: ``hidden_size`` N (None for D) and ``implementation`` (of ``run_cell``: the
    sequential scan, or "deer" / "quasi_deer", Newton iterations over the whole sequence).
    """

    num_gates: int

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        hidden_size: int | None = None,
        implementation: str | None = None,
    ):
        check_sizes(hidden_size=hidden_size)
        self.implementation = implementation
        self.hidden_size = hidden_size = hidden_size or d_model
        num_gates = self.num_gates
        self.input_proj = linear(d_model, num_gates * hidden_size, EMBED, HEADS, rngs=rngs)
        # Split like the input projection: each device forms its share of the gates.
        self.recurrent_kernel = param(
            _stacked_orthogonal(rngs.params(), hidden_size, num_gates), None, HEADS
        )
        self.output_proj = linear(hidden_size, d_model, HEADS, EMBED, rngs=rngs)

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        # One [B, T, N] array per gate (seqjax.ops.cells says why).
        gate_inputs = tuple(jnp.split(self.input_proj(x), self.num_gates, axis=-1))
        hidden, final_state = cells.run_cell(
            self.cell(), gate_inputs, state, segment_starts=segment_starts,
            implementation=self.implementation,
        )  # fmt: skip
        return self.output_proj(hidden.astype(x.dtype)), final_state

    def init_state(self, batch_size: int) -> PyTree:
        return _batch_zeros(batch_size, self.hidden_size)


def _stacked_orthogonal(key, size: int, num_gates: int) -> Array:
    """[N, num_gates * N]: an orthogonal N x N block per gate (Saxe et al., 2014)."""
    init = nnx.initializers.orthogonal()
    keys = jax.random.split(key, num_gates)
    return jnp.concatenate([init(k, (size, size)) for k in keys], axis=1)


@register("elman")
class Elman(_RecurrentMixer):
    """Elman network ("Finding Structure in Time", Elman 1990): h_t = tanh(W x_t + R h_{t-1} + b).

    Options: ``hidden_size`` N (None for D). State: the hidden vector [B, N].
    """

    num_gates = 1

    def cell(self):
        return functools.partial(cells.elman_cell, self.recurrent_kernel[...])


@register("lstm")
class LSTM(_RecurrentMixer):
    """LSTM (Hochreiter & Schmidhuber 1997) with the variants of Greff et al. 2017.

    c_t = f_t ⊙ c_{t-1} + i_t ⊙ z_t,  h_t = o_t ⊙ tanh(c_t). Options: ``hidden_size`` N (None
    for D), ``peepholes``, ``coupled_input_forget`` (f = 1 - i) and ``forget_gate=False``
    (f = 1). The forget gate bias starts at ``forget_bias`` (Jozefowicz et al., 2015).
    State: (h, c), each [B, N].
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        peepholes: bool = False,
        coupled_input_forget: bool = False,
        forget_gate: bool = True,
        forget_bias: float = 1.0,
        **rnn_options: Any,
    ):
        self.gate_names = cells.lstm_gate_names(
            coupled_input_forget=coupled_input_forget, forget_gate=forget_gate
        )
        self.num_gates = len(self.gate_names)
        self.coupled_input_forget = coupled_input_forget
        self.forget_gate = forget_gate
        super().__init__(d_model, rngs=rngs, **rnn_options)
        hidden_size = self.hidden_size
        if "forget" in self.gate_names:
            start = self.gate_names.index("forget") * hidden_size
            bias = self.input_proj.bias[...]
            self.input_proj.bias[...] = bias.at[start : start + hidden_size].set(forget_bias)
        self.peepholes = (
            param(jnp.zeros((len(self.gate_names) - 1, hidden_size), jnp.float32), None, HEADS)
            if peepholes
            else None
        )

    def cell(self):
        weights = cells.LSTMWeights(
            self.recurrent_kernel[...], None if self.peepholes is None else self.peepholes[...]
        )
        return functools.partial(
            cells.lstm_cell,
            weights,
            coupled_input_forget=self.coupled_input_forget,
            forget_gate=self.forget_gate,
        )

    def init_state(self, batch_size: int) -> cells.LSTMState:
        zeros = _batch_zeros(batch_size, self.hidden_size)
        return cells.LSTMState(hidden=zeros, cell=zeros)


@register("gru")
class GRU(_RecurrentMixer):
    """GRU (Cho et al. 2014): h_t = (1 - u_t) ⊙ h_{t-1} + u_t ⊙ tanh(W_n x + r_t ⊙ (R_n h + b_n)).

    Options: ``hidden_size`` N (None for D) and ``reset_after``: False applies the reset gate
    before the recurrent product instead, as in the original paper. State: the hidden vector
    [B, N].
    """

    num_gates = 3

    def __init__(
        self, d_model: int, *, rngs: nnx.Rngs, reset_after: bool = True, **rnn_options: Any
    ):
        super().__init__(d_model, rngs=rngs, **rnn_options)
        self.reset_after = reset_after
        self.candidate_bias = param(jnp.zeros((self.hidden_size,), jnp.float32), HEADS)

    def cell(self):
        weights = cells.GRUWeights(self.recurrent_kernel[...], self.candidate_bias[...])
        return functools.partial(cells.gru_cell, weights, reset_after=self.reset_after)
