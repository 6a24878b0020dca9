"""A v1 ParallelRunConfig YAML run through the CLI with ``--input`` and ``--output``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_files

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import os
from azureml_user.parallel_run import EntryScript

def run(mini_batch):
    if isinstance(mini_batch, list):
        return [os.path.basename(p) for p in mini_batch]
    out = EntryScript().output_dir
    with open(os.path.join(out, f"rows-{len(os.listdir(out))}-{os.getpid()}.txt"), "w") as f:
        f.write(str(len(mini_batch)))
    return mini_batch[["species"]]
"""


def daskprs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_v1_config_runs_with_input_and_output(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(SCRIPT)
    make_files(tmp_path / "images", 5)
    (tmp_path / "prc.yml").write_text(
        "parallel_run_config:\n"
        "  entry_script: score.py\n"
        "  source_directory: code\n"
        "  mini_batch_size: '2'\n"
        "  error_threshold: -1\n"
        "  output_action: append_row\n"
        "  append_row_file_name: labels.txt\n"
        "  process_count_per_node: 2\n"
        "  node_count: 1\n"
        "  run_max_try: 2\n"
        "  environment: {name: my-env}\n"
    )
    missing = daskprs("run", "prc.yml", cwd=tmp_path)
    assert missing.returncode == 2
    assert "--input: a v1 ParallelRunConfig names no dataset" in missing.stderr

    done = daskprs(
        "run", "prc.yml", "--input", "images", "--output", "out", "--run-dir", "r1", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert f"output prc.output: {tmp_path / 'out' / 'labels.txt'}" in done.stderr
    lines = (tmp_path / "out" / "labels.txt").read_text().splitlines()
    assert lines == [f"f{i:03d}.txt" for i in range(5)]
    # --resume reads --input and --output back from the run directory
    again = daskprs("run", "--resume", "r1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resume: 0 of 3 mini-batches to run" in again.stderr

    # tabular: an MLTable folder as --input; summary_only writes only what run() writes
    shutil.copytree(REPO / "examples/iris/data/iris-mltable", tmp_path / "iris")
    (tmp_path / "tab.yml").write_text(
        "entry_script: score.py\nsource_directory: code\nmini_batch_size: 4kb\n"
        "output_action: summary_only\n"
    )
    tab = daskprs(
        "run", "tab.yml", "--input", "iris", "--output", "summary", "--run-dir", "r2", cwd=tmp_path
    )
    assert tab.returncode == 0, tab.stderr
    assert "(tabular input)" in tab.stderr
    written = list((tmp_path / "summary").glob("rows-*.txt"))
    assert sum(int(p.read_text()) for p in written) == 600
    assert not (tmp_path / "summary" / "parallel_run_step.txt").exists()


ARGS_SCRIPT = """
import argparse
import os

def init():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--labels_dir", required=True)
    ARGS, _ = parser.parse_known_args()

def run(mini_batch, mini_batch_context):
    keys = mini_batch_context.partition_key_value
    fixed = os.path.join(os.path.dirname(__file__), "FIXED")
    if keys["Store"] == "store002" and not os.path.exists(fixed):
        raise ValueError("store002 is not ready")
    with open(os.path.join(ARGS.labels_dir, "label.txt")) as f:
        label = f.read().strip()
    return [f"{ARGS.model_name} {label} {keys['Store']} {keys['Brand']} {len(mini_batch)}"]
"""


def test_v1_arguments_side_inputs_and_partition_keys_and_resume_remembers_them(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(ARGS_SCRIPT)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "label.txt").write_text("weekly\n")
    prepare = REPO / "examples/many-models/prepare/prepare.py"
    made = subprocess.run(
        [sys.executable, prepare, *"--stores 2 --brands 1 --weeks 3 --out sales".split()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / "prc.yml").write_text(
        "parallel_run_config:\n"
        "  entry_script: score.py\n"
        "  source_directory: code\n"
        "  partition_keys: [Store, Brand]\n"
        "  run_max_try: 1\n"
        "arguments: [--model_name, ridge, --labels_dir, '${{inputs.labels}}']\n"
    )
    run = ("run", "prc.yml", "--input", "sales", "--output", "out", "--run-dir", "r1")
    args = ("--arguments", "--model_name lasso --labels_dir ${{inputs.labels}}")
    first = daskprs(*run, *args, "--side-input", "labels=labels", cwd=tmp_path)
    assert first.returncode == 0, first.stderr  # within the default thresholds
    assert "1 mini-batch failed" in first.stderr
    out = tmp_path / "out" / "parallel_run_step.txt"
    assert out.read_text().splitlines() == ["lasso weekly store001 brand01 3"]  # --arguments won
    # rerun-failed and --resume rebuild the job with the same arguments and side input
    (tmp_path / "code" / "FIXED").write_text("")
    rerun = daskprs("rerun-failed", "r1", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert out.read_text().splitlines() == [
        "lasso weekly store001 brand01 3",
        "lasso weekly store002 brand01 3",
    ]
    again = daskprs("run", "--resume", "r1", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "resume: 0 of 2 mini-batches to run" in again.stderr
