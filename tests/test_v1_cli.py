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
