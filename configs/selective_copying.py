"""Selective copying (Gu & Dao 2023, the Mamba paper, Section 3.1) on a small model.

    python train.py --config configs/selective_copying.py --workdir runs/copy
    python train.py --config configs/selective_copying.py --config.model.mixer=lru

Sixteen-token vocabulary, 8 data tokens scattered over a 56-token context, then 8 copy
markers; accuracy is over the 8 answers (chance is 1/14). The default attention model
reaches at least 99% held-out accuracy in the default 2000 steps (about 6 minutes on two
busy CPU cores). With --config.training.num_steps=600 (measured): attention 95%, lru 66%,
gru 60%, lmu 59%, s5 38%, s4d 37%.
"""

import ml_collections

from seqjax.training import model_defaults, optimizer_defaults, training_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(
        name="selective_copying",
        vocab_size=16,
        seq_len=64,
        num_tokens=8,
        num_train_examples=100_000,
        num_test_examples=1_000,
        seed=0,
    )
    config.model = model_defaults("attention")
    config.optimizer = optimizer_defaults(learning_rate=3e-3)
    config.training = training_defaults(keep_checkpoints=3)
    return config
