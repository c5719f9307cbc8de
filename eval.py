"""Evaluate a trained seqjax model, generate text from it, or run an evaluation suite.

    python eval.py --workdir runs/mqar [--step N]          # test-split metrics: table + JSON
    python eval.py --workdir runs/text --generate "Once upon a time" [--max_new_tokens 200]
    python eval.py --workdir runs/reverse --generate "3 1 4 1 5" [--beam_size 4]   # seq2seq
    python eval.py --workdir runs/text --text held_out.txt [--window 512]
    python eval.py --pretrained DIR --generate "Once upon a time"     # a Hugging Face checkpoint
    python eval.py --pretrained DIR --text held_out.txt               # loss, perplexity, bits/byte
    python eval.py --suite chomsky_regular [--models lstm,attention] [--tasks parity_check]
                   [--workdir DIR] [--config.<key>=<value> ...]

The model and task are rebuilt from the workdir's saved config.json (importing the modules
of its ``imports`` first); the report is written to <workdir>/eval/step_<N>.json. A
checkpoint directory (``--pretrained``: config.json, *.safetensors, tokenizer.json) is read
with seqjax.interop.from_pretrained and its tokenizer.json. A forecasting run also reports
its metrics at each forecast step (a table of a few steps; all of them in the JSON).
``--text`` reads the file in windows of ``--window`` tokens, the model's state carried from
each into the next, so the result is that of one pass over the file (seqjax/evaluation.py).
For an encoder–decoder run ``--generate`` is the source to translate, decoded greedily or
with ``--beam_size`` beams (the best of them is printed, with its log-probability); a
language model is continued by ``--generate`` (greedy, sampled, or the best of
``--beam_size`` beams). A checkpoint that is corrupt or holds non-finite values, or metrics
that are not finite, are an error, never a result. A suite (configs/suites.py) trains each
model on each of its tasks into DIR/<task>/<model> (default DIR: runs/suites/<suite>),
resuming unfinished runs, and writes DIR/results.md, DIR/results.json and DIR/plots/*.png;
rows of models or tasks not run this time are kept from the earlier results.json.
"""

import argparse
import json
import sys
from pathlib import Path

SUITES_FILE = Path(__file__).resolve().parent / "configs" / "suites.py"


# What eval.py does (suite, metrics or generate), the options each reads (any other given is
# an error: it would be ignored) and their defaults.
USES = {
    "suite": "--suite",
    "metrics": "test-split metrics",
    "generate": "--generate",
    "text": "--text",
}
READ_BY = dict(
    models={"suite"},
    tasks={"suite"},
    suites_file={"suite"},
    step={"metrics", "generate", "text"},
    batch_size={"metrics"},
    window={"text"},
    max_new_tokens={"generate"},
    beam_size={"generate"},
    temperature={"generate"},
    top_k={"generate"},
    seed={"generate"},
)
DEFAULTS = dict(
    batch_size=250,
    window=512,
    max_new_tokens=200,
    temperature=0.0,
    seed=0,
    suites_file=str(SUITES_FILE),
)


