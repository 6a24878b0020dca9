"""Predict the digit in each PNG file (an Azure ML parallel entry script over a file list):
one ``<file name> <predicted label>`` line per file."""

import argparse
import os
import pickle

import numpy as np
from PIL import Image

MODEL = None


def init():
    global MODEL
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    args, _ = parser.parse_known_args()
    with open(os.path.join(args.model, "model.pkl"), "rb") as f:
        MODEL = pickle.load(f)


def run(mini_batch):
    pixels = [np.asarray(Image.open(path).convert("L"), dtype=float) for path in mini_batch]
    features = np.stack([p.reshape(-1) * (16 / 255) for p in pixels])  # back to 0..16
    labels = MODEL.predict(features)
    named = zip(mini_batch, labels, strict=True)
    return [f"{os.path.basename(path)} {label}" for path, label in named]
