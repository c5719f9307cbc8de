"""Encoder–decoder transduction ("Sequence to Sequence Learning with Neural Networks",
Sutskever et al. 2014; the attention of Bahdanau et al. 2015): a bidirectional encoder, a
causal decoder reading it through cross-attention, trained with teacher forcing.

    python train.py --config configs/seq2seq.py --workdir runs/reverse_gru
    python train.py --config configs/seq2seq.py --config.model.cross_attention=final
    python train.py --config configs/seq2seq.py --config.task.transduction=number_words
    python train.py --config configs/seq2seq.py:tsv --config.task.train_path=train.tsv \
        --config.task.test_path=test.tsv
    python eval.py --workdir runs/reverse_gru --generate --source "3 1 4 1 5"
    python eval.py --suite seq2seq --models gru,lstm

Without an argument the task is ``transduction`` (``reverse``, ``duplicate``, ``sort``,
``number_words`` or ``date_format``); with ``tsv``, ``source<TAB>target`` lines of the files
given, read as characters (``task.tokens=words`` for words). ``model.mixer`` and
``model.num_layers`` are the encoder, ``model.decoder_mixer`` and ``model.decoder_num_layers``
the decoder (None: the same). ``model.cross_attention`` is ``additive`` (Bahdanau),
``dot_product`` or ``final`` (no attention: the encoder's last output as a fixed context, Cho
et al. 2014). Exact match counts the test targets greedy decoding reproduces whole. Measured
on ``reverse`` with these defaults (2000 steps of batch 64, 2 CPU cores; ``eval.py --suite
seq2seq --tasks reverse``): additive attention 0.998, dot-product 0.998, no attention 0.537.
"""

import ml_collections

from seqjax.training import model_defaults, optimizer_defaults, training_defaults


def get_config(source: str = "generated") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    if source == "generated":
        config.task = dict(
            name="transduction",
            transduction="reverse",
            min_length=1,
            max_length=20,
            num_symbols=8,
            num_train_examples=100_000,
            num_test_examples=1000,
            seed=0,
        )
    elif source == "tsv":
        config.task = dict(
            name="seq2seq_file",
            train_path="",
            test_path="",
            tokens="chars",
            max_source_length=128,
            max_target_length=128,
            seed=0,
        )
    else:
        raise ValueError(f"configs/seq2seq.py takes 'generated' or 'tsv', got {source!r}")
    config.model = dict(
        model_defaults("gru", head="seq2seq", bidirectional=True, num_layers=1),
        decoder_mixer=None,
        decoder_num_layers=None,
        cross_attention="additive",
    )
    config.optimizer = optimizer_defaults(learning_rate=3e-3)
    config.training = training_defaults(batch_size=64, num_steps=2000)
    return config
