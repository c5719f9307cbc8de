"""Models: the residual backbone, its heads, and generation."""

from seqjax.models.backbone import Backbone, Block, Classifier, LanguageModel, parse_pattern
from seqjax.models.factory import create_model
from seqjax.models.generate import generate, sample_next

__all__ = [
    "Backbone",
    "Block",
    "Classifier",
    "LanguageModel",
    "create_model",
    "generate",
    "parse_pattern",
    "sample_next",
]
