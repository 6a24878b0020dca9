"""Benchmarks of daskprs: ``python -m benchmarks <name> [options]`` (targets: benchmarks/README.md).

Each benchmark generates its data, runs every contender side by side on the same data and the
same cluster, prints a table and the ratios against the targets, and appends a CSV row to
``benchmarks/results/<name>.csv``. They are not tests: nothing here asserts a timing.
"""

NAMES = (
    "overhead",
    "timeout",
    "tabular",
    "memory",
    "cpu",
    "planning",
    "resume",
    "scale",
    "sweep",
    "images",
)
