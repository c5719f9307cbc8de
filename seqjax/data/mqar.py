"""Multi-query associative recall (MQAR), from Arora et al. 2023, "Zoology: Measuring and
Improving Recall in Efficient Language Models".

Layout of one sequence of T tokens with P key-value pairs:

    k1 v1 k2 v2 ... kP vP | filler, with each key k_i once more at offset 2*g_i after the pairs

Keys are distinct tokens from [1, vocab_size // 2), values distinct tokens from
[vocab_size // 2, vocab_size). The query gaps g_i are distinct slots in [0, (T - 2P) / 2), drawn
without replacement with p(g) ∝ (g + 1)^(power_a - 1), so most queries come soon after the pairs
and a few come late. At a query the target is the key's value (weight 1); every other position
has weight 0 and target 0. Filler tokens are uniform over the whole vocabulary (as in Zoology)
if ``random_non_queries``, else 0.
"""

from __future__ import annotations

import numpy as np

from seqjax.data.base import (
    Batch,
    SyntheticTask,
    check_bool,
    check_float,
    check_int,
    compact_id_dtype,
    register_task,
    sample_without_replacement,
)


@register_task
class MultiQueryAssociativeRecall(SyntheticTask):
    """MQAR: recall the value bound to each key when the key is queried again later."""

    name = "mqar"

    def __init__(
        self,
        *,
        vocab_size: int = 256,
        seq_len: int = 64,
        num_kv_pairs: int = 8,
        power_a: float = 0.01,
        num_train_examples: int = 100_000,
        num_test_examples: int = 1_000,
        seed: int = 0,
        random_non_queries: bool = True,
    ):
        super().__init__(
            num_train_examples=num_train_examples, num_test_examples=num_test_examples, seed=seed
        )
        self.num_kv_pairs = check_int("mqar: option 'num_kv_pairs'", num_kv_pairs, minimum=1)
        self.vocab_size = check_int("mqar: option 'vocab_size'", vocab_size, minimum=1)
        self.seq_len = check_int("mqar: option 'seq_len'", seq_len, minimum=2)
        self.power_a = check_float("mqar: option 'power_a'", power_a)
        self.random_non_queries = check_bool(
            "mqar: option 'random_non_queries'", random_non_queries
        )
        if self.seq_len % 2:
            raise ValueError(f"mqar: option 'seq_len' must be even, got {self.seq_len}")
        if self.num_kv_pairs > self.vocab_size // 2 - 1:
            raise ValueError(
                f"mqar: num_kv_pairs={self.num_kv_pairs} distinct keys need "
                f"vocab_size >= {2 * self.num_kv_pairs + 2} (keys come from [1, vocab_size // 2)),"
                f" got vocab_size={self.vocab_size}"
            )
        if 4 * self.num_kv_pairs > self.seq_len:
            raise ValueError(
                f"mqar: num_kv_pairs={self.num_kv_pairs} needs seq_len >= "
                f"{4 * self.num_kv_pairs} (the pairs plus one query slot pair per key), "
                f"got seq_len={self.seq_len}"
            )

    def generate(self, rng: np.random.Generator, num_examples: int) -> Batch:
        num_pairs = self.num_kv_pairs
        first_value = self.vocab_size // 2
        keys = 1 + sample_without_replacement(rng, first_value - 1, num_pairs, num_examples)
        values = first_value + sample_without_replacement(
            rng, self.vocab_size - first_value, num_pairs, num_examples
        )

        # Gumbel top-k: ranking log p(g) + Gumbel noise picks the slots without replacement, in
        # the order that successive draws from p would pick them (as numpy's choice(p=...)).
        context_len = 2 * num_pairs
        num_slots = (self.seq_len - context_len) // 2
        log_gap_probs = (self.power_a - 1) * np.log(np.arange(1, num_slots + 1))
        scores = log_gap_probs + rng.gumbel(size=(num_examples, num_slots))
        gaps = np.argsort(-scores, axis=1)[:, :num_pairs]
        query_positions = context_len + 2 * gaps

        shape = (num_examples, self.seq_len)
        id_dtype = compact_id_dtype(self.vocab_size)
        if self.random_non_queries:
            inputs = rng.integers(0, self.vocab_size, size=shape, dtype=id_dtype)
        else:
            inputs = np.zeros(shape, dtype=id_dtype)
        inputs[:, 0:context_len:2] = keys
        inputs[:, 1:context_len:2] = values
        np.put_along_axis(inputs, query_positions, keys.astype(id_dtype), axis=1)
        targets = np.zeros(shape, dtype=id_dtype)
        np.put_along_axis(targets, query_positions, values.astype(id_dtype), axis=1)
        weights = np.zeros(shape, dtype=bool)
        np.put_along_axis(weights, query_positions, True, axis=1)
        return {"inputs": inputs, "targets": targets, "weights": weights}
