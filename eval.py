"""Evaluate a trained seqjax model, generate text from it, or run an evaluation suite.

    python eval.py --workdir runs/mqar [--step N]          # test-split metrics: table + JSON
    python eval.py --workdir runs/text --generate "Once upon a time" [--max_new_tokens 200]
    python eval.py --suite chomsky_regular [--models lstm,attention] [--tasks parity_check]
                   [--workdir DIR] [--config.<key>=<value> ...]

The model and task are rebuilt from the workdir's saved config.json; the report is written to
<workdir>/eval/step_<N>.json. A suite (configs/suites.py) trains each model on each of its
tasks into DIR/<task>/<model> (default DIR: runs/suites/<suite>), resuming unfinished runs,
and writes DIR/results.md, DIR/results.json and DIR/plots/*.png.
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
    overrides, index = [], 0
    while index < len(rest):
        item = rest[index]
        if arguments.suite is None or not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r} (--config.* overrides need --suite)")
        key_value = item.removeprefix("--config.")
        if "=" not in key_value:
            if index + 1 == len(rest):
                parser.error(f"{item} needs a value")
            key_value, index = f"{key_value}={rest[index + 1]}", index + 1
        overrides.append(key_value)
        index += 1
    if arguments.suite is None and arguments.workdir is None:
        parser.error("give --workdir (a training run) or --suite NAME")
    return arguments, overrides


def run_suite(arguments: argparse.Namespace, overrides: list[str]) -> int:
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # orbax warns that a read-only checkpoint is read-only
    from seqjax import suites
    from seqjax.training.checkpoint import CheckpointError
    from seqjax.training.config import ConfigError

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
    except (ConfigError, ValueError, FileNotFoundError, CheckpointError) as error:
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
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # orbax warns that a read-only checkpoint is read-only
    from flax import nnx

    from seqjax.evaluation import evaluate, load_run
    from seqjax.models import generate
    from seqjax.training.checkpoint import CheckpointError
    from seqjax.training.files import write_atomically
    from seqjax.training.workdir import EVAL_DIR

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
        graphdef, params = nnx.split(run.model)
        metrics = evaluate(graphdef, params, run.task, batch_size=arguments.batch_size)
    except (ValueError, FileNotFoundError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = {"step": run.step, "task": run.task.name, "split": "test", "metrics": metrics}
    path = workdir / EVAL_DIR / f"step_{run.step}.json"
    write_atomically(path, json.dumps(report, indent=2) + "\n")
    print(f"{run.task.name} test split ({run.task.num_test_examples} examples), step {run.step}")
    print(markdown_table(metrics))
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