def at_least(minimum: float, kind: type = int):
    def parse(text: str):
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    return parse


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="a train.py output directory")
    parser.add_argument(
        "--pretrained", metavar="DIR", default=None, help="a Hugging Face checkpoint directory"
    )
    parser.add_argument("--step", type=at_least(0), help="checkpoint step (default latest)")
    parser.add_argument("--batch_size", type=at_least(1), help="evaluation batch size (250)")
    parser.add_argument("--generate", metavar="PROMPT", default=None, help="text to continue")
    parser.add_argument("--text", metavar="FILE", default=None, help="score a text file")
    parser.add_argument("--window", type=at_least(1), help="tokens per window of --text (512)")
    parser.add_argument("--max_new_tokens", type=at_least(1), help="tokens to generate (200)")
    parser.add_argument("--beam_size", type=at_least(1), help="beam search with this many beams")
    parser.add_argument("--temperature", type=at_least(0, float), help="0 (default): greedy")
    parser.add_argument("--top_k", type=at_least(1), help="sample from the k most likely")
    parser.add_argument("--seed", type=at_least(0), help="sampling seed (0)")
    parser.add_argument("--suite", default=None, help="train and compare models on a suite")
    parser.add_argument("--models", default=None, help="comma-separated models for --suite")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks of the suite")
    parser.add_argument("--suites_file", help="where suites are (configs/suites.py)")
    arguments, rest = parser.parse_known_args(argv)
    from seqjax.training.config import ConfigError, parse_overrides

    if rest and arguments.suite is None:
        parser.error(f"unrecognized argument {rest[0]!r} (--config.* overrides need --suite)")
    try:
        overrides = parse_overrides(rest)
    except ConfigError as error:
        parser.error(str(error))
    if arguments.suite is None and arguments.workdir is None and arguments.pretrained is None:
        parser.error("give --workdir (a training run), --pretrained DIR or --suite NAME")
    if arguments.pretrained is not None and arguments.workdir is not None:
        parser.error("give --workdir or --pretrained, not both")
    chosen = [n for n in ("suite", "generate", "text") if getattr(arguments, n) is not None]
    if len(chosen) > 1:
        parser.error(f"give {' or '.join('--' + name for name in chosen)}, not both")
    use = chosen[0] if chosen else "metrics"
    if arguments.pretrained is not None:
        if use == "suite":
            parser.error("--pretrained does not apply to --suite (which trains its models)")
        if use == "metrics":
            parser.error("--pretrained needs --generate PROMPT or --text FILE")
        if arguments.step is not None:
            parser.error("--step applies only to --workdir (a checkpoint of a training run)")
    for name, uses in READ_BY.items():
        if getattr(arguments, name) is not None and use not in uses:
            parser.error(f"--{name} applies only to {' or '.join(USES[u] for u in sorted(uses))}")
        if getattr(arguments, name) is None and name in DEFAULTS:
            setattr(arguments, name, DEFAULTS[name])
    return arguments, overrides


