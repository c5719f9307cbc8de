"""What the layer tests share: the mixer cases every registered mixer is tested in, NumPy
forms of the activations and of a layer's parts, for writing a paper's equations as a
float64 loop over time with a module's own parameters, and the jitted call of a mixer with
tree comparisons."""

import jax
import numpy as np
from flax import nnx
from tolerances import FLOAT32

from seqjax import layers

# Options that keep a mixer small at D = 16, where its defaults do not.
SMALL_OPTIONS = {
    "attention": dict(num_heads=2, cache_length=16),
    "fox_attention": dict(num_heads=2, cache_length=16),
}
# Option combinations that take other paths through a mixer than its defaults.
VARIANTS = [
    ("attention", dict(num_heads=4, num_kv_heads=2, cache_length=16)),
    ("attention", dict(num_heads=2, window=3)),
    ("lstm", dict(peepholes=True)),
    ("lstm", dict(peepholes=True, coupled_input_forget=True)),
    ("lstm", dict(forget_gate=False)),
    ("gru", dict(reset_after=False)),
    ("gru", dict(implementation="deer")),
    ("lstm", dict(implementation="quasi_deer")),
    ("mamba", dict(negative_eigenvalues=True)),
    ("hgrn", dict(forget_lower_bound=0.5)),
    ("hgrn", dict(form="fla", conv_width=4, forget_lower_bound=0.5)),
    ("mamba2", dict(num_groups=2, head_dim=8, state_size=4)),
    ("hgrn2", dict(forget_lower_bound=0.5, expand_ratio=8)),
    ("hgrn2", dict(form="fla", conv_width=4, forget_lower_bound=0.5, expand_ratio=8)),
    ("deltanet", dict(negative_eigenvalues=True)),
    ("gated_deltanet", dict(negative_eigenvalues=True, num_value_heads=4)),
    ("deltaproduct", dict(num_householder=3, gated=True, negative_eigenvalues=True)),
    ("fox_attention", dict(num_heads=4, num_kv_heads=2, window=3, output_gate=True)),
    ("slstm", dict(conv_width=0)),
]
# (name, options): every registered mixer, then the variants.
MIXER_CASES = [(name, SMALL_OPTIONS.get(name, {})) for name in layers.available()] + VARIANTS


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def silu(v):
    return v * sigmoid(v)


def softplus(v):
    return np.log1p(np.exp(v))


def gelu_tanh(v):
    return 0.5 * v * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))


def param(variable):
    """A parameter's value as a float64 NumPy array."""
    return np.asarray(variable[...], np.float64)


def linear(layer, v):
    """An ``nnx.Linear`` applied to v."""
    out = v @ param(layer.kernel)
    return out if layer.bias is None else out + param(layer.bias)


def causal_conv(conv, u):
    """A ``ShortConv`` over u [B, T, C] from zeros, one step at a time."""
    kernel = param(conv.kernel)
    history = np.zeros((u.shape[0], kernel.shape[0] - 1, u.shape[2]))
    out = np.zeros_like(u)
    for t in range(u.shape[1]):
        window = np.concatenate([history, u[:, t : t + 1]], axis=1)
        out[:, t] = np.sum(window * kernel, axis=1)
        history = window[:, 1:]
    return out if conv.bias is None else out + param(conv.bias)


def normalize(v, epsilon, center):
    """Layer norm (center=True) or RMS norm over the last axis, without scale."""
    if center:
        v = v - v.mean(-1, keepdims=True)
    return v / np.sqrt((v**2).mean(-1, keepdims=True) + epsilon)


def heads(t, size):
    """[..., H·size] -> [..., H, size]."""
    return t.reshape(*t.shape[:-1], -1, size)


@nnx.jit
def apply(mixer, x, state=None, segment_starts=None):
    return mixer(x, state=state, segment_starts=segment_starts)


def assert_trees_close(actual, expected, tolerance=FLOAT32):
    """Every leaf of ``actual`` within ``tolerance`` of the same leaf of ``expected``."""
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), **tolerance),
        actual,
        expected,
    )
