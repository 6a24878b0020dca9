"""Score iris measurements with a nearest-centroid model (an Azure ML parallel entry script)."""

import argparse
import json
import math
import os

import pandas as pd

from azureml_user.parallel_run import EntryScript

MODEL = None
PREFIX = ""


def init():
    global MODEL, PREFIX
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    args, _ = parser.parse_known_args()
    with open(os.path.join(args.model, "model.json")) as f:
        MODEL = json.load(f)
    PREFIX = os.environ.get("IRIS_LABEL_PREFIX", "")
    EntryScript().logger.info("model loaded from %s", args.model)


def _predict(row):
    best, best_distance = None, math.inf
    for label, centre in MODEL["centroids"].items():
        pairs = zip(MODEL["features"], centre, strict=True)
        distance = sum((row[f] - c) ** 2 for f, c in pairs)
        if distance < best_distance:
            best, best_distance = label, distance
    return best


def run(mini_batch, mini_batch_context):
    # mini_batch is a pandas DataFrame of whole rows of iris.csv
    result = pd.DataFrame(
        {
            "row": range(len(mini_batch)),
            "species": mini_batch["species"],
            "predicted": [PREFIX + _predict(r) for _, r in mini_batch.iterrows()],
        }
    )
    result["row"] = [f"{mini_batch_context.minibatch_index}.{i}" for i in result["row"]]
    return result