def run_suite(arguments: argparse.Namespace, overrides: list[str]) -> int:
    from seqjax import suites
    from seqjax.evaluation import NonFiniteResultError
    from seqjax.training.checkpoint import CheckpointError, quiet_background_failures
    from seqjax.training.config import ConfigError
    from seqjax.training.files import WriteError
    from seqjax.training.loop import NonFiniteError

    quiet_background_failures()  # and orbax's warning that a read-only checkpoint is read-only
    try:
        available = suites.load_suites(arguments.suites_file)
        if arguments.suite not in available:
            raise ValueError(f"unknown suite {arguments.suite!r}; suites: {', '.join(available)}")
        suite = available[arguments.suite]
        models = arguments.models.split(",") if arguments.models else None
        tasks = arguments.tasks.split(",") if arguments.tasks else None
        workdir = Path(arguments.workdir or Path("runs") / "suites" / suite.name)
        results = suites.run_suite(
            suite,
            workdir,
            models=models,
            tasks=tasks,
            overrides=overrides,
            root=Path(__file__).resolve().parent,
        )
    except (NonFiniteError, NonFiniteResultError, CheckpointError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print((workdir / suites.RESULTS_MARKDOWN).read_text() if results else "no run finished")
    print(f"saved {workdir / suites.RESULTS_JSON} and plots in {workdir / suites.PLOTS_DIR}")
    return 0


def markdown_table(metrics: dict[str, float]) -> str:
    rows = [f"| {name} | {value:.6g} |" for name, value in metrics.items()]
    return "\n".join(["| metric | value |", "| --- | --- |", *rows])


def horizon_table(by_horizon: dict[str, list[float]]) -> str:
    """The metrics at forecast steps 1, H/4, H/2, 3H/4 and H."""
    horizon = len(next(iter(by_horizon.values())))
    steps = sorted({max(1, round(horizon * part)) for part in (0, 0.25, 0.5, 0.75, 1)})
    rows = [
        f"| {step} | " + " | ".join(f"{values[step - 1]:.6g}" for values in by_horizon.values())
        for step in steps
    ]
    header = "| forecast step | " + " | ".join(by_horizon) + " |"
    return "\n".join([header, "|" + " --- |" * (len(by_horizon) + 1), *(r + " |" for r in rows)])


def load_model(arguments: argparse.Namespace):
    """(model, its tokenizer, what was loaded) from --pretrained or --workdir."""
    from seqjax.data.tokenizer import load_tokenizer
    from seqjax.evaluation import load_run, tokenizer_of
    from seqjax.interop import from_pretrained
    from seqjax.interop.pretrained import checkpoint_directory

    if arguments.pretrained is not None:
        directory = checkpoint_directory(arguments.pretrained)
        tokenizer = load_tokenizer(directory)
        return from_pretrained(directory), tokenizer, f"the checkpoint in {directory}"
    run = load_run(Path(arguments.workdir), step=arguments.step)
    return run.model, tokenizer_of(run.task), f"{run.workdir} at step {run.step}"


def generate_text(arguments: argparse.Namespace) -> str:
    import jax

    from seqjax.models import generate

    if arguments.workdir is not None:
        from seqjax.evaluation import load_run
        from seqjax.training.workdir import load_saved_config

        # The saved config says which model it is; the checkpoint is read once, below.
        if load_saved_config(Path(arguments.workdir)).model.get("head") == "seq2seq":
            return translate(load_run(Path(arguments.workdir), step=arguments.step), arguments)
    if arguments.beam_size is not None:
        raise ValueError("--beam_size applies only to an encoder-decoder run (model.head=seq2seq)")
    model, tokenizer, _ = load_model(arguments)
    prompt = tokenizer.encode(arguments.generate)
    if not len(prompt):
        raise ValueError("the prompt gives no tokens; give a prompt to continue")
    tokens = generate(
        model,
        jax.numpy.asarray(prompt)[None],
        max_new_tokens=arguments.max_new_tokens,
        key=jax.random.key(arguments.seed),
        temperature=arguments.temperature,
        top_k=arguments.top_k,
    )
    return tokenizer.decode(tokens[0])


def translate(run, arguments: argparse.Namespace) -> str:
    """The target an encoder-decoder run decodes for the source ``--generate``: greedy, or
    the best of ``--beam_size`` beams, at most ``--max_new_tokens`` tokens."""
    import jax.numpy as jnp

    from seqjax.models.beam_search import encoder_decoder_beam_search

    if arguments.temperature or arguments.top_k is not None:
        raise ValueError("an encoder-decoder run decodes by search: no --temperature or --top_k")
    task = run.task
    source = jnp.asarray(task.encode_source(arguments.generate))[None]
    result = encoder_decoder_beam_search(
        run.model,
        source,
        start_token=task.start_token,
        end_token=task.end_token,
        beam_size=arguments.beam_size or 1,
        max_length=arguments.max_new_tokens,
    )
    best = result.sequences[0, 0][: int(result.lengths[0, 0])]
    target = " ".join(task.decode_target(best))
    return f"{target}\t(log-probability {float(result.scores[0, 0]):.4f})"


def score_text(arguments: argparse.Namespace) -> str:
    from seqjax.data.tokenizer import encode_bytes, read_file
    from seqjax.evaluation import text_metrics

    contents = read_file(arguments.text, "--text")
    model, tokenizer, source = load_model(arguments)
    tokens = encode_bytes(tokenizer, contents, f"--text {arguments.text}")
    if len(tokens) < 2:
        raise ValueError(f"--text {arguments.text} gives {len(tokens)} token; scoring needs 2")
    metrics = text_metrics(model, tokenizer, tokens, len(contents), window=arguments.window)
    return f"{arguments.text} under {source}\n{markdown_table(metrics)}"


def main(argv: list[str]) -> int:
    arguments, overrides = parse_arguments(argv)
    if arguments.suite is not None:
        return run_suite(arguments, overrides)
    from seqjax.evaluation import NonFiniteResultError, evaluate_forecasts, evaluate_run, load_run
    from seqjax.training.checkpoint import CheckpointError, quiet_background_failures
    from seqjax.training.files import WriteError, write_atomically
    from seqjax.training.workdir import EVAL_DIR

    quiet_background_failures()  # and orbax's warning that a read-only checkpoint is read-only
    try:
        if arguments.generate is not None:
            print(generate_text(arguments))
            return 0
        if arguments.text is not None:
            print(score_text(arguments))
            return 0
        workdir = Path(arguments.workdir)
        run = load_run(workdir, step=arguments.step)
        evaluation = None
        if run.task.kind == "forecasting":
            evaluation = evaluate_forecasts(run, batch_size=arguments.batch_size)
        metrics = evaluate_run(run, batch_size=arguments.batch_size, forecasts=evaluation)
        report = {"step": run.step, "task": run.task.name, "split": "test", "metrics": metrics}
        if evaluation is not None:
            report["by_horizon"] = evaluation.scores.by_horizon
        path = workdir / EVAL_DIR / f"step_{run.step}.json"
        write_atomically(path, json.dumps(report, indent=2) + "\n")
    except (CheckpointError, NonFiniteResultError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{run.task.name} test split ({run.task.num_test_examples} examples), step {run.step}")
    print(markdown_table(metrics))
    if "by_horizon" in report:
        print(horizon_table(report["by_horizon"]))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    from seqjax.training.checkpoint import exit_process

    exit_process(main(sys.argv[1:]))
