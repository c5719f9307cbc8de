"""Evaluate a trained seqjax model, or generate text from it.

    python eval.py --workdir runs/mqar [--step N]          # test-split metrics: table + JSON
    python eval.py --workdir runs/text --generate "Once upon a time" [--max_new_tokens 200]

The model and task are rebuilt from the workdir's saved config.json; the report is written to
<workdir>/eval/step_<N>.json.
"""

import argparse
import json
import sys
from pathlib import Path


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a train.py output directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    parser.add_argument("--batch_size", type=int, default=250, help="evaluation batch size")
    parser.add_argument("--generate", metavar="PROMPT", default=None, help="text to continue")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy decoding")
    parser.add_argument("--top_k", type=int, default=None, help="sample from the k most likely")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    return parser.parse_args(argv)


def markdown_table(metrics: dict[str, float]) -> str:
    rows = [f"| {name} | {value:.6g} |" for name, value in metrics.items()]
    return "\n".join(["| metric | value |", "| --- | --- |", *rows])


def main(argv: list[str]) -> int:
    arguments = parse_arguments(argv)
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
