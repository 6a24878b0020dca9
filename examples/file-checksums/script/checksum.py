"""Per-file SHA-256, line and word counts (an Azure ML parallel entry script over a file list)."""

import hashlib
import os


def init():
    pass


def run(mini_batch):
    # mini_batch is a list of local file paths
    rows = []
    for path in mini_batch:
        with open(path, "rb") as f:
            data = f.read()
        text = data.decode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        rows.append(f"{os.path.basename(path)} {digest} {text.count(chr(10))} {len(text.split())}")
    return rows
