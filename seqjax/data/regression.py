"""Smoothing a noisy latent signal: a regression at every position that the past alone cannot
solve as well as the whole sequence (the Kalman filter against the Rauch–Tung–Striebel
smoother; Rauch, Tung & Striebel 1965).

Each example is an AR(1) latent x_t = φ x_{t-1} + √(1 - φ²) ε_t (x_0 ~ N(0, 1), so every x_t
is N(0, 1)) observed as y_t = x_t + σ_t η_t, with a noise scale σ_t drawn per position from
[min_noise, max_noise] and given to the model: inputs [T, 2] = (y_t, σ_t), target [T, 1] =
x_t, weight 1 everywhere. The best estimate from y_1..y_t (the filter) has a larger error
than the best from the whole sequence (the smoother); ``smoothed``/``filtered`` compute both
exactly, so a model's MSE can be read against them. With ``model.regression_loss=
gaussian_nll`` a model also predicts its uncertainty, which σ_t makes vary by position.
"""

from __future__ import annotations

import numpy as np

from seqjax.data.base import Batch, SyntheticTask, check_float, check_int, register_task


@register_task
class Smoothing(SyntheticTask):
    """Estimate the latent AR(1) signal at every position from its noisy observations."""

    name = "smoothing"
    heads = ("regression",)
    input_dim = 2
    output_dim = 1
    vocab_size = 0  # no classes: a regression

    def __init__(
        self,
        *,
        seq_len: int = 64,
        correlation: float = 0.95,
        min_noise: float = 0.3,
        max_noise: float = 2.0,
        num_train_examples: int = 10_000,
        num_test_examples: int = 1000,
        seed: int = 0,
    ):
        super().__init__(
            num_train_examples=num_train_examples, num_test_examples=num_test_examples, seed=seed
        )
        self.seq_len = check_int("smoothing: option 'seq_len'", seq_len, minimum=2)
        self.correlation = check_float(
            "smoothing: option 'correlation'", correlation, minimum=0.0, below=1.0
        )
        self.min_noise = check_float(
            "smoothing: option 'min_noise'", min_noise, minimum=1e-3, below=1e3
        )
        self.max_noise = check_float(
            "smoothing: option 'max_noise'", max_noise, minimum=self.min_noise, below=1e3
        )

    def generate(self, rng: np.random.Generator, num_examples: int) -> Batch:
        shape = (num_examples, self.seq_len)
        innovations = rng.standard_normal(shape)
        noise_scale = rng.uniform(self.min_noise, self.max_noise, shape)
        noise = rng.standard_normal(shape)
        latent = np.empty(shape)
        latent[:, 0] = innovations[:, 0]
        step = np.sqrt(1 - self.correlation**2)
        for t in range(1, self.seq_len):
            latent[:, t] = self.correlation * latent[:, t - 1] + step * innovations[:, t]
        observed = latent + noise_scale * noise
        return {
            "inputs": np.stack([observed, noise_scale], axis=-1).astype(np.float32),
            "targets": latent[..., None].astype(np.float32),
            "weights": np.ones(shape, bool),
        }

    def filtered(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The Kalman filter's means and variances [N, T] of x_t given y_1..y_t."""
        return self._passes(inputs)[:2]

    def smoothed(self, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The RTS smoother's means and variances [N, T] of x_t given the whole sequence."""
        return self._passes(inputs)[2:]

    def _passes(self, inputs):
        observed, noise_scale = inputs[..., 0].astype(np.float64), inputs[..., 1]
        phi, length = self.correlation, self.seq_len
        process = 1 - phi**2
        mean, variance = np.zeros(observed.shape), np.zeros(observed.shape)
        predicted_mean, predicted_variance = np.zeros(observed.shape[0]), np.ones(observed.shape[0])
        for t in range(length):
            if t:
                predicted_mean = phi * mean[:, t - 1]
                predicted_variance = phi**2 * variance[:, t - 1] + process
            gain = predicted_variance / (predicted_variance + noise_scale[:, t] ** 2)
            mean[:, t] = predicted_mean + gain * (observed[:, t] - predicted_mean)
            variance[:, t] = (1 - gain) * predicted_variance
        smooth_mean, smooth_variance = mean.copy(), variance.copy()
        for t in range(length - 2, -1, -1):
            ahead_variance = phi**2 * variance[:, t] + process
            back_gain = variance[:, t] * phi / ahead_variance
            smooth_mean[:, t] = mean[:, t] + back_gain * (smooth_mean[:, t + 1] - phi * mean[:, t])
            smooth_variance[:, t] = variance[:, t] + back_gain**2 * (
                smooth_variance[:, t + 1] - ahead_variance
            )
        return mean, variance, smooth_mean, smooth_variance
