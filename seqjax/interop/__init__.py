"""Conversion to and from other formats: Hugging Face checkpoint directories (pretrained.py,
one converter per transformers model_type in huggingface/) and the safetensors files they
hold."""

from seqjax.interop.pretrained import (
    PretrainedError,
    from_pretrained,
    save_pretrained,
    supported_model_types,
)

__all__ = ["PretrainedError", "from_pretrained", "save_pretrained", "supported_model_types"]
