"""Train a seqjax model.

    python train.py [--config configs/mqar.py[:arg]] [--config.<key>=<value> ...] [--workdir DIR]

With no arguments it trains the default MQAR config into runs/<config name>. Running the
same command again resumes from the latest checkpoint in the workdir.
"""

import argparse
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "mqar.py"


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="config file[:arg]")
    parser.add_argument("--workdir", default=None, help="output directory (default runs/NAME)")
    parser.add_argument(
        "--until_step", type=int, default=None, help="checkpoint and exit after this step"
    )
    arguments, rest = parser.parse_known_args(argv)
    overrides, index = [], 0
    while index < len(rest):
        item = rest[index]
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item!r}")
        key_value = item.removeprefix("--config.")
        if "=" not in key_value:
            if index + 1 == len(rest):
                parser.error(f"{item} needs a value")
            key_value, index = f"{key_value}={rest[index + 1]}", index + 1
        overrides.append(key_value)
        index += 1
    return arguments, overrides


def main(argv: list[str]) -> int:
    arguments, overrides = parse_arguments(argv)
    from seqjax.training import ConfigError, load_config, train

    try:
        config = load_config(arguments.config, overrides)
        config_name = Path(arguments.config.partition(":")[0]).stem
        workdir = Path(arguments.workdir or Path("runs") / config_name)
        print(f"training {config.model.mixer} on {config.task.name}; outputs in {workdir}/")
        result = train(config, workdir, until_step=arguments.until_step)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.stopped_by:
        return 130 if result.stopped_by == "SIGINT" else 143
    if result.step < config.training.num_steps:
        print(f"stopped after step {result.step} as asked; run again without --until_step")
        return 0
    print(f"done: step {result.step}, test {result.eval_metrics}")
    print(f"metrics: {workdir / 'metrics.jsonl'}  tensorboard: {workdir / 'tensorboard'}")
    print(f"evaluate: python eval.py --workdir {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
