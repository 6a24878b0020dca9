"""Step reuse end to end: an unchanged step is reused (outputs copied, said on the console
and in job_result.txt); a changed input file, a changed code file, ``--force-rerun`` and
``settings.force_rerun`` each make it run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daskprs.api import run_job

pytestmark = pytest.mark.slow

JOB = """\
type: pipeline
inputs:
  lookup: {type: uri_folder, path: ./lookup}
jobs:
  prep:
    type: command
    code: ./prep
    command: python make.py ${{outputs.data}}
    outputs:
      data: {type: uri_folder}
  score:
    type: parallel
    inputs:
      data: ${{parent.jobs.prep.outputs.data}}
      lookup: ${{parent.inputs.lookup}}
    outputs:
      result: {type: uri_file}
    input_data: ${{inputs.data}}
    mini_batch_size: "2"
    environment_variables:
      LOOKUP: ${{inputs.lookup}}
    task:
      type: run_function
      code: ./code
      entry_script: score.py
      append_row_to: ${{outputs.result}}
"""
MAKE = """
import os, sys
os.makedirs(sys.argv[1], exist_ok=True)
for i in range(4):
    with open(os.path.join(sys.argv[1], f"n{i}.txt"), "w") as f:
        f.write(str(i))
"""
SCORE = """
import os

def run(mini_batch):
    with open(os.path.join(os.environ["LOOKUP"], "factor.txt")) as f:
        factor = int(f.read())
    return [str(factor * int(open(p).read())) for p in mini_batch]
"""


def daskprs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def result_lines(run_dir: Path) -> list[str]:
    return (run_dir / "outputs/score/result/parallel_run_step.txt").read_text().splitlines()


def ran(lines: list[str]) -> set[str]:
    """The steps that really ran, from the console lines."""
    out = set()
    for line in lines:
        if line.startswith("[prep] running command"):
            out.add("prep")
        if line.startswith("[score] planned"):
            out.add("score")
    return out


def test_steps_are_reused_until_an_input_code_or_flag_changes(tmp_path, client):
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "make.py").write_text(MAKE)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(SCORE)
    (tmp_path / "lookup").mkdir()
    (tmp_path / "lookup" / "factor.txt").write_text("10")
    job = tmp_path / "pipeline.yml"
    job.write_text(JOB)

    def api_run(name: str, **kwargs) -> tuple[object, list[str]]:
        lines: list[str] = []
        result = run_job(job, run_dir=tmp_path / name, client=client, echo=lines.append, **kwargs)
        assert result.ok, result.failure
        return result, lines

    _, lines = api_run("r1")
    assert ran(lines) == {"prep", "score"}
    assert result_lines(tmp_path / "r1") == ["0", "10", "20", "30"]

    # unchanged: both steps reused, through the CLI; outputs where a run would put them
    proc = daskprs("run", str(job), "--run-dir", "r2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ran(proc.stderr.splitlines()) == set()
    assert (
        f"[score] reused: inputs, code and settings unchanged since the run {tmp_path / 'r1'}"
        in proc.stderr
    )
    assert "worker slots" not in proc.stderr  # no cluster was needed
    assert result_lines(tmp_path / "r2") == ["0", "10", "20", "30"]
    assert sorted(os.listdir(tmp_path / "r2/outputs/prep/data")) == [f"n{i}.txt" for i in range(4)]
    summary = (tmp_path / "r2/logs/job_result.txt").read_text()
    since = f"(inputs, code and settings unchanged since the run {tmp_path / 'r1'}"
    assert f"step prep: reused, not run {since}" in summary
    assert "step score: reused, not run" in summary
    assert "step score: 2 of 2 mini-batches done" in summary  # the outcome, as if it had run
    out = tmp_path / "r2/outputs/score/result/parallel_run_step.txt"
    assert f"output score.result: {out}" in proc.stderr
    # a resumed reused run keeps it reused
    resumed = daskprs("run", "--resume", "r2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        "[score] reused from the run" in resumed.stderr
        and ran(resumed.stderr.splitlines()) == set()
    )
    # and says so: finished, reused, nothing to run (not a run to resume)
    status = daskprs("status", "r2", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "SUCCEEDED" in status.stdout and "next: nothing left to run" in status.stdout
    assert f"reused        (from the run {tmp_path / 'r1'})" in status.stdout
    # a marker cut short by a crash: a clear refusal, not a traceback
    marker = tmp_path / "r2/steps/score/reused.json"
    kept = marker.read_text()
    marker.write_text("")
    torn = daskprs("run", "--resume", "r2", cwd=tmp_path)
    assert torn.returncode == 2 and "reused.json cannot be read" in torn.stderr, torn.stderr
    marker.write_text(kept)

    # a changed input file: the step reading it runs, the one before it is reused
    (tmp_path / "lookup" / "factor.txt").write_text("100")
    result, lines = api_run("r3")
    assert ran(lines) == {"score"}
    assert result.reused == {"prep": str(tmp_path / "r2")}  # the newest run that has it
    assert result_lines(tmp_path / "r3") == ["0", "100", "200", "300"]

    # a changed code file
    (tmp_path / "code" / "score.py").write_text(SCORE.replace("factor * int", "factor + int"))
    _, lines = api_run("r4")
    assert ran(lines) == {"score"}
    assert result_lines(tmp_path / "r4") == ["100", "101", "102", "103"]

    # settings.force_rerun and --force-rerun: everything runs
    _, lines = api_run("r7", sets=["settings.force_rerun=true"])
    assert ran(lines) == {"prep", "score"}
    forced = daskprs(
        "run", str(job), "--run-dir", "r8", "--force-rerun", "--workers", "1", cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr
    assert ran(forced.stderr.splitlines()) == {"prep", "score"}

    # --cache: records are looked up where it says, whatever the run directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = daskprs(
        "run", str(job), "--run-dir", str(elsewhere / "r10"), "--cache", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert ran(proc.stderr.splitlines()) == set()
    assert result_lines(elsewhere / "r10") == ["100", "101", "102", "103"]


FAILS_UNTIL_FIXED = """
import os

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if "f001.txt" in names and not os.path.exists(os.environ["FIXED"]):
        raise ValueError("not fixed yet")
    return names
"""


def test_a_step_reused_after_its_failures_were_rerun_takes_the_outcome_it_has_now(tmp_path, client):
    """The outcome a run reuses is the one its outputs hold now: after ``rerun-failed``, not
    its first session's (which named failures whose rows are in the output since)."""
    from conftest import make_files, write_job

    from daskprs.api import resume_job

    make_files(tmp_path / "data", 3)
    job = write_job(
        tmp_path,
        FAILS_UNTIL_FIXED,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"retry_settings:\n  max_retries: 0\nenvironment_variables:\n"
        f"  FIXED: {tmp_path / 'fixed'}",
    )
    quiet = {"client": client, "echo": lambda s: None}
    first = run_job(job, run_dir=tmp_path / "a", **quiet)
    assert first.ok and first.steps[0].summary["failed"] == 1  # within its thresholds
    (tmp_path / "fixed").touch()
    assert resume_job(tmp_path / "a", rerun_failed=True, **quiet).ok
    again = run_job(job, run_dir=tmp_path / "b", **quiet)
    assert again.reused == {"score": str(tmp_path / "a")}
    assert again.steps[0].summary["failed"] == 0 and again.steps[0].summary["done"] == 3
    assert (tmp_path / "b/failed_mini_batches.jsonl").read_text() == ""
    assert "0 failed" in (tmp_path / "b/logs/job_result.txt").read_text()
