"""Text with pretrained checkpoints: eval.py --pretrained --generate / --text with the
checkpoint's tokenizer.json, scoring a file in windows with the state carried across them,
and fine-tuning from converted weights (model.init_from) with an exact resume. The
checkpoint is a tiny transformers MambaForCausalLM and a BPE tokenizer trained here, both
with a vocabulary of 64."""

import json
import math
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from seqjax.data import create_task
from seqjax.data.tokenizer import load_tokenizer
from seqjax.evaluation import load_run, token_nats
from seqjax.interop import from_pretrained
from seqjax.models import generate
from seqjax.training import ConfigError, load_config, sharding, train
from seqjax.training.trainer import Trainer
from tests.interop.hf_testing import reference_model, torch, transformers
from tests.tolerances import FLOAT32, PRETRAINED_FLOAT32_RELATIVE
from tests.training.tiny_run import (
    ROOT,
    assert_same_params,
    load_script,
    params_of,
    train_losses,
)

tokenizers = pytest.importorskip("tokenizers", reason="the checkpoints' tokenizer library")

VOCAB = 64
WORDS = (
    "the cat sat on a mat dog log bird flew over hill sun rose and fell into sea while fish swam"
).split()
FINE_TUNE = [
    "task.seq_len=32",
    "training.batch_size=8",
    "training.num_steps=4",
    "training.log_every=1",
    "training.eval_every=0",
    "training.checkpoint_every=0",
    "training.eval_batch_size=8",
    "optimizer.warmup_steps=0",
    "optimizer.learning_rate=3e-3",
]


def fine_tune(config, workdir, **options):
    """train() on one device (compiling the step for 8 costs most of the test's time)."""
    mesh = sharding.create_mesh(config.mesh, devices=jax.devices()[:1])
    return train(config, workdir, interactive=False, mesh=mesh, **options)


def words(count: int, seed: int) -> str:
    return " ".join(np.random.default_rng(seed).choice(WORDS, count))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(transformers model, checkpoint directory with tokenizer.json, a text file)."""
    directory = tmp_path_factory.mktemp("mamba")
    config = transformers.MambaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        expand=2,
        conv_kernel=4,
        time_step_rank=4,
        intermediate_size=64,
    )
    reference = reference_model(config, directory)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
    tokenizer.decoder = tokenizers.decoders.Metaspace()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["[UNK]"], show_progress=False
    )
    tokenizer.train_from_iterator([words(3000, seed=0)], trainer)
    assert tokenizer.get_vocab_size() == VOCAB
    tokenizer.save(str(directory / "tokenizer.json"))
    corpus = directory.parent / "corpus.txt"
    corpus.write_text(words(200, seed=1) + "\n")
    return reference, directory, corpus


def run_eval(capsys, *arguments):
    """eval.py in this process: (exit status, stdout, stderr)."""
    status = load_script("eval").main([str(a) for a in arguments])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def table(stdout: str) -> dict[str, float]:
    rows = [line.split("|")[1:3] for line in stdout.splitlines() if line.startswith("| ")]
    return {name.strip(): float(value) for name, value in rows[2:]}


def reference_nats(reference, tokens: np.ndarray) -> float:
    """Σ_{t≥1} −log p(x_t | x_<t) from transformers' logits over the whole text."""
    with torch.no_grad():
        logits = reference(torch.as_tensor(tokens[None].astype(np.int64))).logits[0].double()
    log_probs = torch.log_softmax(logits[:-1], dim=-1)
    return -float(log_probs.gather(1, torch.as_tensor(tokens[1:, None].astype(np.int64))).sum())


