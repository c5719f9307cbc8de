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

from seqjax.training import mixer_defaults


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
