"""MNIST-1D (Greydanus & Kobak 2024): classify 40-step 1-D signals into ten digits. The signal
enters through a linear input projection; the class is read at the last step, or, with
``model.head=pooled``, from the hidden states pooled over time.

    python train.py --config configs/mnist1d.py --workdir runs/mnist1d_gru
    python train.py --config configs/mnist1d.py --config.model.mixer=lstm
    python eval.py --suite mnist1d --models gru,lstm
    python train.py --config configs/mnist1d.py --config.model.head=pooled \
        --config.model.pooling=attention    # last, mean or attention pooling

4000 training and 1000 test signals, generated offline by the mnist1d package (seed 42). The
paper reports 91% test accuracy for a GRU. Measured with these defaults (1500 steps, about 8
minutes per model on two shared CPU cores): GRU 97.6%, LSTM 96.7% test accuracy; RG-LRU
95.8%, minGRU 87.3%, GLA 69.2%, LRU 67.5%.
"""

import ml_collections

from seqjax.training import model_defaults, optimizer_defaults, training_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(name="mnist1d", num_samples=5000, seed=42)
    config.model = dict(model_defaults("gru", d_model=128), pooling=None)
    config.optimizer = optimizer_defaults(learning_rate=3e-3)
    config.training = training_defaults(batch_size=100, num_steps=1500, eval_batch_size=500)
    return config