def test_generate_prints_the_text_of_generates_tokens(checkpoint, capsys):
    reference, directory, _ = checkpoint
    tokenizer, model = load_tokenizer(directory), from_pretrained(directory)
    prompt = "the cat sat on"
    ids = tokenizer.encode(prompt)[None]
    greedy = np.asarray(generate(model, ids, max_new_tokens=12))
    with torch.no_grad():
        expected = reference.generate(
            torch.as_tensor(ids.astype(np.int64)),
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
        ).numpy()
    np.testing.assert_array_equal(greedy, expected)
    status, out, _ = run_eval(capsys, "--pretrained", directory, "--generate", prompt,
                              "--max_new_tokens", 12)  # fmt: skip
    assert status == 0
    assert out == tokenizer.decode(greedy[0]) + "\n"
    sampled = generate(
        model, ids, max_new_tokens=12, key=jax.random.key(3), temperature=0.8, top_k=5
    )
    status, out, _ = run_eval(capsys, "--pretrained", directory, "--generate", prompt,
                              "--max_new_tokens", 12, "--temperature", 0.8, "--top_k", 5,
                              "--seed", 3)  # fmt: skip
    assert status == 0
    assert out == tokenizer.decode(sampled[0]) + "\n"


def test_text_metrics_equal_transformers(checkpoint, capsys):
    reference, directory, corpus = checkpoint
    tokens = load_tokenizer(directory).encode(corpus.read_text())
    num_bytes = len(corpus.read_bytes())
    status, out, _ = run_eval(capsys, "--pretrained", directory, "--text", corpus,
                              "--window", 64)  # fmt: skip
    assert status == 0
    metrics = table(out)
    nats = reference_nats(reference, tokens)
    loss = nats / (len(tokens) - 1)
    assert metrics["num_scored_tokens"] == len(tokens) - 1
    assert metrics["num_bytes"] == num_bytes
    for name, expected in [
        ("loss", loss),
        ("perplexity", math.exp(loss)),
        ("bits_per_byte", nats / (math.log(2) * num_bytes)),
    ]:
        assert abs(metrics[name] - expected) / expected < PRETRAINED_FLOAT32_RELATIVE, name


def test_windows_with_the_state_carried_equal_one_pass(checkpoint):
    reference, directory, corpus = checkpoint
    model = from_pretrained(directory)
    tokens = load_tokenizer(directory).encode(corpus.read_text())
    one_pass = token_nats(model, tokens, window=len(tokens))
    error = abs(one_pass - reference_nats(reference, tokens)) / one_pass
    assert error < PRETRAINED_FLOAT32_RELATIVE
    for window in (1, 64):  # 64: as test_text_metrics_equal_transformers reads it
        np.testing.assert_allclose(token_nats(model, tokens, window=window), one_pass, **FLOAT32)


@pytest.fixture(scope="module")
def fine_tuned(checkpoint, tmp_path_factory):
    """(config, workdir) of a run of 6 steps fine-tuning the checkpoint on the text file."""
    _, directory, corpus = checkpoint
    config = load_config(
        str(ROOT / "configs" / "text.py"),
        [f"task.path={corpus}", f"model.init_from={directory}", *FINE_TUNE],
    )
    workdir = tmp_path_factory.mktemp("fine_tuned") / "run"
    fine_tune(config, workdir)
    return config, workdir


def test_fine_tuning_starts_from_the_checkpoint_with_its_tokenizer(checkpoint, fine_tuned):
    _, directory, corpus = checkpoint
    config, workdir = fine_tuned
    pretrained = from_pretrained(directory)
    saved = json.loads((workdir / "config.json").read_text())
    recipe = json.loads(pretrained.pretrained.model_config_json)
    assert {key: saved["model"][key] for key in recipe if key != "mixers"} == {
        key: value for key, value in recipe.items() if key != "mixers"
    }
    assert saved["model"]["mixers"]["mamba"] == recipe["mixers"]["mamba"]
    assert saved["model"]["init_from"] == str(directory.resolve())
    assert saved["task"]["tokenizer_file"] == str(directory.resolve() / "tokenizer.json")
    assert saved["task"]["vocab_size"] == VOCAB
    task, tokens = create_task(**config.task), load_tokenizer(directory).encode(corpus.read_text())
    assert (task.kind, task.vocab_size) == ("token_lm", VOCAB)
    assert create_task("text", **task.options()).options() == task.options()
    batch = task.train_batch(0, 8)
    windows = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    slices = np.lib.stride_tricks.sliding_window_view(tokens, windows.shape[1])
    assert all((slices == window).all(axis=1).any() for window in windows)
    sharded = load_config(
        str(ROOT / "configs" / "text.py"),
        [f"task.path={corpus}", f"model.init_from={directory}", *FINE_TUNE, "mesh.fsdp=8"],
    )
    trainer = Trainer(sharded, create_task(**sharded.task), sharding.create_mesh(sharded.mesh))
    params = trainer.initial_state().params
    assert_same_params(params, nnx.state(pretrained))
    assert params["backbone"]["embed"]["embedding"].sharding.spec == PartitionSpec(None, "fsdp")
    losses = [loss for _, loss in train_losses(workdir)]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses


