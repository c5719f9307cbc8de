"""Forecast accuracy measures and per-window normalization, in NumPy.

Shapes: ``actual`` and ``forecast`` are [N, H] (N series or windows, horizon H) or [H] for
one series; a ``*_by_horizon`` function averages over the series and returns [H], the plain
one averages over everything and returns a float. Every series has the same horizon, so the
overall value is also the mean of the per-series values, as the competitions report it.

- sMAPE, the M4 convention (Makridakis, Spiliotis & Assimakopoulos 2020; M3's symmetric MAPE,
  Makridakis & Hibon 2000, with absolute values in the denominator):
  sMAPE = 200/H Σ_h |y_h - ŷ_h| / (|y_h| + |ŷ_h|), in percent, between 0 and 200. A term with
  y_h = ŷ_h = 0 is a perfect forecast and counts as 0 (the formula itself is 0/0 there).
- MASE (Hyndman & Koehler 2006): the mean absolute error scaled by the in-sample mean absolute
  error of the seasonal naive forecast, ŷ_t = y_{t-m}, over the training part y_1..y_n of the
  same series: scale = 1/(n - m) Σ_{t=m+1..n} |y_t - y_{t-m}|. m = 1 is the naive forecast.
- MSE and MAE, on whatever scale the values are given (the windowed benchmarks report them on
  normalized values).

``forecast_scores`` gives all four, overall and per horizon, for windows of several channels.
``statistical_forecasts`` runs the statistical peers (SeasonalNaive, AutoETS, AutoTheta of
``statsforecast``, a benchmark dependency) on the same series.

``normalize`` is reversible instance normalization (RevIN; Kim et al. 2022): each window is
shifted by its own mean over time and divided by its standard deviation, sqrt(var + ε);
``denormalize`` inverts it with the same statistics, so forecasts are scored on the original
scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np


def _pair(actual, forecast) -> tuple[np.ndarray, np.ndarray]:
    """``actual`` and ``forecast`` as float64 [N, H], after checking their shapes and values."""
    actual = np.asarray(actual, np.float64)
    forecast = np.asarray(forecast, np.float64)
    if actual.ndim not in (1, 2):
        raise ValueError(
            f"actual must be [H] or [N, H] (series by horizon), got shape {actual.shape}"
        )
    if forecast.shape != actual.shape:
        raise ValueError(
            f"forecast has shape {forecast.shape} but actual has shape {actual.shape}; "
            "they must match"
        )
    if actual.ndim == 1:
        actual, forecast = actual[None], forecast[None]
    if actual.shape[0] == 0:
        raise ValueError("actual is empty: there are no series to score")
    if actual.shape[1] == 0:
        raise ValueError("the horizon is 0: actual and forecast have no forecast steps")
    for label, values in (("actual", actual), ("forecast", forecast)):
        if not np.isfinite(values).all():
            raise ValueError(f"{label} has non-finite values (NaN or inf)")
    return actual, forecast


def _smape_terms(actual, forecast) -> np.ndarray:
    actual, forecast = _pair(actual, forecast)
    error = np.abs(actual - forecast)
    denominator = np.abs(actual) + np.abs(forecast)
    # error <= denominator, so a zero denominator has a zero error: a perfect forecast.
    safe = np.where(denominator == 0, 1.0, denominator)
    return 200.0 * error / safe


def smape(actual, forecast) -> float:
    """Symmetric MAPE in percent, the M4 convention (module docstring); 0/0 terms count 0."""
    return float(np.mean(_smape_terms(actual, forecast)))


def smape_by_horizon(actual, forecast) -> np.ndarray:
    """sMAPE at each forecast step [H], averaged over the series."""
    return np.mean(_smape_terms(actual, forecast), axis=0)


def seasonal_naive_scale(insample, *, seasonality: int) -> np.ndarray:
    """The MASE denominator of each series [N]: 1/(n - m) Σ_{t>m} |y_t - y_{t-m}| over its
    training part (Hyndman & Koehler 2006).

    ``insample`` is one series [n], an array [N, n], or a sequence of N series of any lengths.
    """
    if isinstance(seasonality, bool) or not isinstance(seasonality, int | np.integer):
        raise ValueError(f"seasonality must be an integer >= 1, got {seasonality!r}")
    if seasonality < 1:
        raise ValueError(f"seasonality must be an integer >= 1, got {seasonality}")
    series_list = _series_list(insample)
    scales = np.empty(len(series_list))
    for index, series in enumerate(series_list):
        if len(series) <= seasonality:
            raise ValueError(
                f"insample[{index}] has {len(series)} points, too short for seasonality "
                f"{seasonality}: the seasonal naive scale needs at least {seasonality + 1}"
            )
        if not np.isfinite(series).all():
            raise ValueError(f"insample[{index}] has non-finite values (NaN or inf)")
        scales[index] = np.mean(np.abs(series[seasonality:] - series[:-seasonality]))
        if scales[index] == 0:
            raise ValueError(
                f"insample[{index}] has a seasonal naive scale of 0 (y_t = y_t-{seasonality} "
                "throughout), so its MASE is undefined"
            )
    return scales


def _series_list(insample) -> list[np.ndarray]:
    ragged = isinstance(insample, Sequence) and any(np.ndim(series) for series in insample)
    if not ragged:
        array = np.asarray(insample, np.float64)
        if array.ndim == 1:
            series_list = [array]
        elif array.ndim == 2:
            series_list = list(array)
        else:
            raise ValueError(
                f"insample must be [n], [N, n] or a sequence of series, got shape {array.shape}"
            )
    else:
        series_list = [np.asarray(series, np.float64) for series in insample]
        if any(series.ndim != 1 for series in series_list):
            raise ValueError("insample must be a sequence of one-dimensional series")
    if not series_list or all(len(series) == 0 for series in series_list):
        raise ValueError("insample is empty: there are no series to scale by")
    return series_list


def _scaled_errors(actual, forecast, insample, seasonality) -> np.ndarray:
    actual, forecast = _pair(actual, forecast)
    scales = seasonal_naive_scale(insample, seasonality=seasonality)
    if len(scales) != len(actual):
        raise ValueError(
            f"insample has {len(scales)} series but actual has {len(actual)}; they must match"
        )
    return np.abs(actual - forecast) / scales[:, None]


def mase(actual, forecast, insample, *, seasonality: int) -> float:
    """Mean absolute scaled error with the seasonal naive in-sample scale (module docstring)."""
    return float(np.mean(_scaled_errors(actual, forecast, insample, seasonality)))


def mase_by_horizon(actual, forecast, insample, *, seasonality: int) -> np.ndarray:
    """MASE at each forecast step [H], averaged over the series."""
    return np.mean(_scaled_errors(actual, forecast, insample, seasonality), axis=0)


def mse(actual, forecast) -> float:
    """Mean squared error over every series and step."""
    actual, forecast = _pair(actual, forecast)
    return float(np.mean((actual - forecast) ** 2))


def mse_by_horizon(actual, forecast) -> np.ndarray:
    """Mean squared error at each forecast step [H]."""
    actual, forecast = _pair(actual, forecast)
    return np.mean((actual - forecast) ** 2, axis=0)


def mae(actual, forecast) -> float:
    """Mean absolute error over every series and step."""
    actual, forecast = _pair(actual, forecast)
    return float(np.mean(np.abs(actual - forecast)))


def mae_by_horizon(actual, forecast) -> np.ndarray:
    """Mean absolute error at each forecast step [H]."""
    actual, forecast = _pair(actual, forecast)
    return np.mean(np.abs(actual - forecast), axis=0)


class Normalization(NamedTuple):
    """Per-window statistics, kept with a length-1 time axis so they broadcast over any
    window of the same series (its look-back or its horizon)."""

    mean: np.ndarray
    scale: np.ndarray  # sqrt(var + epsilon), > 0


def normalize(
    windows, *, axis: int | None = None, epsilon: float = 1e-5
) -> tuple[np.ndarray, Normalization]:
    """RevIN's instance normalization (Kim et al. 2022): (x - mean) / sqrt(var + ε) with the
    mean and variance of each window over time.

    ``windows`` is [T], [N, T] or [N, T, C]; ``axis`` is the time axis (default 0 for [T],
    else 1). Returns the normalized windows (float64) and the statistics for ``denormalize``.
    """
    windows = np.asarray(windows, np.float64)
    if windows.size == 0:
        raise ValueError(f"windows is empty (shape {windows.shape})")
    if not np.isfinite(windows).all():
        raise ValueError("windows has non-finite values (NaN or inf)")
    if not (isinstance(epsilon, int | float) and epsilon > 0):
        raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
    if axis is None:
        axis = 0 if windows.ndim == 1 else 1
    mean = windows.mean(axis=axis, keepdims=True)
    scale = np.sqrt(windows.var(axis=axis, keepdims=True) + epsilon)
    statistics = Normalization(mean, scale)
    return apply_normalization(windows, statistics), statistics


def apply_normalization(values, statistics: Normalization) -> np.ndarray:
    """``values`` (a window of the same series, e.g. its forecast targets) normalized with
    statistics from ``normalize``."""
    return (np.asarray(values, np.float64) - statistics.mean) / statistics.scale


def denormalize(values, statistics: Normalization) -> np.ndarray:
    """The inverse of ``normalize``/``apply_normalization``: values * scale + mean."""
    return np.asarray(values, np.float64) * statistics.scale + statistics.mean


class ForecastScores(NamedTuple):
    overall: dict[str, float]  # smape, mase, mse, mae
    by_horizon: dict[str, list[float]]  # the same at each forecast step


def forecast_scores(
    actual, forecast, *, insample, seasonality: int, normalized_actual, normalized_forecast
) -> ForecastScores:
    """sMAPE and MASE of ``forecast`` against ``actual`` (original scale, [N, H, C]), MSE and
    MAE of the normalized pair (same shape); each (window, channel) is one series, and
    ``insample`` holds the N*C training parts in that order (window-major)."""

    def series(values):  # [N, H, C] -> [N * C, H]
        values = np.asarray(values, np.float64)
        if values.ndim != 3:
            raise ValueError(f"expected [windows, horizon, channels], got shape {values.shape}")
        return np.swapaxes(values, 1, 2).reshape(-1, values.shape[1])

    actual, forecast = series(actual), series(forecast)
    normalized = series(normalized_actual), series(normalized_forecast)
    by_horizon = {
        "smape": smape_by_horizon(actual, forecast),
        "mase": mase_by_horizon(actual, forecast, insample, seasonality=seasonality),
        "mse": mse_by_horizon(*normalized),
        "mae": mae_by_horizon(*normalized),
    }
    return ForecastScores(
        overall={name: float(np.mean(values)) for name, values in by_horizon.items()},
        by_horizon={name: [float(v) for v in values] for name, values in by_horizon.items()},
    )


STATISTICAL_PEERS = ("SeasonalNaive", "AutoETS", "AutoTheta")


def statistical_forecasts(
    peer: str, histories: Sequence[np.ndarray], *, horizon: int, seasonality: int
) -> np.ndarray:
    """The ``horizon``-step forecasts [N, H, C] of statsforecast's ``peer`` fitted to each of
    ``histories`` (N arrays [n, C]), one channel at a time, seasonal with period
    ``seasonality``."""
    if peer not in STATISTICAL_PEERS:
        raise ValueError(f"peer must be one of {', '.join(STATISTICAL_PEERS)}, got {peer!r}")
    try:
        import statsforecast.models
    except ImportError as error:
        raise ImportError(
            "the statistical peers need statsforecast: pip install -r requirements-bench.txt"
        ) from error
    model: Any = getattr(statsforecast.models, peer)(season_length=seasonality)
    forecasts = []
    for history in histories:
        history = np.asarray(history, np.float64)
        channels = [
            model.forecast(y=history[:, channel], h=horizon)["mean"]
            for channel in range(history.shape[1])
        ]
        forecasts.append(np.stack(channels, axis=-1))
    return np.stack(forecasts)
