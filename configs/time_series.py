"""Time-series classification on a UCR/UEA dataset whose files ship inside the sktime wheel
(GunPoint by default: 50 training and 150 test series of 150 steps, two classes).

    python train.py --config configs/time_series.py --workdir runs/gunpoint
    python train.py --config configs/time_series.py --config.task.dataset=ItalyPowerDemand \\
        --config.training.batch_size=16

Datasets: GunPoint, ItalyPowerDemand, ArrowHead, BasicMotions (6 channels), OSULeaf, ACSF1.
The batch size must not exceed the training split (36 series for ArrowHead).
"""

import ml_collections

from seqjax.training import mixer_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(name="time_series_classification", dataset="GunPoint", seed=0)
    config.model = dict(
        mixer="gru",
        num_layers=2,
        d_model=64,
        mlp_expansion=2,
        norm="rms",
        pooling="last",
        mixers=mixer_defaults(attention=dict(num_heads=2)),
    )
    config.optimizer = dict(
        learning_rate=1e-3,
        warmup_steps=50,
        end_learning_rate_ratio=0.0,
        b1=0.9,
        b2=0.98,
        eps=1e-8,
        weight_decay=0.1,
        grad_clip_norm=1.0,
    )
    config.training = dict(
        batch_size=25,
        num_steps=1000,
        log_every=50,
        eval_every=250,
        checkpoint_every=250,
        keep_checkpoints=2,
        eval_batch_size=150,
    )
    return config
