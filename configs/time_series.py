"""Time-series classification on a UCR/UEA dataset whose files ship inside the sktime wheel
(GunPoint by default: 50 training and 150 test series of 150 steps, two classes).

    python train.py --config configs/time_series.py --workdir runs/gunpoint
    python train.py --config configs/time_series.py --config.task.dataset=ItalyPowerDemand \\
        --config.training.batch_size=16
    python train.py --config configs/time_series.py --config.model.head=pooled \
        --config.model.pooling=mean         # the class from the mean hidden state

Datasets: GunPoint, ItalyPowerDemand, ArrowHead, BasicMotions (6 channels), OSULeaf, ACSF1.
The batch size must not exceed the training split (36 series for ArrowHead).
"""

import ml_collections

from seqjax.training import model_defaults, optimizer_defaults, training_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(name="time_series_classification", dataset="GunPoint", seed=0)
    config.model = dict(model_defaults("gru"), pooling=None)
    config.optimizer = optimizer_defaults(warmup_steps=50)
    config.training = training_defaults(
        batch_size=25,
        num_steps=1000,
        log_every=50,
        eval_every=250,
        checkpoint_every=250,
        eval_batch_size=150,
    )
    return config
