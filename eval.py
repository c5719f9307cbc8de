"""Evaluate a trained seqjax model, generate text from it, or run an evaluation suite.

    python eval.py --workdir runs/mqar [--step N]          # test-split metrics: table + JSON
    python eval.py --workdir runs/text --generate "Once upon a time" [--max_new_tokens 200]
    python eval.py --suite chomsky_regular [--models lstm,attention] [--tasks parity_check]
                   [--workdir DIR] [--config.<key>=<value> ...]

The model and task are rebuilt from the workdir's saved config.json (importing the modules
of its ``imports`` first); the report is written to <workdir>/eval/step_<N>.json. A
checkpoint that is corrupt or holds non-finite values, or metrics that are not finite, are an
error, never a result. A suite (configs/suites.py) trains each model on each of its tasks
into DIR/<task>/<model> (default DIR: runs/suites/<suite>), resuming unfinished runs, and
writes DIR/results.md, DIR/results.json and DIR/plots/*.png; rows of models or tasks not run
this time are kept from the earlier results.json.
"""

import argparse
import json
import sys
from pathlib import Path

SUITES_FILE = Path(__file__).resolve().parent / "configs" / "suites.py"


# What eval.py does (suite, metrics or generate), the options each reads (any other given is
# an error: it would be ignored) and their defaults.
USES = {"suite": "--suite", "metrics": "test-split metrics", "generate": "--generate"}
READ_BY = dict(
    models={"suite"},
    tasks={"suite"},
    suites_file={"suite"},
    step={"metrics", "generate"},
    batch_size={"metrics"},
    max_new_tokens={"generate"},
    temperature={"generate"},
    top_k={"generate"},
    seed={"generate"},
)
DEFAULTS = dict(
    batch_size=250, max_new_tokens=200, temperature=0.0, seed=0, suites_file=str(SUITES_FILE)
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
    parser.add_argument("--step", type=at_least(0), help="checkpoint step (default latest)")
    parser.add_argument("--batch_size", type=at_least(1), help="evaluation batch size (250)")
    parser.add_argument("--generate", metavar="PROMPT", default=None, help="text to continue")
    parser.add_argument("--max_new_tokens", type=at_least(1), help="tokens to generate (200)")
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
    if arguments.suite is None and arguments.workdir is None:
        parser.error("give --workdir (a training run) or --suite NAME")
    if arguments.suite is not None and arguments.generate is not None:
        parser.error("give --suite or --generate, not both")
    use = (
        "suite" if arguments.suite else "generate" if arguments.generate is not None else "metrics"
    )
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


def main(argv: list[str]) -> int:
    arguments, overrides = parse_arguments(argv)
    if arguments.suite is not None:
        return run_suite(arguments, overrides)
    import jax

    from seqjax.evaluation import NonFiniteResultError, evaluate_run, load_run
    from seqjax.models import generate
    from seqjax.training.checkpoint import CheckpointError, quiet_background_failures
    from seqjax.training.files import WriteError, write_atomically
    from seqjax.training.workdir import EVAL_DIR

    quiet_background_failures()  # and orbax's warning that a read-only checkpoint is read-only
    workdir = Path(arguments.workdir)
    try:
        run = load_run(workdir, step=arguments.step)
        if arguments.generate is not None:
            if run.task.kind != "lm":
                raise ValueError(
                    f"--generate needs a byte-level language model; this workdir's task is "
                    f"{run.task.name!r}"
                )
            prompt = list(arguments.generate.encode("utf-8"))
            tokens = generate(
                run.model,
                jax.numpy.asarray([prompt]),
                max_new_tokens=arguments.max_new_tokens,
                key=jax.random.key(arguments.seed),
                temperature=arguments.temperature,
                top_k=arguments.top_k,
            )
            print(bytes(int(t) for t in tokens[0]).decode("utf-8", errors="replace"))
            return 0
        metrics = evaluate_run(run, batch_size=arguments.batch_size)
        report = {"step": run.step, "task": run.task.name, "split": "test", "metrics": metrics}
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
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    from seqjax.training.checkpoint import exit_process

    exit_process(main(sys.argv[1:]))
