"""The xLSTM blocks: mLSTM (matrix memory) and sLSTM (scalar memory with memory mixing), and
xLSTM 7B's mLSTM layer.

"xLSTM: Extended Long Short-Term Memory" (Beck et al., 2024). Both cells gate their memory
with an exponential input gate exp(ĩ) and a sigmoid forget gate, normalize it by a
normalizer state and carry a stabilizer m so that exp never overflows:

    mLSTM:  C_t = f_t C_{t-1} + exp(ĩ_t) k_t v_tᵀ,  n_t = f_t n_{t-1} + exp(ĩ_t) k_t,
            h_t = C_tᵀ q_t / max(|n_tᵀ q_t|, 1)                       (ops/mlstm.py)
    sLSTM:  c_t = f_t c_{t-1} + exp(ĩ_t) z_t,  n_t = f_t n_{t-1} + exp(ĩ_t),  h_t = o_t c_t / n_t,
            gates from W x_t + R h_{t-1}, R block-diagonal over heads  (ops/cells.py)

``mlstm`` is the paper's pre-up-projection block: x → up-projection to (u, z) of width
E = expand · D; u → causal conv (width 4) → swish gives q and k, u itself gives v (block-
diagonal projections with blocks of 4, as in the paper); ĩ and f̃ per head from (q, k, v);
multi-head mLSTM with k scaled by 1/√K; a group norm per head; plus a learnable skip of the
conv output; ⊙ swish(z); down-projection to D.

``slstm`` is the sLSTM layer of the paper's post-up-projection block: x → optional causal
conv → swish feeds ĩ and f̃, x itself feeds z̃ and õ (head-wise projections, as in the
paper), the sLSTM, and a group norm per head. The block's up-projection (a gated MLP) is
not part of the mixer: seqjax's backbone already follows every mixer with a pre-norm gated
MLP (``model.mlp_expansion``), which is that part of the paper's block (there with
expansion 4/3).

Forget-gate biases start at linspace(3, 6) so forget gates start near 1 (σ(3) ≈ 0.95);
input-gate biases start near 0 (N(0, 0.1) for mLSTM, 0 for sLSTM) with zero weights for the
mLSTM gates and a zero recurrence for the sLSTM, all as in the xLSTM code.

``mlstm_7b`` is the mLSTM layer of "xLSTM 7B: A Recurrent LLM for Fast and Efficient
Inference" (Beck et al., 2025), built to sit in a pre-norm block followed by a SwiGLU MLP
(the backbone's): no up-projection, conv or skip; q, k (width qk_dim_factor · D), v and the
output-gate pre-activation o (width v_dim_factor · D) are dense projections of x, and the
gates are soft-capped projections of x per head:

    ĩ_t, f̃_t = c · tanh((W_if x_t + b_if) / c)
    h_t = mLSTM(q_t, k_t / √K, v_t, ĩ_t, f̃_t),   y_t = W_out (σ(o_t) ⊙ LayerNorm_heads(h_t))

with a layer norm of each head's values (a learned scale, no bias). The gate pre-activations
are computed in float32 whatever the input dtype, since they enter exp.

States: mlstm {"conv": [B, W-1, E], "mlstm": MLSTMState (C [B, H, K, K], n [B, H, K],
m [B, H])}; slstm {"conv": [B, W-1, D] (if conv_width > 0), "slstm": SLSTMState (c, n, m, h,
each [B, D])}; mlstm_7b MLSTMState (C [B, H, K, V], n [B, H, K], m [B, H]).
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from seqjax.layers.checks import check_divides, check_number, check_size, check_sizes
from seqjax.layers.conv import ShortConv
from seqjax.layers.heads import merge_heads, split_heads
from seqjax.layers.norms import layer_normalize
from seqjax.layers.partitioning import EMBED, HEADS, linear, param
from seqjax.layers.registry import register
from seqjax.ops import cells
from seqjax.ops.mlstm import MLSTMState, mlstm, zero_mlstm_state
from seqjax.ops.sequence_parallel import SequenceSplit
from seqjax.typing import Array, PyTree

GROUP_NORM_EPSILON = 1e-5


def block_diagonal_linear(x: Array, kernel: Array) -> Array:
    """x [..., G·I] times a block-diagonal matrix given by its blocks ``kernel`` [G, I, O]:
    [..., G·O]; block g maps input features g·I:(g+1)·I to output features g·O:(g+1)·O."""
    groups, size_in, size_out = kernel.shape
    blocks = x.reshape(*x.shape[:-1], groups, size_in)
    return jnp.einsum("...gi,gio->...go", blocks, kernel).reshape(*x.shape[:-1], groups * size_out)


def group_normalize(x: Array, scale: Array) -> Array:
    """Layer norm of each head's features of x [..., H, K] with a learned scale [H, K] and no
    bias (the paper's group norm, one group per head)."""
    return layer_normalize(x, scale, jnp.zeros_like(scale), GROUP_NORM_EPSILON)


def soft_cap(x: Array, cap: float | None) -> Array:
    """c · tanh(x / c), or x itself when ``cap`` is None (Gemma 2's soft-capping)."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def head_layer_normalize(x: Array, scale: Array, epsilon: float) -> Array:
    """Layer norm of each head's features of x [..., H, V] with a learned scale [H·V] and no
    bias, merged to [..., H·V] (xLSTM 7B's multi-head layer norm)."""
    heads, size = x.shape[-2:]
    scale = scale.reshape(heads, size)
    return merge_heads(layer_normalize(x, scale, jnp.zeros_like(scale), epsilon))


def _block_kernel(key: Array, groups: int, size: int, count: int = 1) -> nnx.Param:
    """``count`` block-diagonal kernels [count, G, size, size], LeCun normal over a block;
    the blocks split like the inner width they map."""
    shape = (count, groups, size, size)
    return param(jax.random.normal(key, shape, jnp.float32) * size**-0.5, None, HEADS, None, None)


@register("mlstm")
class MLSTM(nnx.Module):
    """The mLSTM block (Beck et al., 2024); see the module docstring. x: [B, T, D].

    Options: ``num_heads`` H (E = expand · D split into heads of K = E / H), ``expand``,
    ``conv_width``, ``qkv_block_size`` (block size of the block-diagonal q, k, v
    projections; E for dense ones), ``chunk_size`` and ``implementation`` (of ``mlstm``).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_heads: int = 4,
        expand: int = 2,
        conv_width: int = 4,
        qkv_block_size: int = 4,
        chunk_size: int = 64,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(
            num_heads=num_heads, expand=expand, qkv_block_size=qkv_block_size, chunk_size=chunk_size
        )
        self.inner_size = inner = expand * d_model
        check_divides("num_heads", num_heads, "expand * d_model", inner)
        check_divides("qkv_block_size", qkv_block_size, "expand * d_model", inner)
        self.num_heads, self.head_size = num_heads, inner // num_heads
        self.chunk_size, self.implementation = chunk_size, implementation
        self.sequence_split = sequence_split

        self.up_proj = linear(d_model, 2 * inner, EMBED, HEADS, use_bias=False, rngs=rngs)
        self.conv = ShortConv(conv_width, inner, sequence_split=sequence_split, rngs=rngs)
        num_blocks = inner // qkv_block_size
        self.qkv_kernels = _block_kernel(rngs.params(), num_blocks, qkv_block_size, count=3)
        # Gate pre-activations (ĩ, f̃) per head from (q, k, v): zero weights, biases as the paper.
        self.gate_proj = linear(
            3 * inner, 2 * num_heads, None, HEADS, kernel_init=nnx.initializers.zeros, rngs=rngs
        )
        input_bias = 0.1 * jax.random.normal(rngs.params(), (num_heads,))
        forget_bias = jnp.linspace(3.0, 6.0, num_heads)
        self.gate_proj.bias[...] = jnp.concatenate([input_bias, forget_bias])
        self.norm_scale = param(jnp.ones((num_heads, self.head_size), jnp.float32), HEADS, None)
        self.skip = param(jnp.ones((inner,), jnp.float32), HEADS)
        self.down_proj = linear(inner, d_model, HEADS, EMBED, use_bias=False, rngs=rngs)

    def init_state(self, batch_size: int) -> PyTree:
        return {
            "conv": self.conv.init_state(batch_size),
            "mlstm": zero_mlstm_state(batch_size, self.num_heads, self.head_size, self.head_size),
        }

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        u, z = jnp.split(self.up_proj(x), 2, axis=-1)
        conv, conv_state = self.conv(u, state["conv"], segment_starts)
        conv = jax.nn.silu(conv)
        query_kernel, key_kernel, value_kernel = self.qkv_kernels[...]
        q = block_diagonal_linear(conv, query_kernel)
        k = block_diagonal_linear(conv, key_kernel)
        v = block_diagonal_linear(u, value_kernel)
        input_gate, forget_gate = jnp.split(
            self.gate_proj(jnp.concatenate([q, k, v], axis=-1)), 2, axis=-1
        )

        h, mlstm_state = mlstm(
            split_heads(q, self.num_heads),
            split_heads(k, self.num_heads) * self.head_size**-0.5,
            split_heads(v, self.num_heads),
            input_gate,
            forget_gate,
            initial_state=state["mlstm"],
            segment_starts=segment_starts,
            chunk_size=self.chunk_size,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        h = merge_heads(group_normalize(h, self.norm_scale[...]))
        h = (h + self.skip[...] * conv) * jax.nn.silu(z)
        return self.down_proj(h), {"conv": conv_state, "mlstm": mlstm_state}


@register("slstm")
class SLSTM(nnx.Module):
    """The sLSTM layer (Beck et al., 2024); see the module docstring. x: [B, T, D].

    Options: ``num_heads`` (blocks of the recurrence, of the gate projections and of the
    group norm) and ``conv_width`` (0 for no conv in front of the input and forget gates).
    """

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, num_heads: int = 4, conv_width: int = 4):
        check_sizes(num_heads=num_heads)
        check_divides("num_heads", num_heads, "d_model", d_model)
        check_size("conv_width", conv_width, minimum=0)
        self.num_heads = num_heads
        self.head_size = head_size = d_model // num_heads
        # The D channels are the heads' own: sLSTM has no up-projection.
        self.conv = ShortConv(conv_width, d_model, rngs=rngs) if conv_width else None
        # Head-wise projections to the gates, in the order of cells.SLSTM_GATES: z̃, õ from x
        # and ĩ, f̃ from the conv output.
        self.gate_kernels = _block_kernel(rngs.params(), num_heads, head_size, count=4)
        forget_bias = jnp.tile(jnp.linspace(3.0, 6.0, head_size), num_heads)
        gate_bias = jnp.zeros((4, d_model), jnp.float32)
        gate_bias = gate_bias.at[cells.SLSTM_GATES.index("forget")].set(forget_bias)
        self.gate_bias = param(gate_bias, None, HEADS)
        recurrent_kernel = jnp.zeros((num_heads, head_size, 4 * head_size), jnp.float32)
        self.recurrent_kernel = param(recurrent_kernel, HEADS, None, None)
        self.norm_scale = param(jnp.ones((num_heads, head_size), jnp.float32), HEADS, None)

    def init_state(self, batch_size: int) -> PyTree:
        zeros = jnp.zeros((batch_size, self.num_heads * self.head_size), jnp.float32)
        state = {"slstm": cells.SLSTMState(zeros, zeros, zeros, zeros)}
        if self.conv is not None:
            state["conv"] = self.conv.init_state(batch_size)
        return state

    def __call__(
        self, x: Array, *, state: PyTree | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, PyTree]:
        if state is None:
            state = self.init_state(x.shape[0])
        new_state = {}
        conv = x
        if self.conv is not None:
            conv, new_state["conv"] = self.conv(x, state["conv"], segment_starts)
            conv = jax.nn.silu(conv)
        sources = {"cell_input": x, "input": conv, "forget": conv, "output": x}
        biases = jnp.split(self.gate_bias[...].reshape(-1), len(cells.SLSTM_GATES))
        gate_inputs = tuple(  # one [B, T, N] array per gate (seqjax.ops.cells says why)
            block_diagonal_linear(sources[name], kernel) + bias
            for name, kernel, bias in zip(
                cells.SLSTM_GATES, self.gate_kernels[...], biases, strict=True
            )
        )
        hidden, new_state["slstm"] = cells.run_cell(
            functools.partial(cells.slstm_cell, self.recurrent_kernel[...]),
            gate_inputs,
            state["slstm"],
            segment_starts=segment_starts,
        )
        y = merge_heads(group_normalize(split_heads(hidden, self.num_heads), self.norm_scale[...]))
        return y.astype(x.dtype), new_state


@register("mlstm_7b")
class MLSTM7B(nnx.Module):
    """The mLSTM layer of xLSTM 7B (Beck et al., 2025); see the module docstring.
    x: [B, T, D].

    Options: ``num_heads`` H, ``qk_dim_factor`` and ``v_dim_factor`` (the q, k and the v, o
    widths int(factor · D), each split into H heads), ``gate_soft_cap`` c (None: uncapped
    gates), ``norm_epsilon`` (of the multi-head layer norm), ``normalizer_epsilon`` (the ε
    xLSTM 7B adds to the mLSTM's stabilized denominator), ``chunk_size`` and
    ``implementation`` (of ``mlstm``).

    Parameters: ``in_proj`` [D, 2·qk + 2·v] gives (q, k, v, o) in that order, ``gate_proj``
    [D, 2H] (ĩ, f̃) with a bias; the gates start as in the xLSTM 7B code (zero weights,
    input bias -10, forget biases linspace(3, 6)).
    """

    def __init__(
        self,
        d_model: int,
        *,
        rngs: nnx.Rngs,
        num_heads: int = 4,
        qk_dim_factor: float = 0.5,
        v_dim_factor: float = 1.0,
        gate_soft_cap: float | None = 15.0,
        norm_epsilon: float = 1e-6,
        normalizer_epsilon: float = 1e-6,
        chunk_size: int = 64,
        implementation: str | None = None,
        sequence_split: SequenceSplit | None = None,
    ):
        check_sizes(num_heads=num_heads, chunk_size=chunk_size)
        if isinstance(normalizer_epsilon, bool) or not normalizer_epsilon >= 0:
            raise ValueError(f"normalizer_epsilon must be >= 0, got {normalizer_epsilon!r}")
        self.normalizer_epsilon = normalizer_epsilon
        qk_width, v_width = int(d_model * qk_dim_factor), int(d_model * v_dim_factor)
        for name, width in (
            ("qk_dim_factor * d_model", qk_width),
            ("v_dim_factor * d_model", v_width),
        ):
            check_size(name, width)
            check_divides("num_heads", num_heads, name, width)
        if gate_soft_cap is not None:
            check_number("gate_soft_cap", gate_soft_cap)
        check_number("norm_epsilon", norm_epsilon)
        self.num_heads = num_heads
        self.qk_width, self.v_width = qk_width, v_width
        self.key_size, self.value_size = qk_width // num_heads, v_width // num_heads
        self.gate_soft_cap, self.norm_epsilon = gate_soft_cap, norm_epsilon
        self.chunk_size, self.implementation = chunk_size, implementation
        self.sequence_split = sequence_split

        width = 2 * qk_width + 2 * v_width
        self.in_proj = linear(d_model, width, EMBED, HEADS, use_bias=False, rngs=rngs)
        self.gate_proj = linear(
            d_model, 2 * num_heads, EMBED, HEADS, kernel_init=nnx.initializers.zeros, rngs=rngs
        )
        input_bias = jnp.full((num_heads,), -10.0)
        forget_bias = jnp.linspace(3.0, 6.0, num_heads)
        self.gate_proj.bias[...] = jnp.concatenate([input_bias, forget_bias])
        self.norm_scale = param(jnp.ones((v_width,), jnp.float32), HEADS)
        self.out_proj = linear(v_width, d_model, HEADS, EMBED, use_bias=False, rngs=rngs)

    def init_state(self, batch_size: int) -> MLSTMState:
        return zero_mlstm_state(batch_size, self.num_heads, self.key_size, self.value_size)

    def __call__(
        self, x: Array, *, state: MLSTMState | None = None, segment_starts: Array | None = None
    ) -> tuple[Array, MLSTMState]:
        qk_width, v_width = self.qk_width, self.v_width
        cuts = (qk_width, 2 * qk_width, 2 * qk_width + v_width)
        q, k, v, o = jnp.split(self.in_proj(x), cuts, axis=-1)
        gates = soft_cap(self.gate_proj(x.astype(jnp.float32)), self.gate_soft_cap)
        input_gate, forget_gate = jnp.split(gates, 2, axis=-1)
        h, new_state = mlstm(
            split_heads(q, self.num_heads),
            split_heads(k, self.num_heads) * self.key_size**-0.5,
            split_heads(v, self.num_heads),
            input_gate,
            forget_gate,
            initial_state=state,
            segment_starts=segment_starts,
            chunk_size=self.chunk_size,
            epsilon=self.normalizer_epsilon,
            implementation=self.implementation,
            sequence_split=self.sequence_split,
        )
        h = head_layer_normalize(h, self.norm_scale[...], self.norm_epsilon)
        return self.out_proj(jax.nn.sigmoid(o) * h), new_state
