"""MNIST-1D (Greydanus & Kobak 2024): classify 40-step 1-D signals into ten digits. The signal
enters through a linear input projection; the class is read at the last step.

    python train.py --config configs/mnist1d.py --workdir runs/mnist1d_gru
    python train.py --config configs/mnist1d.py --config.model.mixer=lstm
    python eval.py --suite mnist1d --models gru,lstm

4000 training and 1000 test signals, generated offline by the mnist1d package (seed 42). The
paper reports 91% test accuracy for a GRU. Measured with these defaults (1500 steps, about 8
minutes per model on two shared CPU cores): GRU 97.6%, LSTM 96.7% test accuracy.
"""

import ml_collections

from seqjax.training import mixer_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(name="mnist1d", num_samples=5000, seed=42)
    config.model = dict(
        mixer="gru",
        num_layers=2,
        d_model=128,
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
        batch_size=100,
        num_steps=1500,
        log_every=100,
        eval_every=500,
        checkpoint_every=500,
        keep_checkpoints=2,
        eval_batch_size=500,
    )
    return config
