"""Write scikit-learn's bundled 8x8 digits as PNG files (``digit-<n>-true<label>.png``, the
true label kept in the name only to check the predictions afterwards) and train a classifier
on the digits not written. Nothing is downloaded: the digits ship with scikit-learn."""

import argparse
import os
import pickle

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.svm import SVC

parser = argparse.ArgumentParser()
parser.add_argument("--n-images", type=int, default=300)
parser.add_argument("--images", required=True)
parser.add_argument("--model", required=True)
args = parser.parse_args()

digits = load_digits()
order = np.random.default_rng(0).permutation(len(digits.target))
n = max(1, min(args.n_images, len(order) // 2))
scored, train = order[:n], order[len(order) // 2 :]

model = SVC(gamma=0.001).fit(digits.data[train], digits.target[train])
os.makedirs(args.model, exist_ok=True)
with open(os.path.join(args.model, "model.pkl"), "wb") as f:
    pickle.dump(model, f)

os.makedirs(args.images, exist_ok=True)
for k, i in enumerate(scored):
    pixels = np.round(digits.images[i] * (255 / 16)).astype(np.uint8)  # 0..16 -> 0..255 grey
    name = f"digit-{k:04d}-true{digits.target[i]}.png"
    Image.fromarray(pixels).save(os.path.join(args.images, name))
print(f"wrote {n} PNG files to {args.images}; model trained on {len(train)} digits")
