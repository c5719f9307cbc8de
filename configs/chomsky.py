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

from seqjax.training import model_defaults, optimizer_defaults, training_defaults


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
    config.model = model_defaults("lstm")
    config.optimizer = optimizer_defaults()
    config.training = training_defaults()
    return config
