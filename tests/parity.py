"""Helpers for parity tests between two forms of an op: outputs, final state and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
from tolerances import relative_error


def outputs_and_grads(op, arrays: dict, **options):
    """``op(**arrays, **options) -> (output, final_state)``, and the gradients with respect to
    every float array of a fixed random linear functional of the output and final state."""
    differentiable = {
        name: value
        for name, value in arrays.items()
        if value is not None and jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating)
    }
    fixed = {name: value for name, value in arrays.items() if name not in differentiable}

    def loss(differentiable):
        output, final = op(**differentiable, **fixed, **options)
        rng = np.random.default_rng(123)
        output_weights = rng.normal(size=output.shape).astype(np.float32)
        state_weights = rng.normal(size=final.shape).astype(np.float32)
        value = jnp.sum(output.astype(jnp.float32) * output_weights)
        return value + jnp.sum(final * state_weights), (output, final)

    grads, (output, final) = jax.jit(jax.grad(loss, has_aux=True))(differentiable)
    return {"output": output, "final_state": final, "grads": grads}


def assert_relative(actual, expected, bound: float) -> None:
    """Every array's largest error, relative to its largest magnitude, is within ``bound``."""
    errors = jax.tree.map(relative_error, actual, expected)
    worst = max(jax.tree.leaves(errors))
    assert worst <= bound, errors
