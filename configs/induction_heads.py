"""Induction heads (Olsson et al. 2022; the Mamba paper's length-extrapolation test): recall the
token after a trigger at the trigger's second occurrence; trained at length 64, tested at 64 to
1024.

    python train.py --config configs/induction_heads.py --workdir runs/induction
    python eval.py --suite induction_heads --models attention,mamba,gru
"""

import ml_collections

from seqjax.training import model_defaults, optimizer_defaults, training_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(
        name="induction_heads",
        vocab_size=16,
        min_train_length=64,
        max_train_length=64,
        test_lengths=(64, 128, 256, 512, 1024),
        num_train_examples=100_000,
        num_test_examples=500,
        seed=0,
    )
    config.model = model_defaults("mamba")
    config.optimizer = optimizer_defaults()
    config.training = training_defaults()
    return config
