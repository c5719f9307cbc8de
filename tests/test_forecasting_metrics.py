"""Forecast accuracy measures against values worked out by hand, RevIN's normalization
round trip, the scores of windows of several channels, and the statistical peers."""

import numpy as np
import pytest

from seqjax import forecasting as fc


def test_smape_equals_the_hand_computed_value():
    # |e| = 1, 0, 1, 2 over |y| + |ŷ| = 3, 4, 5, 6: 200 * (1/3 + 0 + 1/5 + 2/6) / 4 = 130/3
    assert fc.smape([1, 2, 3, 4], [2, 2, 2, 2]) == pytest.approx(130 / 3)
    # two series: the second's terms are 200 * 1/3 and 200 * 2/2 = 200
    actual, forecast = [[1, 2], [1, 1]], [[2, 2], [2, -1]]
    np.testing.assert_allclose(fc.smape_by_horizon(actual, forecast), [200 / 3, 100.0])
    assert fc.smape(actual, forecast) == pytest.approx((200 / 3 + 0 + 200 / 3 + 200) / 4)


def test_smape_follows_the_m4_convention():
    # absolute values in the denominator: opposite signs give the maximum, 200, not 0/0
    assert fc.smape([-1.0], [1.0]) == pytest.approx(200.0)
    assert fc.smape([-2.0, -4.0], [-2.0, -4.0]) == 0.0
    # the bound: a zero forecast of a nonzero value scores 200 whatever the value
    assert fc.smape([5.0, 1e-9], [0.0, 0.0]) == pytest.approx(200.0)
    # 0/0, a zero forecast of a zero value, is a perfect forecast and scores 0
    assert fc.smape([0.0, 0.0], [0.0, 1.0]) == pytest.approx(100.0)


def test_mase_with_seasonality_1_is_scaled_by_the_in_sample_naive_error():
    # naive in-sample errors |3-1|, |2-3|, |5-2| = 2, 1, 3: scale 2; forecast errors 1, 1
    assert fc.mase([4, 6], [5, 5], [1, 3, 2, 5], seasonality=1) == pytest.approx(0.5)
    np.testing.assert_allclose(fc.seasonal_naive_scale([1, 3, 2, 5], seasonality=1), [2.0])


def test_mase_with_seasonality_12_uses_the_seasonal_naive_scale():
    insample = [*range(1, 13), 3, 5, 4]  # 15 months: y13-y1, y14-y2, y15-y3 = 2, 3, 1
    np.testing.assert_allclose(fc.seasonal_naive_scale(insample, seasonality=12), [2.0])
    # the naive (m = 1) scale of the same series: eleven 1s, then 9, 2, 1 over 14 steps
    np.testing.assert_allclose(fc.seasonal_naive_scale(insample, seasonality=1), [23 / 14])
    assert fc.mase([10, 12], [13, 12], insample, seasonality=12) == pytest.approx(0.75)
    # series of different lengths: the second's seasonal differences are 4, 0, -2, 3, -2, -5
    insamples = [insample, [*range(1, 13), 5, 2, 1, 7, 3, 1]]
    actual, forecast = [[10, 12], [0, 0]], [[13, 12], [4, 2]]
    np.testing.assert_allclose(
        fc.seasonal_naive_scale(insamples[1], seasonality=12), [(4 + 0 + 2 + 3 + 2 + 5) / 6]
    )
    second_scale = 16 / 6
    np.testing.assert_allclose(
        fc.mase_by_horizon(actual, forecast, insamples, seasonality=12),
        [(3 / 2 + 4 / second_scale) / 2, (0 + 2 / second_scale) / 2],
    )


def test_mse_and_mae_overall_and_by_horizon():
    actual, forecast = [[1, 2], [3, 4]], [[2, 2], [1, 4]]  # errors 1, 0 and -2, 0
    assert fc.mse(actual, forecast) == pytest.approx(5 / 4)
    assert fc.mae(actual, forecast) == pytest.approx(3 / 4)
    np.testing.assert_allclose(fc.mse_by_horizon(actual, forecast), [5 / 2, 0])
    np.testing.assert_allclose(fc.mae_by_horizon(actual, forecast), [3 / 2, 0])


