"""Shared type aliases and the letter legend used in shape docstrings.

Shapes are written in brackets, batch first:

    B  batch size                   T  sequence length (Tq, Tk: query / key lengths)
    D  model width (d_model)        N  recurrent state width of a cell or scan
    H  query heads                  G  key/value heads (grouped-query attention, H % G == 0)
    K  key / query head dimension   V  value head dimension
    F  feature dimensions of an elementwise recurrence (any trailing shape)
    C  number of classes / outputs  L  cache length of an attention layer
    E  inner (expanded) width of a block   W  width of a short causal convolution
    P  head width of a Mamba-2 state [N, P]
"""

from typing import Any, TypeAlias

import jax

Array: TypeAlias = jax.Array
PyTree: TypeAlias = Any
DType: TypeAlias = Any
