"""Many models: one scikit-learn regression of weekly quantity on price and season per store
and brand (an Azure ML parallel entry script with ``partition_keys``). Each mini-batch is the
whole history of one store and brand; the model is saved as
``<models>/<Store>_<Brand>.pkl``, and every input row comes back with the model's fitted
quantity (one output line per row, so Azure's item counts say every row succeeded)."""

import argparse
import math
import os
import pickle

import numpy as np
import pandas as pd
from sklearn.linear_model import LinearRegression

from azureml_user.parallel_run import EntryScript

MODELS = ""


def init():
    global MODELS
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", required=True)
    args, _ = parser.parse_known_args()
    MODELS = args.models
    os.makedirs(MODELS, exist_ok=True)


def _features(df):
    week = df["week"].to_numpy(dtype=float)
    return np.column_stack(
        [
            df["price"].to_numpy(dtype=float),
            np.sin(2 * math.pi * week / 52),
            np.cos(2 * math.pi * week / 52),
        ]
    )


def run(mini_batch, mini_batch_context):
    keys = mini_batch_context.partition_key_value
    store, brand = keys["Store"], keys["Brand"]
    data = mini_batch.sort_values("week")
    x, y = _features(data), data["quantity"].to_numpy(dtype=float)
    model = LinearRegression().fit(x, y)
    path = os.path.join(MODELS, f"{store}_{brand}.pkl")
    with open(f"{path}.tmp", "wb") as f:
        pickle.dump({"store": store, "brand": brand, "model": model}, f)
    os.replace(f"{path}.tmp", path)  # a retried try never leaves half a file
    EntryScript().logger.info("%s %s: r2 %.3f, saved %s", store, brand, model.score(x, y), path)
    return pd.DataFrame(
        {
            "Store": store,
            "Brand": brand,
            "week": data["week"].to_numpy(),
            "quantity": data["quantity"].to_numpy(),
            "fitted": np.round(model.predict(x), 1),
        }
    )
