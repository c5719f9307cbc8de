"""Formal languages of "Neural Networks and the Chomsky Hierarchy" (Delétang et al. 2023):
train on inputs of length 1 to 40, test at lengths 40, 64, 128 and 256.

    python train.py --config configs/chomsky.py --config.model.mixer=lstm --workdir runs/parity
    python train.py --config configs/chomsky.py --config.task.name=reverse_string
    python eval.py --suite chomsky_regular --models lstm,attention   # all regular tasks

The task is any of parity_check, even_pairs, cycle_navigation, modular_arithmetic (regular),
reverse_string, stack_manipulation (deterministic context-free), duplicate_string,
bucket_sort (context-sensitive). Attention uses rotary positions. The paper finds that an
LSTM generalizes to longer inputs on the regular tasks and a Transformer does not; the
measured numbers are in the suite's report.
"""

import ml_collections

from seqjax.training import mixer_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(
        name="parity_check",
        min_train_length=1,
        max_train_length=40,
        test_lengths=(40, 64, 128, 256),
        num_train_examples=100_000,
        num_test_examples=500,
        seed=0,
    )
    config.model = dict(
        mixer="lstm",
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
