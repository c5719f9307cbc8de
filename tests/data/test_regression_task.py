"""The smoothing regression task: its batches, and its filter and smoother equal exact
Gaussian conditioning."""

import numpy as np
import pytest

from seqjax.data import create_task

SMALL = dict(seq_len=6, num_train_examples=16, num_test_examples=300)


def test_batches_follow_the_regression_format_and_the_seed():
    task = create_task("smoothing", **SMALL)
    batch = task.train_batch(2, 8)
    assert set(batch) == {"inputs", "targets", "weights"}
    assert batch["inputs"].shape == (8, 6, 2) and batch["inputs"].dtype == np.float32
    assert batch["targets"].shape == (8, 6, 1) and batch["targets"].dtype == np.float32
    assert (batch["weights"] == 1).all()
    scales = batch["inputs"][..., 1]
    assert (scales >= 0.3).all() and (scales <= 2.0).all()
    np.testing.assert_array_equal(
        batch["inputs"], create_task("smoothing", **SMALL).train_batch(2, 8)["inputs"]
    )
    with pytest.raises(ValueError, match=r"smoothing: option 'correlation' must be a number in"):
        create_task("smoothing", correlation=1.0)


def test_the_filter_and_smoother_are_the_exact_posteriors_and_the_smoother_is_better():
    task = create_task("smoothing", **SMALL)
    test = next(task.test_batches(300))
    inputs, latent = test["inputs"], test["targets"][..., 0].astype(np.float64)
    filtered_mean, filtered_variance = task.filtered(inputs)
    smoothed_mean, smoothed_variance = task.smoothed(inputs)
    t = np.arange(6)
    prior = task.correlation ** np.abs(t[:, None] - t[None, :])  # Cov(x_s, x_t)
    for row in range(3):
        observed, scales = inputs[row, :, 0].astype(np.float64), inputs[row, :, 1]
        for last in (2, 5):  # x_last given y_0..y_last, and x_t given everything
            seen = slice(0, last + 1)
            covariance = prior[seen, seen] + np.diag(scales[seen] ** 2)
            weights = np.linalg.solve(covariance, prior[seen, last])
            np.testing.assert_allclose(filtered_mean[row, last], weights @ observed[seen])
            np.testing.assert_allclose(
                filtered_variance[row, last], 1 - weights @ prior[seen, last]
            )
        covariance = prior + np.diag(scales**2)
        gain = np.linalg.solve(covariance, prior).T
        np.testing.assert_allclose(smoothed_mean[row], gain @ observed, rtol=1e-10)
        np.testing.assert_allclose(
            smoothed_variance[row], np.diag(prior - gain @ prior), rtol=1e-10
        )
    smoother = np.mean((smoothed_mean - latent) ** 2)
    filter_ = np.mean((filtered_mean - latent) ** 2)
    assert smoother < filter_ < 1.0  # the prior's variance is 1