def test_fine_tuning_resumes_exactly_without_reading_the_weights_again(
    checkpoint, fine_tuned, tmp_path
):
    _, directory, corpus = checkpoint
    _, straight = fine_tuned
    copy = shutil.copytree(directory, tmp_path / "checkpoint")
    config = load_config(
        str(ROOT / "configs" / "text.py"),
        [f"task.path={corpus}", f"model.init_from={copy}", *FINE_TUNE],
    )
    resumed = tmp_path / "run"
    assert fine_tune(config, resumed, until_step=2).step == 2
    (copy / "model.safetensors").unlink()  # the workdir's checkpoint takes over
    assert fine_tune(config, resumed).step == 4
    assert_same_params(params_of(straight), params_of(resumed))
    assert train_losses(straight) == train_losses(resumed)


def test_a_fine_tuned_run_scores_text_with_its_tokenizer(checkpoint, fine_tuned, capsys):
    _, _, corpus = checkpoint
    _, workdir = fine_tuned
    run = load_run(workdir)
    tokens = run.task.tokenizer.encode(corpus.read_text())
    nats = token_nats(run.model, tokens, window=64)
    status, out, _ = run_eval(capsys, "--workdir", workdir, "--text", corpus, "--window", 64)
    assert status == 0
    np.testing.assert_allclose(table(out)["loss"], nats / (len(tokens) - 1), rtol=1e-5)
    assert table(out)["num_scored_tokens"] == len(tokens) - 1


def test_bad_input_is_one_line_of_error(checkpoint, tmp_path, capsys):
    _, directory, corpus = checkpoint
    cases = [
        (["--pretrained", tmp_path / "missing", "--text", corpus], "is not a local directory"),
        (["--pretrained", directory, "--text", tmp_path / "missing.txt"], "missing.txt"),
    ]
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(directory / name, no_tokenizer / name)
    cases.append((["--pretrained", no_tokenizer, "--generate", "the"], "tokenizer.json"))
    for arguments, message in cases:
        status, out, err = run_eval(capsys, *arguments)
        assert (status, out) == (2, "")
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    spec = str(ROOT / "configs" / "text.py")
    for init_from, message in [
        (tmp_path, "has no config.json"),
        (no_tokenizer, "has no tokenizer.json"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(spec, [f"task.path={corpus}", f"model.init_from={init_from}"])
    train_main = load_script("train").main
    status = train_main(["--config", spec, f"--config.task.path={corpus}",
                         f"--config.model.init_from={tmp_path}",
                         "--workdir", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "has no config.json" in err, err
    with pytest.raises(ConfigError, match=r"model.d_model=64 \(the checkpoint has 32\)") as error:
        load_config(
            spec,
            [
                f"model.init_from={directory}",
                "model.d_model=64",
                "model.mixers.mamba.state_size=8",  # as the checkpoint's: not an error
                "model.mlp_expansion=1",
            ],
        )
    assert "model.mlp_expansion=1 (the checkpoint's model has no mlp_expansion)" in str(error.value)
    assert "state_size" not in str(error.value)
