"""seqjax: recurrent, linear-recurrent and state-space sequence models in JAX and Flax NNX."""

__version__ = "0.1.0"
