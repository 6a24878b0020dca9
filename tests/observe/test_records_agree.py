"""What a run says afterwards agrees with what happened, in every record: a run refused before
its first mini-batch, an interrupted one, one that succeeded with failures."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import make_files, write_job

from daskprs.api import _write_results
from daskprs.job.model import Job
from daskprs.observe.runview import read_run
from daskprs.observe.status import format_status, next_command
from daskprs.results.jobresult import JobResult
from daskprs.rundir import RunDir

pytestmark = pytest.mark.slow

ECHO = "import os\n\ndef run(mini_batch):\n    return [os.path.basename(p) for p in mini_batch]\n"

FAILS_ONE = """
import os

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if "f001.txt" in names:
        raise ValueError("bad f001")
    return names
"""


def daskprs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args], capture_output=True, text=True, timeout=300
    )


def test_a_run_refused_before_its_first_mini_batch_says_it_failed_and_why(tmp_path):
    (tmp_path / "data").mkdir()  # a folder without files: nothing to plan
    job = write_job(tmp_path, ECHO, input_yaml="type: uri_folder\npath: ./data")
    run_dir = tmp_path / "run"
    proc = daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir))
    assert proc.returncode == 2, proc.stderr
    result = (run_dir / "logs" / "job_result.txt").read_text()
    assert "outcome: FAILED" in result and "failure: " in result
    view = read_run(run_dir)
    assert view.state == "failed"
    # no step began: once what the failure names is fixed, a resume starts the run
    assert next_command(view) == f"daskprs run --resume {run_dir}"
    assert "after fixing what the failure above names" in format_status(view)
    assert "FAILED" in format_status(view)
    # the run directory of a refused start is taken over by the next run
    make_files(tmp_path / "data", 2)
    again = daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir))
    assert again.returncode == 0, again.stderr
    assert "holds a run that stopped before any step began" in again.stderr


def test_an_unreachable_scheduler_leaves_a_run_directory_the_next_run_takes_over(tmp_path):
    make_files(tmp_path / "data", 2)
    job = write_job(tmp_path, ECHO, input_yaml="type: uri_folder\npath: ./data")
    run_dir = tmp_path / "run"
    refused = daskprs(
        "run", str(job), "--scheduler", "tcp://127.0.0.1:9", "--run-dir", str(run_dir)
    )
    assert refused.returncode == 2, refused.stderr
    assert "outcome: FAILED" in (run_dir / "logs" / "job_result.txt").read_text()
    again = daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir))
    assert again.returncode == 0, again.stderr


def test_a_run_that_did_begin_is_never_taken_over(tmp_path):
    make_files(tmp_path / "data", 2)
    job = write_job(tmp_path, ECHO, input_yaml="type: uri_folder\npath: ./data")
    run_dir = tmp_path / "run"
    assert daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir)).returncode == 0
    again = daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


def test_an_interrupted_runs_records_agree_and_count_its_planned_mini_batches(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    run.write_record(
        {"name": "r", "job_file": "/j.yml", "created": 1.0, "inputs": {"score": {"batches": 90}}}
    )
    (tmp_path / "run" / "job.json").write_text(
        json.dumps({"steps": [{"name": "score", "kind": "parallel", "settings": {}}]})
    )
    job = Job(source="/j.yml", kind="pipeline", steps=(), name="r", run_dir=run.root)
    result = JobResult(run_dir=run.root, failure="interrupted: step score was interrupted")
    _write_results(run, result, job)
    text = (tmp_path / "run" / "logs" / "job_result.txt").read_text()
    assert "outcome: INTERRUPTED" in text
    assert f"continue with: daskprs run --resume {run.root}" in text
    assert "look first at" not in text  # nothing failed: nothing to look at
    view = read_run(run.root)
    assert view.state == "interrupted"
    [score] = view.steps
    assert score.total == 90 and score.pending == 90
    assert "not started" not in format_status(view)
    assert next_command(view) == f"daskprs run --resume {run.root}"


def test_a_success_with_failures_says_how_many_and_how_to_rerun_them(tmp_path):
    make_files(tmp_path / "data", 3)
    job = write_job(
        tmp_path,
        FAILS_ONE,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra="retry_settings:\n  max_retries: 0",
    )
    run_dir = tmp_path / "run"
    proc = daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("job succeeded with 1 mini-batch failed, within its thresholds")
    assert f"daskprs rerun-failed {run_dir}" in last
    result = (run_dir / "logs" / "job_result.txt").read_text()
    assert f"after fixing the script: daskprs rerun-failed {run_dir}" in result


def test_status_lists_the_failed_mini_batches_a_budgets_message_names(tmp_path):
    make_files(tmp_path / "data", 3)
    job = write_job(
        tmp_path,
        FAILS_ONE,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra="retry_settings:\n  max_retries: 0\nmini_batch_error_threshold: 0",
    )
    run_dir = tmp_path / "run"
    assert daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir)).returncode == 42
    status = format_status(read_run(run_dir))
    assert "Failed mini-batches:" in status
    assert "mini-batch 1: ValueError: bad f001" in status
