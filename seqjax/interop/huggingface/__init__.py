"""One converter per transformers ``model_type``: the config mapped to a seqjax model config,
the weight names mapped to parameter paths, and nothing else (seqjax/interop/pretrained.py
does the reading and writing). Importing this package registers them all."""

from seqjax.interop.huggingface import (
    bamba,  # noqa: F401
    mamba,  # noqa: F401
    mamba2,  # noqa: F401
    recurrent_gemma,  # noqa: F401
    xlstm,  # noqa: F401
)
