"""Models: the residual backbone, its heads, and generation; ``from_pretrained`` and
``save_pretrained`` are seqjax.interop's, reached from here too (imported when first used,
as interop builds on models)."""

from seqjax.models.backbone import Backbone, Block, Classifier, LanguageModel, parse_pattern
from seqjax.models.beam_search import (
    BeamSearchResult,
    beam_search,
    encoder_decoder_beam_search,
    greedy,
    language_model_beam_search,
)
from seqjax.models.factory import create_model
from seqjax.models.generate import generate, sample_next
from seqjax.models.seq2seq import EncoderDecoder, EncoderMemory

__all__ = [
    "Backbone",
    "BeamSearchResult",
    "Block",
    "Classifier",
    "EncoderDecoder",
    "EncoderMemory",
    "LanguageModel",
    "beam_search",
    "create_model",
    "encoder_decoder_beam_search",
    "from_pretrained",
    "generate",
    "greedy",
    "language_model_beam_search",
    "parse_pattern",
    "sample_next",
    "save_pretrained",
]


def __getattr__(name: str):
    if name in ("from_pretrained", "save_pretrained"):
        import seqjax.interop

        return getattr(seqjax.interop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
