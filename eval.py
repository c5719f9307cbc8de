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


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=None, help="a train.py output directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--batch_size", type=int, default=250, help="evaluation batch size")
    parser.add_argument("--generate", metavar="PROMPT", default=None, help="text to continue")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy decoding")
    parser.add_argument("--top_k", type=int, default=None, help="sample from the k most likely")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--suite", default=None, help="train and compare models on a suite")
    parser.add_argument("--models", default=None, help="comma-separated models for --suite")
    parser.add_argument("--tasks", default=None, help="comma-separated tasks of the suite")
    parser.add_argument("--suites_file", default=str(SUITES_FILE), help="where suites are")
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
