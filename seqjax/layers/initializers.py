"""Parameter initializers the layers share beyond those of ``flax.nnx.initializers``."""

import jax
import jax.numpy as jnp
from flax.typing import Initializer

from seqjax.typing import Array


def symmetric_uniform(bound: float) -> Initializer:
    """Uniform in [-bound, bound]; with bound = fan_in^-1/2 it is PyTorch's initialization of
    Conv1d and Linear weights."""

    def init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init
