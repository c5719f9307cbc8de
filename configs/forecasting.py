"""Direct multi-horizon forecasting of real series (seqjax/data/forecasting.py): a causal
model reads a look-back window and its last output is the whole H-step forecast, with RevIN
normalization of each window. The default is M3 monthly (1428 series, the official
horizon 18, the look-back the shortest series allows).

    python train.py --config configs/forecasting.py --workdir runs/m3_monthly_lstm
    python train.py --config configs/forecasting.py --config.task.dataset=tourism_monthly
    python train.py --config configs/forecasting.py --config.task.dataset=taylor \
        --config.task.horizon=48 --config.task.lookback=336
    python train.py --config configs/forecasting.py --config.task.dataset=csv \
        --config.task.csv_path=load.csv --config.task.lookback=96 --config.task.horizon=24

``model.regression_loss`` is ``mse``, ``mae`` or ``gaussian_nll``; the held-out windows report
MSE and MAE on the normalized scale. ``--config.task.strategy=autoregressive`` trains
one-step-ahead forecasts at every position instead and rolls the H steps out with the state
carried.
"""

import ml_collections

from seqjax.training import model_defaults, optimizer_defaults, training_defaults


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.task = dict(
        name="forecasting",
        dataset="m3_monthly",
        lookback=None,
        horizon=None,
        normalization="window",
        strategy="direct",
        calendar_features=False,
        validation_fraction=0.1,
        test_fraction=0.2,
        csv_path="",
        time_column="",
        value_columns="",
        seasonality=None,
        seed=0,
    )
    config.model = dict(model_defaults("lstm", head="regression"), regression_loss="mae")
    config.optimizer = optimizer_defaults(learning_rate=3e-3)
    config.training = training_defaults(batch_size=64, num_steps=1000, eval_every=250)
    return config
