"""The heads beyond the causal language model: each objective's sums on padded batches equal
the examples run one by one, the metrics equal what they claim (edit distance, greedy exact
match, regression losses), bad input is refused by name, and each head trains through
train.py's loop and is scored and decoded by eval.py."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tiny_run import ROOT, load_script

from seqjax.data import create_task
from seqjax.models import create_model, generate
from seqjax.models.beam_search import encoder_decoder_beam_search
from seqjax.models.seq2seq import EncoderDecoder
from seqjax.training import load_config, train
from seqjax.training.objectives import (
    CRF,
    CTC,
    Pooled,
    Regression,
    Seq2Seq,
    Token,
    create_task_model,
    edit_distances,
)

# Sums over a batch against the same sums over its rows one at a time: float32 reductions
# in another order.
SUMS = dict(rtol=2e-5, atol=1e-5)
MODEL = dict(mixer="lstm", num_layers=1, d_model=8, mlp_expansion=1, mixers={})


def levenshtein(a, b):
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def test_edit_distances_equal_the_levenshtein_distance():
    rng = np.random.default_rng(0)
    hypotheses = rng.integers(0, 3, (64, 7))
    references = rng.integers(0, 3, (64, 5))
    hypothesis_lengths = rng.integers(0, 8, 64)
    reference_lengths = rng.integers(0, 6, 64)
    distances = edit_distances(
        jnp.asarray(hypotheses),
        jnp.asarray(hypothesis_lengths),
        jnp.asarray(references),
        jnp.asarray(reference_lengths),
    )
    expected = [
        levenshtein(h[:m], r[:n])
        for h, m, r, n in zip(
            hypotheses, hypothesis_lengths, references, reference_lengths, strict=True
        )
    ]
    np.testing.assert_array_equal(distances, expected)


def padded_batch(rows, length):
    """Rows (dicts of per-example arrays, time first) right-padded to ``length``, plus a row
    of padding only, as the last test batch has."""
    batch = {}
    for key in rows[0]:
        arrays = [np.asarray(row[key]) for row in rows]
        padded = [np.pad(a, [(0, length - len(a))] + [(0, 0)] * (a.ndim - 1)) for a in arrays]
        batch[key] = np.stack([*padded, np.zeros_like(padded[0])])
    return {key: jnp.asarray(value) for key, value in batch.items()}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _jitted_sums(objective, graphdef, params, batch):
    return objective.sums(nnx.merge(graphdef, params), batch)


def sums_of(objective, model, batch):
    return _jitted_sums(objective, *nnx.split(model), batch)


def assert_padding_changes_nothing(objective, model, rows, length):
    padded = sums_of(objective, model, padded_batch(rows, length))
    alone = [sums_of(objective, model, padded_batch([row], len(row["mask"]))) for row in rows]
    for name, value in padded.items():
        np.testing.assert_allclose(value, sum(sums[name] for sums in alone), **SUMS, err_msg=name)


def token_rows(rng, lengths, num_classes, vocab_size):
    return [
        {
            "inputs": rng.integers(1, vocab_size, n),
            "mask": np.ones(n, bool),
            "targets": rng.integers(0, num_classes, n),
            "weights": np.ones(n, np.float32),
        }
        for n in lengths
    ]


@pytest.mark.parametrize("head", ["token", "crf"])
def test_bidirectional_taggers_score_right_padded_rows_as_the_examples_alone(head):
    rng = np.random.default_rng(1)
    model = create_model(
        {**MODEL, "bidirectional": True}, head=head, vocab_size=5, rngs=nnx.Rngs(0)
    )
    if head == "crf":  # transitions that matter
        model.transitions[...] = jax.random.normal(jax.random.key(1), (5, 5))
        model.start[...] = jax.random.normal(jax.random.key(2), (5,))
        model.end[...] = jax.random.normal(jax.random.key(3), (5,))
    objective = CRF() if head == "crf" else Token()
    assert_padding_changes_nothing(objective, model, token_rows(rng, [3, 6], 5, 5), 7)


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_pooled_classifiers_score_right_padded_rows_as_the_examples_alone(pooling):
    rng = np.random.default_rng(2)
    model = create_model(
        {**MODEL, "bidirectional": True, "pooling": pooling},
        head="pooled",
        vocab_size=3,
        input_dim=2,
        rngs=nnx.Rngs(0),
    )
    rows = []
    for n in (2, 5):
        weights = np.zeros(n, np.float32)
        weights[-1] = 1  # the classification form: the class at the last position
        rows.append(
            {
                "inputs": rng.normal(size=(n, 2)).astype(np.float32),
                "mask": np.ones(n, bool),
                "targets": np.full(n, rng.integers(0, 3)),
                "weights": weights,
            }
        )
    assert_padding_changes_nothing(Pooled(), model, rows, 6)


def test_ctc_scores_right_padded_rows_as_the_examples_alone():
    rng = np.random.default_rng(3)
    model = create_model(
        {**MODEL, "bidirectional": True}, head="ctc", vocab_size=4, input_dim=1, rngs=nnx.Rngs(0)
    )
    rows = [
        {
            "inputs": rng.normal(size=(frames, 1)).astype(np.float32),
            "mask": np.ones(frames, bool),
            "targets": np.pad(rng.integers(1, 4, labels), (0, 3 - labels)),
            "target_mask": np.arange(3) < labels,
        }
        for frames, labels in [(6, 2), (9, 3)]
    ]
    batch = padded_batch(rows, 10)
    batch["targets"], batch["target_mask"] = batch["targets"][:, :3], batch["target_mask"][:, :3]
    padded = sums_of(CTC(), model, batch)
    alone = [sums_of(CTC(), model, padded_batch([row], len(row["mask"]))) for row in rows]
    for name, value in padded.items():
        np.testing.assert_allclose(value, sum(sums[name] for sums in alone), **SUMS, err_msg=name)
    assert padded["weight_sum"] == 5 and padded["example_sum"] == 2


@pytest.mark.parametrize("loss", ["mse", "mae", "gaussian_nll"])
def test_regression_losses_equal_their_formulas(loss):
    rng = np.random.default_rng(4)
    model = create_model(
        {**MODEL, "regression_loss": loss},
        head="regression",
        num_outputs=2,
        input_dim=3,
        rngs=nnx.Rngs(0),
    )
    batch = {
        "inputs": jnp.asarray(rng.normal(size=(2, 5, 3)), jnp.float32),
        "targets": jnp.asarray(rng.normal(size=(2, 5, 2)), jnp.float32),
        "weights": jnp.asarray([[1, 1, 1, 0, 0], [1, 0, 1, 0, 1]], jnp.float32),
    }
    predictions = np.asarray(model(batch["inputs"])[0], np.float64)
    sums = Regression(loss=loss).sums(model, batch)
    mean = predictions[..., 0] if loss == "gaussian_nll" else predictions
    error = mean - np.asarray(batch["targets"])
    counted = np.asarray(batch["weights"]) > 0
    if loss == "gaussian_nll":
        log_scale = predictions[..., 1]
        expected = 0.5 * math.log(2 * math.pi) + log_scale + 0.5 * (error / np.exp(log_scale)) ** 2
    else:
        expected = error**2 if loss == "mse" else np.abs(error)
    metrics = Regression(loss=loss).metrics(sums)
    np.testing.assert_allclose(metrics["loss"], expected.mean(-1)[counted].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["mse"], (error**2).mean(-1)[counted].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["mae"], np.abs(error).mean(-1)[counted].mean(), rtol=1e-5)


def test_seq2seq_exact_match_counts_the_rows_greedy_decoding_reproduces():
    model = create_model(
        {**MODEL, "mixer": "gru", "bidirectional": True, "cross_attention": "additive"},
        head="seq2seq",
        vocab_size=6,
        source_vocab_size=5,
        rngs=nnx.Rngs(0),
    )
    rng = np.random.default_rng(5)
    source = jnp.asarray(rng.integers(1, 5, (6, 4)))
    greedy = encoder_decoder_beam_search(
        model, source, start_token=1, end_token=2, beam_size=1, max_length=5
    )
    rows = []
    for b in range(6):
        target = np.asarray(greedy.sequences[b, 0][: int(greedy.lengths[b, 0])])
        if b % 2:  # a row greedy decoding does not reproduce
            target = target.copy()
            target[0] = 3 + (target[0] - 2) % 3 if target[0] != 2 else 3
        rows.append(target)
    width = max(len(target) for target in rows)
    targets = np.stack([np.pad(t, (0, width - len(t))) for t in rows])
    decoder_inputs = np.concatenate([np.ones((6, 1), int), targets[:, :-1]], axis=1)
    batch = {
        "inputs": source,
        "mask": jnp.ones((6, 4), bool),
        "decoder_inputs": jnp.asarray(decoder_inputs),
        "targets": jnp.asarray(targets),
        "weights": jnp.asarray(np.arange(width) < np.array([len(t) for t in rows])[:, None]),
    }
    sums = sums_of(Seq2Seq(), model, batch)
    assert sums["example_sum"] == 6
    assert sums["exact_sum"] == 3


def test_a_head_the_task_cannot_use_and_bidirectional_generation_are_refused_by_name(tmp_path):
    task = create_task("mqar", vocab_size=16, seq_len=16, num_kv_pairs=2, num_train_examples=8,
                       num_test_examples=8)  # fmt: skip
    with pytest.raises(ValueError, match=r"model.head='crf' cannot be used with task 'mqar'"):
        create_task_model({**MODEL, "head": "crf"}, task, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"model.head must be one of .*, got 'tags'"):
        create_task_model({**MODEL, "head": "tags"}, task, rngs=nnx.Rngs(0))
    (tmp_path / "corpus.txt").write_text("some bytes to model " * 8)
    text = create_task("text", path=str(tmp_path / "corpus.txt"), seq_len=8)
    with pytest.raises(ValueError, match=r"bidirectional=True cannot train on task 'text'"):
        create_task_model({**MODEL, "bidirectional": True}, text, rngs=nnx.Rngs(0))
    tagger = create_model({**MODEL, "bidirectional": True}, vocab_size=8, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"a bidirectional model has no state to decode with"):
        generate(tagger, jnp.ones((1, 3), jnp.int32), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"decoder block 0 .* cannot decode one token at a time"):
        EncoderDecoder(
            source_vocab_size=5,
            target_vocab_size=6,
            d_model=8,
            encoder=dict(pattern="gru", num_layers=1, bidirectional=True),
            decoder=dict(pattern="gru", num_layers=1, bidirectional=True),
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(ValueError, match=r"bidirectional_merge='sum' given, but bidirectional"):
        create_model({**MODEL, "bidirectional_merge": "sum"}, vocab_size=8, rngs=nnx.Rngs(0))


CONLLU = """# sent_id = {index}
1-2\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
1\tdo\tdo\t{first}\t_\t_\t_\t_\t_\t_
2\tn't\tnot\tPART\t_\t_\t_\t_\t_\t_
3\t{word}\t{word}\t{second}\t_\t_\t_\t_\t_\t_

