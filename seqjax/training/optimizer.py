"""AdamW with linear warmup, cosine decay and global-norm gradient clipping.

Config keys (``config.optimizer``): learning_rate, warmup_steps, end_learning_rate_ratio,
b1, b2, eps, weight_decay, grad_clip_norm (0 disables clipping). Weight decay applies to
matrices only (not to biases, norm scales or other vectors).
"""

from collections.abc import Mapping
from typing import Any

import jax
import optax


def learning_rate_schedule(config: Mapping[str, Any], num_steps: int) -> optax.Schedule:
    """0 -> learning_rate over warmup_steps, then cosine to learning_rate * end ratio."""
    warmup = min(config["warmup_steps"], max(num_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config["learning_rate"],
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
        end_value=config["learning_rate"] * config["end_learning_rate_ratio"],
    )


def create_optimizer(config: Mapping[str, Any], num_steps: int) -> optax.GradientTransformation:
    """The optimizer described by ``config.optimizer`` for a run of ``num_steps`` steps."""
    adamw = optax.adamw(
        learning_rate_schedule(config, num_steps),
        b1=config["b1"],
        b2=config["b2"],
        eps=config["eps"],
        weight_decay=config["weight_decay"],
        mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
    )
    if config["grad_clip_norm"]:
        return optax.chain(optax.clip_by_global_norm(config["grad_clip_norm"]), adamw)
    return adamw
