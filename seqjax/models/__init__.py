"""Models: the residual backbone, its heads, and generation; ``from_pretrained`` and
``save_pretrained`` are seqjax.interop's, reached from here too (imported when first used,
as interop builds on models)."""

from seqjax.models.backbone import Backbone, Block, Classifier, LanguageModel, parse_pattern
from seqjax.models.factory import create_model
from seqjax.models.generate import generate, sample_next

__all__ = [
    "Backbone",
    "Block",
    "Classifier",
    "LanguageModel",
    "create_model",
    "from_pretrained",
    "generate",
    "parse_pattern",
    "sample_next",
    "save_pretrained",
]


def __getattr__(name: str):
    if name in ("from_pretrained", "save_pretrained"):
        import seqjax.interop

        return getattr(seqjax.interop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
