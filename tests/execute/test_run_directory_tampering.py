"""The run directory changed behind the driver's back while a step runs: its ledger deleted,
its committed parts deleted. The step fails with a clear message (exit 42), never "job
succeeded" with a wrong output, and it is never recorded for step reuse."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import make_files, write_job

from daskprs.api import resume_job, run_job
from daskprs.rundir import RunDir

pytestmark = pytest.mark.slow

DELETES_THE_LEDGER = """
import os

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if "f002.txt" in names and os.path.exists(os.environ["LEDGER"]):
        os.unlink(os.environ["LEDGER"])  # a cleanup job, a script, a shared-filesystem hiccup
    return names
"""


def test_a_ledger_deleted_mid_run_fails_the_step_and_is_never_reused(tmp_path):
    make_files(tmp_path / "data", 5)
    ledger = RunDir(str(tmp_path / "runs" / "first")).step("score").ledger
    job = write_job(
        tmp_path,
        DELETES_THE_LEDGER,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  LEDGER: {ledger}",
    )
    where = str(tmp_path / "runs" / "first")
    proc = subprocess.run(
        [sys.executable, "-m", "daskprs", "run", str(job), "--workers", "1", "--run-dir", where],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 42, proc.stderr
    assert f"the ledger {ledger} was deleted while the step ran" in proc.stderr
    assert "internal error" not in proc.stderr
    first = RunDir(str(tmp_path / "runs" / "first"))
    assert not os.path.exists(first.step("score").reuse_record)
    out = first.output("score", "result")
    assert not os.path.exists(os.path.join(out, "parallel_run_step.txt"))
    assert not [n for n in os.listdir(out) if "daskprs" in n]  # no partial output left
    # a later run of the same job in the same run root runs the step: nothing to reuse
    lines: list[str] = []
    run_job(job, run_dir=tmp_path / "runs" / "second", workers=1, echo=lines.append)
    assert not any("reused" in line for line in lines)


FAILS_ONCE_THEN_DELETES_A_PART = """
import glob, os

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if "f001.txt" in names:
        if not os.path.exists(os.environ["FIXED"]):
            raise ValueError("not yet")
        for part in glob.glob(os.path.join(os.environ["PARTS"], "00000.*")):
            os.unlink(part)  # mini-batch 0's committed part, gone behind the driver's back
    return names
"""


def test_a_committed_part_deleted_mid_run_is_a_clear_failure(tmp_path):
    make_files(tmp_path / "data", 3)
    run_dir = tmp_path / "run"
    parts = RunDir(str(run_dir)).step("score").parts
    fixed = tmp_path / "fixed"
    job = write_job(
        tmp_path,
        FAILS_ONCE_THEN_DELETES_A_PART,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=(
            "retry_settings:\n  max_retries: 0\n"
            f"environment_variables:\n  PARTS: {parts}\n  FIXED: {fixed}"
        ),
    )
    first = run_job(job, run_dir=run_dir, workers=1, echo=lambda s: None)
    assert first.ok and [f.id for f in first.steps[0].failed] == [1]
    fixed.touch()
    result = resume_job(run_dir, rerun_failed=True, workers=1, echo=lambda s: None)
    assert not result.ok
    assert "the committed part of mini-batch 0" in (result.failure or "")
    assert "is gone, deleted while the step ran" in (result.failure or "")