def test_normalize_equals_the_hand_computed_windows_and_round_trips():
    # mean 2.5, variance 1.25; with epsilon 0.75 the scale is sqrt(2)
    normalized, statistics = fc.normalize([1, 2, 3, 4], epsilon=0.75)
    np.testing.assert_allclose(normalized, np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(2))
    np.testing.assert_allclose(fc.denormalize(normalized, statistics), [1, 2, 3, 4])

    rng = np.random.default_rng(0)
    windows = 1e4 + 50 * rng.standard_normal((5, 24, 3))  # [N, T, C], far from 0
    windows[2, :, 1] = 7.0  # a constant window: its scale is sqrt(epsilon), not 0
    normalized, statistics = fc.normalize(windows)
    assert statistics.mean.shape == statistics.scale.shape == (5, 1, 3)
    np.testing.assert_allclose(normalized.mean(axis=1), 0, atol=1e-9)
    np.testing.assert_allclose(fc.denormalize(normalized, statistics), windows, rtol=1e-13)
    horizon = 1e4 + 50 * rng.standard_normal((5, 6, 3))  # the targets, with the window's stats
    np.testing.assert_allclose(
        fc.denormalize(fc.apply_normalization(horizon, statistics), statistics),
        horizon,
        rtol=1e-13,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fc.statistical_forecasts("Naive", [], horizon=2, seasonality=1), "Naive'"),
        (
            lambda: fc.forecast_scores(
                [1.0],
                [1.0],
                insample=[[1, 2]],
                seasonality=1,
                normalized_actual=[1.0],
                normalized_forecast=[1.0],
            ),
            r"expected \[windows, horizon, channels\]",
        ),  # fmt: skip
        (lambda: fc.smape([], []), "horizon is 0"),
        (lambda: fc.mae(np.zeros((0, 3)), np.zeros((0, 3))), "actual is empty"),
        (lambda: fc.mse(np.zeros((2, 0)), np.zeros((2, 0))), "horizon is 0"),
        (lambda: fc.smape([1, 2], [1, 2, 3]), r"forecast has shape \(3,\) but actual"),
        (lambda: fc.mae([1.0, np.nan], [1, 2]), "actual has non-finite"),
        (lambda: fc.mase([1, 2], [1, 2], [], seasonality=1), "insample is empty"),
        (
            lambda: fc.mase([1, 2], [1, 2], list(range(12)), seasonality=12),
            r"insample\[0\] has 12 points, too short for seasonality 12",
        ),
        (lambda: fc.mase([1], [1], [1, 2, 3], seasonality=0), "seasonality must be"),
        (lambda: fc.mase([1], [1], [2, 2, 2], seasonality=1), r"insample\[0\].*scale of 0"),
        (
            lambda: fc.mase([[1], [2]], [[1], [2]], [1, 2, 3], seasonality=1),
            "insample has 1 series but actual has 2",
        ),
        (lambda: fc.normalize([]), "windows is empty"),
        (lambda: fc.normalize([1, 2], epsilon=0), "epsilon must be"),
    ],
)
def test_bad_input_is_refused_by_name(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_forecast_scores_treat_each_channel_of_a_window_as_a_series():
    # two windows of two channels, horizon 2: the series are (w0, c0), (w0, c1), (w1, c0), ...
    actual = np.array([[[1.0, 10.0], [2.0, 20.0]], [[3.0, 30.0], [4.0, 40.0]]])
    forecast = actual + np.array([[[1.0, 0.0], [0.0, 5.0]], [[0.0, -10.0], [2.0, 0.0]]])
    insample = [[0.0, 1.0], [0.0, 10.0], [0.0, 2.0], [0.0, 20.0]]  # naive scales 1, 10, 2, 20
    scores = fc.forecast_scores(
        actual, forecast, insample=insample, seasonality=1,
        normalized_actual=actual / 10, normalized_forecast=forecast / 10,
    )  # fmt: skip
    # errors by series: (1, 0), (0, 5), (0, 2), (-10, 0) over scales 1, 10, 2, 20
    np.testing.assert_allclose(scores.by_horizon["mase"], [1.5 / 4, 1.5 / 4])
    # squared normalized errors: step 1 (0.01, 0, 0, 1), step 2 (0, 0.25, 0.04, 0)
    np.testing.assert_allclose(scores.by_horizon["mse"], [1.01 / 4, 0.29 / 4])
    np.testing.assert_allclose(scores.by_horizon["mae"], [1.1 / 4, 0.7 / 4])
    # step 1: 200 * (1/3 + 0 + 0 + 10/50) / 4; step 2: 200 * (0 + 5/45 + 2/10 + 0) / 4
    expected_smape = [50 * (1 / 3 + 1 / 5), 50 * (1 / 9 + 1 / 5)]
    np.testing.assert_allclose(scores.by_horizon["smape"], expected_smape)
    for name, values in scores.by_horizon.items():
        assert scores.overall[name] == pytest.approx(np.mean(values))


def test_seasonal_naive_peer_repeats_the_last_season_of_each_channel():
    history = np.stack([np.arange(10.0), 100 + np.arange(10.0) ** 2], axis=1)  # [10, 2]
    forecasts = fc.statistical_forecasts(
        "SeasonalNaive", [history, history[:7]], horizon=5, seasonality=3
    )
    assert forecasts.shape == (2, 5, 2)
    np.testing.assert_allclose(forecasts[0], history[[7, 8, 9, 7, 8]])
    np.testing.assert_allclose(forecasts[1], history[[4, 5, 6, 4, 5]])


@pytest.mark.parametrize("peer", ["AutoETS", "AutoTheta"])
def test_fitted_peers_follow_a_trend_and_a_season(peer):
    t = np.arange(120.0)
    season = np.tile([0.0, 5.0, -3.0, 1.0], 30)
    rng = np.random.default_rng(0)
    series = 50 + 0.5 * t + season + rng.normal(0, 0.1, len(t))
    forecasts = fc.statistical_forecasts(peer, [series[:108, None]], horizon=12, seasonality=4)
    truth = series[108:]
    naive = np.full(12, series[107])
    # a third of the error of repeating the last value, or less
    assert fc.smape(truth, forecasts[0, :, 0]) < fc.smape(truth, naive) / 3
