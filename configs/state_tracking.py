"""State tracking: the word problem of a group (Merrill et al. 2024; Grazzi et al. 2025). Input
group elements, output the running product at every position; trained at length 40, tested at
40, 64, 128 and 256.

    python train.py --config configs/state_tracking.py --config.task.group=Z2 \\
        --config.model.mixer=mamba --config.model.mixers.mamba.negative_eigenvalues=True
    python eval.py --suite state_tracking --models mamba,mamba_neg,deltanet,deltanet_neg

Groups: Z2 (parity), Z<m> (addition mod m), S5 (120 permutations), A5 (60). Grazzi et al.
find that linear RNNs whose transition eigenvalues may be negative (mamba_neg, deltanet_neg)
learn parity at every length while the [0, 1] versions do not.
"""

import ml_collections

from seqjax.training import model_defaults, optimizer_defaults, training_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(
        name="word_problem",
        group="Z2",
        min_train_length=40,
        max_train_length=40,
        test_lengths=(40, 64, 128, 256),
        num_train_examples=100_000,
        num_test_examples=500,
        seed=0,
    )
    config.model = model_defaults("mamba")
    config.optimizer = optimizer_defaults()
    config.training = training_defaults()
    return config