"""

TINY_TRAINING = [
    "model.d_model=16",
    "model.num_layers=1",
    "model.mlp_expansion=1",
    "training.batch_size=8",
    "training.num_steps=4",
    "training.log_every=2",
    "training.eval_every=4",
    "training.checkpoint_every=4",
    "training.eval_batch_size=8",
    "optimizer.warmup_steps=1",
]


def tiny_run(tmp_path, config, *overrides):
    config = load_config(str(ROOT / "configs" / config), [*TINY_TRAINING, *overrides])
    result = train(config, tmp_path / "run", interactive=False)
    assert result.step == 4
    return result


@pytest.mark.parametrize(
    "config, overrides, metric",
    [
        ("tagging.py:conllu", ["model.head=crf"], "accuracy"),
        (
            "mnist1d.py",
            ["model.head=pooled", "model.pooling=attention", "task.num_samples=100"],
            "accuracy",
        ),  # fmt: skip
        (
            "ctc.py",
            ["task.num_signals=100", "task.num_train_examples=16", "task.num_test_examples=8"],
            "label_error_rate",
        ),
        (
            "smoothing.py",
            [
                "model.regression_loss=gaussian_nll",
                "task.seq_len=8",
                "task.num_train_examples=32",
                "task.num_test_examples=8",
            ],
            "mse",
        ),  # fmt: skip
    ],
    ids=["bilstm_crf_conllu", "mnist1d_attention_pooling", "ctc", "gaussian_regression"],
)
def test_each_head_trains_and_eval_py_scores_it_as_training_did(
    tmp_path, capsys, config, overrides, metric
):
    if config.endswith("conllu"):
        words = itertools.cycle(["it", "so", "now", "me"])
        for split, count in [("train", 24), ("test", 8)]:
            sentences = [
                CONLLU.format(
                    index=i,
                    word=next(words),
                    first="AUX" if i % 2 else "VERB",
                    second="ADV" if i % 3 else "PRON",
                )  # fmt: skip
                for i in range(count)
            ]
            (tmp_path / f"{split}.conllu").write_text("".join(sentences))
        overrides = [
            f"task.train_path={tmp_path / 'train.conllu'}",
            f"task.test_path={tmp_path / 'test.conllu'}",
            *overrides,
        ]
    result = tiny_run(tmp_path, config, *overrides)
    assert math.isfinite(result.eval_metrics[metric])
    capsys.readouterr()  # the training log
    arguments = ["--workdir", str(tmp_path / "run"), "--batch_size", "8"]
    assert load_script("eval").main(arguments) == 0
    table = capsys.readouterr().out
    assert f"| {metric} | {result.eval_metrics[metric]:.6g} |" in table


def test_an_encoder_decoder_trains_and_eval_py_decodes_a_source(tmp_path, capsys):
    tiny_run(
        tmp_path,
        "seq2seq.py",
        "task.max_length=4",
        "task.num_train_examples=32",
        "task.num_test_examples=8",
    )
    capsys.readouterr()  # the training log
    eval_main = load_script("eval").main
    arguments = ["--workdir", str(tmp_path / "run"), "--generate", "3 1 4", "--max_new_tokens"]
    assert eval_main([*arguments, "6"]) == 0
    greedy = capsys.readouterr().out.strip()
    assert eval_main([*arguments, "6", "--beam_size", "3"]) == 0
    beam = capsys.readouterr().out.strip()
    for line in (greedy, beam):
        target, score = line.split("\t")
        assert set(target.split()) <= set("01234567") and "log-probability" in score
    assert eval_main([*arguments, "6", "--temperature", "1"]) == 2
    assert "no --temperature or --top_k" in capsys.readouterr().err
    assert eval_main(["--workdir", str(tmp_path / "run"), "--generate", "3 x"]) == 2
    assert "has symbol(s) 'x' this task does not have" in capsys.readouterr().err
