"""cumulative_sum, the in-chunk prefix sum the chunked ops use, equals jnp.cumsum on values
and gradients, for every trailing shape the ops pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import FLOAT32

from seqjax.ops.chunking import cumulative_sum


@pytest.mark.parametrize("shape", [(2, 1), (3, 16, 4), (2, 64, 4, 64), (1, 37, 2, 1)])
def test_cumulative_sum_equals_cumsum(shape):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    np.testing.assert_allclose(cumulative_sum(x), jnp.cumsum(x, axis=1), **FLOAT32)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    grad, expected = (
        jax.grad(lambda x, f=f: jnp.sum(f(x) * cotangent))(x)
        for f in (cumulative_sum, lambda x: jnp.cumsum(x, axis=1))
    )
    np.testing.assert_allclose(grad, expected, **FLOAT32)
