"""Pure JAX sequence ops: no parameters, no Flax. Each op has one reference form."""
