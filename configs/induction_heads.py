"""Induction heads (Olsson et al. 2022; the Mamba paper's length-extrapolation test): recall the
token after a trigger at the trigger's second occurrence; trained at length 64, tested at 64 to
1024.

    python train.py --config configs/induction_heads.py --workdir runs/induction
    python eval.py --suite induction_heads --models attention,mamba,gru
"""

import ml_collections

from seqjax.training import mixer_defaults


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
    config.model = dict(
        mixer="mamba",
        num_layers=2,
        d_model=64,
        mlp_expansion=2,
        norm="rms",
        pooling="last",
        mixers=mixer_defaults(attention=dict(num_heads=2)),
    )
    config.optimizer = dict(
        learning_rate=1e-3,
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
        keep_checkpoints=2,
        eval_batch_size=250,
    )
    return config
