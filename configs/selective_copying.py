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

from seqjax.training import mixer_defaults


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
    config.model = dict(
        mixer="attention",
        num_layers=2,
        d_model=64,
        mlp_expansion=2,
        norm="rms",
        pooling="last",
        mixers=mixer_defaults(attention=dict(num_heads=2)),
    )
    config.optimizer = dict(
        learning_rate=3e-3,
        warmup_steps=100,
        end_learning_rate_ratio=0.0,
        b1=0.9,
        b2=0.98,
        eps=1e-8,
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    config.training = dict(
        batch_size=64,
        num_steps=2000,
        log_every=100,
        eval_every=500,
        checkpoint_every=500,
        keep_checkpoints=3,
        eval_batch_size=250,
    )
    return config
