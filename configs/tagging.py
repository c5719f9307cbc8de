"""Sequence labelling: a tag at every token, read with context from both sides (the
bidirectional RNN of Schuster & Paliwal 1997; the BiLSTM-CRF of Huang et al. 2015 and Lample
et al. 2016).

    python train.py --config configs/tagging.py --workdir runs/tagging_bilstm
    python train.py --config configs/tagging.py --config.model.bidirectional=false
    python train.py --config configs/tagging.py --config.model.head=crf
    python train.py --config configs/tagging.py:conllu --config.task.train_path=train.conllu \
        --config.task.test_path=test.conllu --workdir runs/upos
    python train.py --config configs/tagging.py:tsv --config.task.train_path=train.tsv \
        --config.task.test_path=test.tsv --config.model.mixer=mamba
    python eval.py --suite tagging --models lstm,mamba

Without an argument the task is ``two_sided_tagging``: each token's tag is the sum of its
two neighbours' symbols modulo 4, so a causal model, which has not yet read the right
neighbour, can do little better than chance (0.29 at these lengths) and a bidirectional one
can be exact. With ``conllu`` or ``tsv`` the task reads the files given (a CoNLL-U column,
``upos`` by default, or ``word<TAB>tag`` lines), the word vocabulary and tag set from the
training file. Measured with these defaults (1000 steps of batch 32, 2 CPU cores; ``eval.py
--suite tagging``): test accuracy 1.000 for the bidirectional LSTM, with and without the
CRF, against 0.289 for the causal LSTM; bidirectional Mamba 1.000 (CRF 1.000), causal 0.288.
The same task written as CoNLL-U files and read with ``:conllu``: BiLSTM-CRF 1.000 and
bidirectional Mamba 1.000.
"""

import ml_collections

from seqjax.training import model_defaults, optimizer_defaults, training_defaults

FILE_FORMATS = ("conllu", "tsv")


def get_config(source: str = "generated") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    if source == "generated":
        config.task = dict(
            name="two_sided_tagging",
            num_symbols=16,
            num_labels=4,
            min_length=8,
            max_length=32,
            num_train_examples=10_000,
            num_test_examples=1000,
            seed=0,
        )
    elif source in FILE_FORMATS:
        config.task = dict(
            name="tagging_file",
            train_path="",
            test_path="",
            format=source,
            column=None,
            max_length=128,
            lowercase=False,
            min_word_count=1,
            seed=0,
        )
    else:
        raise ValueError(f"configs/tagging.py takes 'generated', 'conllu' or 'tsv', got {source!r}")
    config.model = model_defaults("lstm", bidirectional=True)
    config.optimizer = optimizer_defaults(learning_rate=3e-3)
    config.training = training_defaults(batch_size=32, num_steps=1000, eval_every=250)
    return config
