"""The examples users bring, run end to end through the CLI as the README shows (small sizes):
many models (a command step splits a sales CSV, a parallel step trains one model per
partition key), digits (a file list of PNG images, one predicted label per file), and iris
(tabular scoring)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def daskprs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_many_models(tmp_path):
    pytest.importorskip("sklearn", reason="the examples extra installs scikit-learn")
    run = tmp_path / "run"
    sizes = ["--set", "inputs.stores=2", "--set", "inputs.brands=3", "--set", "inputs.weeks=30"]
    proc = daskprs(
        "run", str(REPO / "examples/many-models/pipeline.yml"), "--run-dir", str(run), *sizes,
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[train] planned 6 mini-batches (tabular input)" in proc.stderr
    sales = run / "outputs/prepare/sales"
    assert sorted(p.relative_to(sales).as_posix() for p in sales.glob("*/*/sales.csv")) == [
        f"store{s:03d}/brand{b:02d}/sales.csv" for s in (1, 2) for b in (1, 2, 3)
    ]
    models = sorted(os.listdir(run / "outputs/train/models"))
    assert models == [f"store{s:03d}_brand{b:02d}.pkl" for s in (1, 2) for b in (1, 2, 3)]
    with open(run / "outputs/train/models/store002_brand03.pkl", "rb") as f:
        saved = pickle.load(f)
    assert (saved["store"], saved["brand"]) == ("store002", "brand03")
    assert saved["model"].coef_.shape == (3,)
    lines = (run / "outputs/train/fitted/parallel_run_step.txt").read_text().splitlines()
    assert len(lines) == 6 * 30
    # in input order: the partitions sorted by key, each partition's weeks in order
    assert [tuple(line.split()[:3]) for line in lines[:2]] == [
        ("store001", "brand01", "0"),
        ("store001", "brand01", "1"),
    ]
    assert lines[-1].split()[:3] == ["store002", "brand03", "29"]


def test_digits_file_list_of_png_images(tmp_path):
    pytest.importorskip("sklearn", reason="the examples extra installs scikit-learn")
    pytest.importorskip("PIL", reason="the examples extra installs pillow")
    run = tmp_path / "run"
    proc = daskprs(
        "run", str(REPO / "examples/digits/pipeline.yml"), "--run-dir", str(run),
        "--set", "inputs.n_images=40", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[score] planned 4 mini-batches (files input)" in proc.stderr
    images = sorted(os.listdir(run / "outputs/prepare/images"))
    assert len(images) == 40 and all(name.endswith(".png") for name in images)
    lines = (run / "outputs/score/predictions/parallel_run_step.txt").read_text().splitlines()
    assert [line.split()[0] for line in lines] == images  # one line per file, in input order
    right = sum(line.split()[1] == line.split()[0].split("true")[1][0] for line in lines)
    assert right >= 36  # the SVC gets ~99 % of held-out digits right


def test_iris_tabular_scoring(tmp_path):
    run = tmp_path / "run"
    proc = daskprs(
        "run", str(REPO / "examples/iris/pipeline.yml"), "--run-dir", str(run), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = run / "outputs/batch_prediction/job_output_file/parallel_run_step.txt"
    assert f"output batch_prediction.job_output_file: {out}" in proc.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 600
    assert all(line.split()[-1].startswith("pred:") for line in lines)
