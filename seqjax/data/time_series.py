"""Time-series classification on datasets of the UCR/UEA archives (Dau et al. 2019, "The UCR
Time Series Archive"; Bagnall et al. 2018, "The UEA Multivariate Time Series Classification
Archive") whose files ship inside the ``sktime`` wheel, so nothing is downloaded.

Each series [T, C] is one example with the archive's own train/test split; the features are
standardized per channel with the training split's mean and standard deviation. The target is
the class (labels sorted, numbered from 0) at the last position, the only one with weight 1.
"""

from __future__ import annotations

import numpy as np

from seqjax.data.base import ArrayTask, check_int, label_at_last_position, register_task

# dataset -> the sktime loader that reads its shipped files
SHIPPED_DATASETS = {
    "GunPoint": "load_gunpoint",
    "ItalyPowerDemand": "load_italy_power_demand",
    "ArrowHead": "load_arrow_head",
    "BasicMotions": "load_basic_motions",
    "OSULeaf": "load_osuleaf",
    "ACSF1": "load_acsf1",
}


@register_task
class TimeSeriesClassification(ArrayTask):
    """Classify a whole series of a UCR/UEA dataset shipped with sktime."""

    name = "time_series_classification"
    kind = "classification"
    heads = ("token", "pooled")  # the class at the last position, or pooled over time

    def __init__(self, *, dataset: str = "GunPoint", seed: int = 0):
        if dataset not in SHIPPED_DATASETS:
            raise ValueError(
                f"time_series_classification: option 'dataset' must be one of "
                f"{', '.join(SHIPPED_DATASETS)}, got {dataset!r}"
            )
        self.dataset = dataset
        self.seed = check_int("time_series_classification: option 'seed'", seed, minimum=0)
        (train_series, train_labels), (test_series, test_labels) = (
            _load(dataset, split) for split in ("train", "test")
        )
        classes = np.unique(train_labels)
        mean = train_series.mean(axis=(0, 1))
        std = train_series.std(axis=(0, 1)) + 1e-8
        self._train_split = label_at_last_position(
            (train_series - mean) / std, np.searchsorted(classes, train_labels)
        )
        self._test_split = label_at_last_position(
            (test_series - mean) / std, np.searchsorted(classes, test_labels)
        )
        self.classes = [str(label) for label in classes]
        self.vocab_size = len(classes)
        _, self.seq_len, self.input_dim = train_series.shape


def _load(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Series [N, T, C] float32 and labels [N] of one split."""
    import sktime.datasets

    loader = getattr(sktime.datasets, SHIPPED_DATASETS[dataset])
    series, labels = loader(split=split, return_X_y=True, return_type="numpy3D")
    return np.swapaxes(series, 1, 2).astype(np.float32), np.asarray(labels)
