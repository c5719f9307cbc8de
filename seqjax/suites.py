"""Evaluation suites: train a list of models on a family of tasks and compare them.

A ``Suite`` (the suites themselves are defined in ``configs/suites.py``) names a base config
file, its tasks (label -> task options), per-model overrides (a model's mixer options and its
budget) and optionally variants (label -> overrides, e.g. one per width). ``run_suite`` trains
every (task, model, variant) through the normal training loop into
``DIR/<task>/<model>[@<variant>]`` (running it again resumes unfinished runs and skips
finished ones), scores it on the task's test split and, for a length-generalization task, on
the test split of every length in ``test_lengths``, then writes ``DIR/results.json``,
``DIR/results.md`` and PNG plots under ``DIR/plots/``: the suite's metric (accuracy unless it
names another) against test length (or against the variant), and training loss curves. The
rows of an earlier ``results.json`` that this run does not redo (other models or tasks) are
kept. Every file is written to a temporary name and renamed, so none is ever half-written.

A forecasting suite also scores its statistical ``peers`` (``seqjax.forecasting``) on each
task's test split, into ``DIR/<task>/<peer>`` (kept until the task's options change), reports
them in the same tables, and plots each metric by forecast step and a few forecasts against
the truth.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from seqjax import forecasting, layers
from seqjax.data import LengthGeneralizationTask, create_task, default_options
from seqjax.evaluation import evaluate_forecasts, evaluate_run, load_run
from seqjax.training import config as config_lib
from seqjax.training import train
from seqjax.training.files import write_atomically
from seqjax.training.metrics import read_metrics
from seqjax.training.workdir import CHECKPOINT_DIR, check_resume, load_saved_config

RESULTS_JSON, RESULTS_MARKDOWN, PLOTS_DIR = "results.json", "results.md", "plots"
RUN_EVALUATION_FILE = "suite_eval.json"  # per run: its scores at its latest step


@dataclasses.dataclass(frozen=True)
class Suite:
    """A task family, the models it compares by default, and their training budgets.

    ``overrides`` apply to every run, then ``task_overrides[task]`` (a task's budget), then
    ``models[label]`` (if the suite has an entry for the model), then the variant's; all map
    dotted config keys to values
    (``{"training.num_steps": 2000}``). A model label is a registered mixer name, or a
    mixer with a ``negative_eigenvalues`` option followed by ``_neg`` (eigenvalues in
    [-1, 1] instead of [0, 1]), or a key of ``models``.
    """

    name: str
    description: str
    base_config: str  # a config file; a relative path is relative to the repository root
    tasks: Mapping[str, Mapping[str, Any]]
    default_models: tuple[str, ...]
    task_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    models: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    variants: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=lambda: {"": {}})
    variant_axis: str = "variant"  # the x-axis label of the metric-by-variant plot
    metric: str = "accuracy"  # the test metric the report compares (label_error_rate, ...)
    report_metrics: tuple[str, ...] = ()  # the tables' test metrics (default: ``metric``)
    peers: tuple[str, ...] = ()  # statistical forecasters scored beside the models

    def __post_init__(self):
        unknown_tasks = sorted(set(self.task_overrides) - set(self.tasks))
        if unknown_tasks:
            raise ValueError(
                f"suite {self.name!r}: task_overrides for unknown task(s) "
                f"{', '.join(unknown_tasks)}; its tasks: {', '.join(self.tasks)}"
            )
        unknown_peers = sorted(set(self.peers) - set(forecasting.STATISTICAL_PEERS))
        if unknown_peers:
            raise ValueError(
                f"suite {self.name!r}: unknown peer(s) {', '.join(unknown_peers)}; "
                f"the peers are {', '.join(forecasting.STATISTICAL_PEERS)}"
            )


@dataclasses.dataclass
class RunResult:
    task: str
    model: str
    variant: str
    workdir: str  # relative to the suite's directory
    step: int
    test: dict[str, float]  # metrics on the task's test split
    by_length: dict[str, dict[str, float]]  # test length -> metrics (length tasks only)
    max_train_length: int | None
    train_loss: list[tuple[int, float]]
    by_horizon: dict[str, list[float]] = dataclasses.field(default_factory=dict)  # forecasting
    examples: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # a few forecasts
    peer: bool = False  # a statistical forecaster, not a trained model

    @property
    def label(self) -> str:
        return f"{self.model}@{self.variant}" if self.variant else self.model


def load_suites(path: str | os.PathLike) -> dict[str, Suite]:
    """The ``SUITES`` dict of a suites file such as ``configs/suites.py``."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"suites file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"seqjax_suites_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    suites = getattr(module, "SUITES", None)
    if not isinstance(suites, dict):
        raise ValueError(f"suites file {str(path)!r} defines no SUITES dict")
    return suites


def model_overrides(suite: Suite, model: str) -> dict[str, Any]:
    """The config overrides that select ``model`` and give it the suite's budget for it."""
    mixer, negative = model, False
    if mixer not in layers.available() and mixer.endswith("_neg"):
        mixer, negative = mixer.removesuffix("_neg"), True
    if mixer in layers.available():
        overrides = {"model.mixer": mixer}
        if negative:
            if "negative_eigenvalues" not in layers.default_options(mixer):
                raise ValueError(f"model {model!r}: mixer {mixer!r} has no negative_eigenvalues")
            overrides[f"model.mixers.{mixer}.negative_eigenvalues"] = True
    elif model in suite.models:
        overrides = {}
    else:
        raise ValueError(
            f"unknown model {model!r} for suite {suite.name!r}: expected a mixer name "
            f"({', '.join(layers.available())}), a mixer with negative eigenvalues "
            f"('mamba_neg', 'deltanet_neg', ...) or one of {', '.join(suite.models) or '(none)'}"
        )
    return {**overrides, **suite.models.get(model, {})}


def run_config(
    suite: Suite,
    task: str,
    model: str,
    variant: str,
    overrides: Sequence[str] = (),
    *,
    root: Path,
) -> ml_collections.ConfigDict:
    """The training config of one run: the base config with the options of the suite's
    ``task`` (defaults filled in), then the suite's, the task's, the model's and the variant's
    overrides, then the command
    line's ``key=value`` overrides (whose ``imports`` are imported first, so a model may be a
    mixer they register)."""
    base = Path(suite.base_config)
    imports = [override for override in overrides if override.partition("=")[0] == "imports"]
    config = config_lib.load_config(str(base if base.is_absolute() else root / base), imports)
    task_options = suite.tasks[task]
    if "name" not in task_options:
        raise ValueError(f"suite {suite.name!r}: task options {dict(task_options)} have no 'name'")
    task_name = task_options["name"]
    config.task = {"name": task_name, **default_options(task_name), **task_options}
    suite_overrides = {
        **suite.overrides,
        **suite.task_overrides.get(task, {}),
        **model_overrides(suite, model),
        **suite.variants[variant],
    }
    as_text = [
        f"{key}={value if isinstance(value, str) else repr(value)}"
        for key, value in suite_overrides.items()
    ]
    config_lib.apply_overrides(config, [*as_text, *(o for o in overrides if o not in imports)])
    return config


def run_suite(
    suite: Suite,
    workdir: str | os.PathLike,
    *,
    models: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    overrides: Sequence[str] = (),
    root: str | os.PathLike = ".",
    log: Callable[[str], None] = print,
) -> list[RunResult]:
    """Trains and scores every (task, model, variant) of ``suite`` (or only ``tasks`` of its
    tasks) and writes the report.

    Returns the results of the runs that finished; a run stopped by SIGTERM or Ctrl-C stops
    the suite after writing the report of the runs done so far.
    """
    models = tuple(models or suite.default_models)
    unknown_tasks = sorted(set(tasks or ()) - set(suite.tasks))
    if unknown_tasks:
        raise ValueError(
            f"tasks: suite {suite.name!r} has no task {', '.join(map(repr, unknown_tasks))}; "
            f"its tasks: {', '.join(suite.tasks)}"
        )
    workdir, root = Path(workdir), Path(root)
    # Every config is built, so every error is raised, before anything trains.
    runs = [
        (label, model, variant, run_config(suite, label, model, variant, overrides, root=root))
        for label in suite.tasks
        if not tasks or label in tasks
        for model in models
        for variant in suite.variants
    ]
    used = set().union(*(config_lib.used_mixers(config.model) for *_, config in runs))
    config_lib.check_mixer_overrides([o.partition("=")[0] for o in overrides], used)
    for task_label, model, variant, config in runs:  # a changed task or model is refused now
        run_dir = workdir / task_label / (f"{model}@{variant}" if variant else model)
        checkpoints = run_dir / CHECKPOINT_DIR
        check_resume(
            run_dir, config, has_checkpoint=checkpoints.is_dir() and any(checkpoints.iterdir())
        )
    earlier = earlier_results(suite, workdir)
    results = []
    scored_peers = set()

    def suite_log(message: str) -> None:
        log(f"[{suite.name}] {message}")

    for task_label, model, variant, config in runs:
        if suite.peers and task_label not in scored_peers:
            scored_peers.add(task_label)
            for peer in suite.peers:
                result = score_peer(peer, task_label, config.task, workdir=workdir, log=suite_log)
                suite_log(f"{task_label} / {peer}: {summary(result, suite.metric)}")
                results.append(result)
            write_report(suite, merged(earlier, results), workdir)
        label = f"{model}@{variant}" if variant else model
        run_dir = workdir / task_label / label
        if not is_finished(run_dir, config):
            log(f"[{suite.name}] {task_label} / {label}: training into {run_dir}")
            if train(config, run_dir, interactive=False).stopped_by:
                write_report(suite, merged(earlier, results), workdir)
                return results
        result = score_run(run_dir, task_label, model, variant, workdir=workdir)
        log(f"[{suite.name}] {task_label} / {label}: {summary(result, suite.metric)}")
        results.append(result)
        write_report(suite, merged(earlier, results), workdir)
    return results


def earlier_results(suite: Suite, workdir: Path) -> list[RunResult]:
    """The runs of the results.json that an earlier run of ``suite`` wrote in ``workdir``."""
    path = workdir / RESULTS_JSON
    if not path.exists():
        return []
    report = json.loads(path.read_text())
    if report.get("suite") != suite.name:
        raise ValueError(
            f"{path} holds the results of suite {report.get('suite')!r}, not {suite.name!r}; "
            "use another --workdir"
        )
    return [
        RunResult(**{**run, "train_loss": [tuple(point) for point in run["train_loss"]]})
        for run in report["runs"]
    ]


def merged(earlier: Sequence[RunResult], results: Sequence[RunResult]) -> list[RunResult]:
    """``earlier`` with each run that ``results`` redid replaced, then the new runs."""
    runs = {(run.task, run.model, run.variant): run for run in earlier}
    runs.update({(run.task, run.model, run.variant): run for run in results})
    return list(runs.values())


def is_finished(run_dir: Path, config: ml_collections.ConfigDict) -> bool:
    """Whether ``run_dir`` holds a run of ``config`` trained to the end and already scored."""
    cache_path = run_dir / RUN_EVALUATION_FILE
    if not cache_path.exists():
        return False
    saved = load_saved_config(run_dir)
    step = json.loads(cache_path.read_text())["step"]
    conflicts = config_lib.resume_conflicts(saved, config)
    return step == config.training.num_steps == saved.training.num_steps and not conflicts


def score_run(run_dir: Path, task: str, model: str, variant: str, *, workdir: Path) -> RunResult:
    """The test metrics of a finished run, from its cache if its step has not changed."""
    cache_path = run_dir / RUN_EVALUATION_FILE
    run = load_run(run_dir)
    batch_size = run.config.training.eval_batch_size
    lengths = list(run.task.test_lengths) if isinstance(run.task, LengthGeneralizationTask) else []
    cached = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if cached.get("step") == run.step and cached.get("lengths") == lengths:
        test, by_length = cached["test"], cached["by_length"]
        by_horizon, examples = cached.get("by_horizon", {}), cached.get("examples", [])
    else:
        evaluation = None
        if run.task.kind == "forecasting":
            evaluation = evaluate_forecasts(run, batch_size=batch_size)
        test = evaluate_run(run, batch_size=batch_size, forecasts=evaluation)
        by_length = {
            str(length): evaluate_run(run, batch_size=batch_size, task=run.task.at_length(length))
            for length in lengths
        }
        by_horizon, examples = {}, []
        if evaluation is not None:
            by_horizon = evaluation.scores.by_horizon
            examples = forecast_examples(run.task, evaluation.forecasts)
        cache = dict(step=run.step, lengths=lengths, test=test, by_length=by_length)
        cache.update(by_horizon=by_horizon, examples=examples)
        write_atomically(cache_path, json.dumps(cache, indent=2) + "\n")
    train_loss = [
        (record["step"], record["loss"])
        for record in read_metrics(run_dir)
        if record["split"] == "train"
    ]
    return RunResult(
        task=task,
        model=model,
        variant=variant,
        workdir=str(run_dir.relative_to(workdir)),
        step=run.step,
        test=test,
        by_length=by_length,
        max_train_length=getattr(run.task, "max_train_length", None),
        train_loss=train_loss,
        by_horizon=by_horizon,
        examples=examples,
    )


def score_peer(
    peer: str,
    task_label: str,
    task_options: Mapping[str, Any],
    *,
    workdir: Path,
    log: Callable[[str], None] = print,
) -> RunResult:
    """The statistical forecaster ``peer`` fitted to every test window of the forecasting
    task ``task_options`` and scored as the models are; cached in its directory until the
    task's options change."""
    peer_dir = workdir / task_label / peer
    cache_path = peer_dir / RUN_EVALUATION_FILE
    options = json.loads(json.dumps(dict(task_options)))
    cached = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if cached.get("task") != options:
        log(f"{task_label} / {peer}: fitting to every test series")
        task = create_task(**options)
        if task.kind != "forecasting":
            raise ValueError(f"peer {peer!r} forecasts, but task {task_label!r} is {task.kind!r}")
        forecasts = forecasting.statistical_forecasts(
            peer,
            task.peer_histories("test"),
            horizon=task.window_length[1],
            seasonality=task.seasonality_period,
        )
        scores = task.score(forecasts, "test")
        cached = dict(task=options, test=scores.overall, by_horizon=scores.by_horizon)
        cached["examples"] = forecast_examples(task, forecasts)
        peer_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(cache_path, json.dumps(cached, indent=2) + "\n")
    return RunResult(
        task=task_label,
        model=peer,
        variant="",
        workdir=str(peer_dir.relative_to(workdir)),
        step=0,
        test=cached["test"],
        by_length={},
        max_train_length=None,
        train_loss=[],
        by_horizon=cached["by_horizon"],
        examples=cached["examples"],
        peer=True,
    )


NUM_EXAMPLES = 3


def forecast_examples(task, forecasts: np.ndarray) -> list[dict[str, Any]]:
    """The first channel of ``NUM_EXAMPLES`` test windows spread over the split: the last
    2H look-back points, the truth and ``forecasts`` [N, H, C] (original scale)."""
    lookback, actual = task.history("test"), task.actual("test")
    horizon = actual.shape[1]
    windows = np.linspace(0, len(actual) - 1, min(NUM_EXAMPLES, len(actual))).round().astype(int)
    return [
        {
            "window": int(window),
            "history": lookback[window, -2 * horizon :, 0].tolist(),
            "actual": actual[window, :, 0].tolist(),
            "forecast": np.asarray(forecasts)[window, :, 0].tolist(),
        }
        for window in dict.fromkeys(windows)
    ]


def summary(result: RunResult, metric: str = "accuracy") -> str:
    parts = [] if result.peer else [f"step {result.step}"]
    parts.append(f"test {metric} {result.test[metric]:.4f}")
    parts += [f"L={length}: {m[metric]:.4f}" for length, m in result.by_length.items()]
    return ", ".join(parts)


def write_report(suite: Suite, results: Sequence[RunResult], workdir: Path) -> None:
    """results.json, results.md and the plots of ``results``."""
    report = {
        "suite": suite.name,
        "description": suite.description,
        "runs": [dataclasses.asdict(result) for result in results],
    }
    write_atomically(workdir / RESULTS_JSON, json.dumps(report, indent=2) + "\n")
    write_atomically(workdir / RESULTS_MARKDOWN, markdown_report(suite, results))
    write_plots(suite, results, workdir / PLOTS_DIR)


def _by_task(results: Sequence[RunResult]) -> dict[str, list[RunResult]]:
    tasks: dict[str, list[RunResult]] = {}
    for result in results:
        tasks.setdefault(result.task, []).append(result)
    return tasks


def markdown_report(suite: Suite, results: Sequence[RunResult]) -> str:
    """One table per task: a row per run (a peer's steps are "-"), the suite's test metrics,
    then its metric at each test length."""
    metric, metrics = suite.metric, suite.report_metrics or (suite.metric,)
    lines = [f"# Suite `{suite.name}`", "", suite.description, ""]
    has_variants = any(result.variant for result in results)
    for task, runs in _by_task(results).items():
        lengths = list(runs[0].by_length)
        header = ["model", *([suite.variant_axis] if has_variants else []), "steps"]
        header += [f"test {name}" for name in metrics]
        header += [f"L={length}" for length in lengths]
        lines += [f"## {task}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + " --- |" * len(header))
        for run in runs:
            cells = [run.model, *([run.variant] if has_variants else [])]
            cells.append("-" if run.peer else str(run.step))
            cells += [f"{run.test[name]:.4f}" for name in metrics]
            cells += [f"{run.by_length[length][metric]:.4f}" for length in lengths]
            lines.append("| " + " | ".join(cells) + " |")
        if runs[0].max_train_length is not None and lengths:
            lines += ["", f"Trained on lengths up to {runs[0].max_train_length}."]
        lines.append("")
    return "\n".join(lines)


def write_plots(suite: Suite, results: Sequence[RunResult], plots_dir: Path) -> None:
    """Per task: the suite's metric against test length, variant or forecast step, a few
    forecasts against the truth, and training loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for task, runs in _by_task(results).items():
        if runs[0].by_length:
            figure, axes = plt.subplots(figsize=(6, 4))
            for run in runs:
                lengths = [int(length) for length in run.by_length]
                values = [m[suite.metric] for m in run.by_length.values()]
                axes.plot(lengths, values, marker="o", label=run.label)
            if runs[0].max_train_length is not None:
                axes.axvline(runs[0].max_train_length, color="gray", linestyle="--", lw=1)
            axes.set(xscale="log", xlabel="test length", ylabel=suite.metric, ylim=(0, 1.02))
            tick_lengths = sorted({int(length) for run in runs for length in run.by_length})
            axes.set_xticks(tick_lengths, [str(length) for length in tick_lengths])
            axes.minorticks_off()
            axes.set_title(f"{suite.name}: {task}")
            _save(figure, axes, plots_dir / f"{task}_{suite.metric}_by_length.png")
        if any(run.variant for run in runs):
            figure, axes = plt.subplots(figsize=(6, 4))
            variants = list(suite.variants)
            for model in dict.fromkeys(run.model for run in runs):
                points = [(variants.index(r.variant), r.test[suite.metric]) for r in runs
                          if r.model == model]  # fmt: skip
                axes.plot(*zip(*points, strict=True), marker="o", label=model)
            axes.set_xticks(range(len(variants)), variants)
            axes.set(xlabel=suite.variant_axis, ylabel=f"test {suite.metric}", ylim=(0, 1.02))
            axes.set_title(f"{suite.name}: {task}")
            _save(figure, axes, plots_dir / f"{task}_{suite.metric}_by_{suite.variant_axis}.png")
        if runs[0].by_horizon:
            figure, axes = plt.subplots(figsize=(6, 4))
            for run in runs:
                values = run.by_horizon[suite.metric]
                style = "--" if run.peer else "-"
                axes.plot(range(1, len(values) + 1), values, style, label=run.label)
            axes.set(xlabel="forecast step", ylabel=f"test {suite.metric}")
            axes.set_title(f"{suite.name}: {task}")
            _save(figure, axes, plots_dir / f"{task}_{suite.metric}_by_horizon.png")
        if runs[0].examples:
            _plot_examples(suite, task, runs, plots_dir / f"{task}_forecasts.png")
        if not any(run.train_loss for run in runs):
            continue  # only peers so far
        figure, axes = plt.subplots(figsize=(6, 4))
        for run in runs:
            points = [(step, loss) for step, loss in run.train_loss if loss is not None]
            if points:  # a skipped non-finite step's loss is null
                axes.plot(*zip(*points, strict=True), label=run.label)
        axes.set(xlabel="step", ylabel="training loss", yscale="log")
        axes.set_title(f"{suite.name}: {task}")
        _save(figure, axes, plots_dir / f"{task}_loss.png")


def _plot_examples(suite: Suite, task: str, runs: Sequence[RunResult], path: Path) -> None:
    """One panel per example window: its recent history and truth, and every run's forecast."""
    import matplotlib.pyplot as plt

    examples = runs[0].examples
    figure, panels = plt.subplots(len(examples), 1, figsize=(7, 2.5 * len(examples)))
    for index, (axes, example) in enumerate(zip(np.atleast_1d(panels), examples, strict=True)):
        history, actual = example["history"], example["actual"]
        ahead = range(len(history), len(history) + len(actual))
        axes.plot(range(len(history)), history, color="black", lw=1, label="history")
        axes.plot(ahead, actual, color="black", lw=2, label="truth")
        for run in runs:
            forecast = run.examples[index]["forecast"]
            axes.plot(ahead, forecast, "--" if run.peer else "-", lw=1, label=run.label)
        axes.set(ylabel=f"window {example['window']}")
        axes.grid(alpha=0.3)
    axes.set(xlabel="step")
    top = np.atleast_1d(panels)[0]
    top.set_title(f"{suite.name}: {task}")
    _save(figure, top, path)


def _save(figure, axes, path: Path) -> None:
    import matplotlib.pyplot as plt

    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".png"
    )
    os.close(descriptor)
    try:
        figure.savefig(temporary, dpi=100)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        plt.close(figure)
