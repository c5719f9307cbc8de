"""Train a seqjax model.

    python train.py [--config configs/mqar.py[:arg]] [--config.<key>=<value> ...] [--workdir DIR]

With no arguments it trains the default MQAR config into runs/<config name>. Running the
same command again resumes from the newest intact checkpoint in the workdir.

Exit status: 0 when done (or stopped at --until_step), 2 for a bad command line or config,
1 when training diverged (a non-finite loss or gradient), a file of the run cannot be
written or no checkpoint is intact, 143 / 130 when stopped by SIGTERM / Ctrl-C (after
saving a checkpoint). Every error is one line on stderr.

On several hosts, run the same command on each with the coordinator's address, the number
of processes and this process's id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID in the environment; on SLURM and similar clusters jax finds them itself):

    python train.py --coordinator_address 10.0.0.1:1234 --num_processes 2 --process_id 0 ...
"""

import argparse
import os
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
    parser.add_argument(
        "--coordinator_address",
        default=os.environ.get("JAX_COORDINATOR_ADDRESS"),
        help="host:port of process 0, to train with several processes (jax.distributed)",
    )
    parser.add_argument(
        "--num_processes", type=int, default=_environment_int("JAX_NUM_PROCESSES"),
        help="number of processes (with --coordinator_address)",
    )  # fmt: skip
    parser.add_argument(
        "--process_id", type=int, default=_environment_int("JAX_PROCESS_ID"),
        help="this process's index in [0, num_processes) (with --coordinator_address)",
    )  # fmt: skip
    arguments, rest = parser.parse_known_args(argv)
    from seqjax.training.config import ConfigError, parse_overrides

    try:
        return arguments, parse_overrides(rest)
    except ConfigError as error:
        parser.error(str(error))


def _environment_int(name: str) -> int | None:
    value = os.environ.get(name)
    return None if value is None else int(value)


def initialize_processes(arguments: argparse.Namespace) -> None:
    """Joins the other processes of a multi-process run, if one is asked for."""
    if arguments.coordinator_address is None:
        if arguments.num_processes not in (None, 1) or arguments.process_id not in (None, 0):
            raise ValueError(
                "--num_processes and --process_id need --coordinator_address (host:port of "
                "process 0)"
            )
        return
    import jax

    jax.distributed.initialize(
        arguments.coordinator_address,
        num_processes=arguments.num_processes,
        process_id=arguments.process_id,
    )


def main(argv: list[str]) -> int:
    arguments, overrides = parse_arguments(argv)
    try:
        initialize_processes(arguments)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import jax

    from seqjax.training import load_config, train
    from seqjax.training.checkpoint import CheckpointError, quiet_background_failures
    from seqjax.training.files import WriteError
    from seqjax.training.loop import NonFiniteError

    quiet_background_failures()
    say = print if jax.process_index() == 0 else lambda *_: None
    try:
        config = load_config(arguments.config, overrides)
        config_name = Path(arguments.config.partition(":")[0]).stem
        workdir = Path(arguments.workdir or Path("runs") / config_name)
        say(f"training {config.model.mixer} on {config.task.name}; outputs in {workdir}/")
        result = train(config, workdir, until_step=arguments.until_step)
    except (NonFiniteError, CheckpointError, WriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result.stopped_by:
        return 130 if result.stopped_by == "SIGINT" else 143
    if result.step < config.training.num_steps:
        say(f"stopped after step {result.step} as asked; run again without --until_step")
        return 0
    say(f"done: step {result.step}, test {result.eval_metrics}")
    say(f"metrics: {workdir / 'metrics.jsonl'}  tensorboard: {workdir / 'tensorboard'}")
    say(f"evaluate: python eval.py --workdir {workdir}")
    return 0


if __name__ == "__main__":
    from seqjax.training.checkpoint import exit_process

    exit_process(main(sys.argv[1:]))
