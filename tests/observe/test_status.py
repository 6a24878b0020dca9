"""``daskprs status``: reading a run directory in each state it can be left in."""

from __future__ import annotations

import os

from click.testing import CliRunner
from rundirs import bad, dead_pid, make_run, ok

from daskprs.cli import cli
from daskprs.observe.runview import read_run
from daskprs.observe.status import format_status, next_command


def status(root) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["status", str(root)])
    return result.exit_code, result.output


def test_a_finished_run_with_nothing_left(tmp_path):
    root = make_run(
        tmp_path / "r",
        batches=3,
        tries=[(ok(0, 0), "DONE"), (ok(1, 0.5, "process001"), "DONE"), (ok(2, 1.1), "DONE")],
    )
    view = read_run(root)
    assert view.state == "succeeded"
    [prep, score] = view.steps
    assert (prep.kind, prep.command_done) == ("command", True)
    assert (score.count("DONE"), score.pending, score.succeeded_items) == (3, 0, 6)
    assert next_command(view) is None
    code, out = status(root)
    assert code == 0
    assert "run r: SUCCEEDED" in out
    assert "next: nothing left to run" in out
    assert "failed or cancelled" not in out


def test_failed_mini_batches_point_to_rerun_failed(tmp_path):
    tries = [(ok(0, 0), "DONE")]
    tries += [(bad(1, 0.1 * k, k), None) for k in (1, 2)] + [(bad(1, 0.3, 3), "FAILED")]
    tries += [(ok(2, 1), "DONE"), (ok(3, 1.5), "DONE")]
    failed = [
        {
            "id": 1,
            "step": "score",
            "status": "RUN_EXCEPTION",
            "tries": 3,
            "inputs": {"files": ["/data/f001.txt"]},
            "error": "ValueError: mini-batch 1 is bad",
        }
    ]
    root = make_run(tmp_path / "r", tries=tries, failed_jsonl=failed)
    code, out = status(root)
    assert code == 0
    assert "score #1  RUN_EXCEPTION after 3 tries: ValueError: mini-batch 1 is bad" in out
    assert "inputs: /data/f001.txt" in out
    assert f"next: daskprs rerun-failed {root}" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("score"))
    assert row.split()[1:7] == ["with", "failures", "3", "1", "0", "0"]


def test_an_interrupted_run_points_to_resume(tmp_path):
    root = make_run(
        tmp_path / "r",
        batches=5,
        tries=[(ok(0, 0), "DONE"), (bad(1, 0.1, 1), None)],
        finals=[(2, "CANCELLED")],
        outcome="FAILED",
        failure="interrupted: step score was interrupted",
    )
    view = read_run(root)
    assert view.state == "interrupted"
    [_, score] = view.steps
    assert (score.count("DONE"), score.count("CANCELLED"), score.pending) == (1, 1, 3)
    code, out = status(root)
    assert code == 0
    assert "INTERRUPTED" in out
    assert f"next: daskprs run --resume {root}" in out
    assert "score #2  CANCELLED" in out


def test_a_killed_driver_leaves_an_incomplete_run(tmp_path):
    root = make_run(
        tmp_path / "r", batches=4, tries=[(ok(0, 0), "DONE")], outcome=None, lock_pid=dead_pid()
    )
    view = read_run(root)
    assert not view.running
    assert view.state == "incomplete"
    code, out = status(root)
    assert code == 0
    assert "INCOMPLETE" in out and "killed or crashed" in out
    assert f"next: daskprs run --resume {root}" in out


def test_a_run_whose_driver_is_alive_is_running(tmp_path):
    root = make_run(
        tmp_path / "r", batches=4, tries=[(ok(0, 0), "DONE")], outcome=None, lock_pid=os.getpid()
    )
    view = read_run(root)
    assert view.state == "running"
    text = format_status(view)
    assert "RUNNING" in text and f"process {os.getpid()}" in text
    assert "next: wait for it to end" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("score"))
    assert row.split()[1] == "running"


def test_a_rerun_that_fixed_a_failure_no_longer_lists_it(tmp_path):
    """failed_mini_batches.jsonl may be older than the ledger: the ledger decides."""
    tries = [(bad(0, 0, 3), "FAILED"), (ok(0, 1, try_no=4), "DONE")]
    stale = [{"id": 0, "step": "score", "status": "RUN_EXCEPTION", "tries": 3, "error": "x"}]
    root = make_run(tmp_path / "r", batches=1, tries=tries, failed_jsonl=stale)
    code, out = status(root)
    assert code == 0
    assert "failed or cancelled" not in out
    assert "next: nothing left to run" in out


def test_a_folder_that_is_not_a_run_directory_is_exit_2(tmp_path):
    code, out = status(tmp_path)
    assert code == 2
    assert "not a daskprs run directory" in out and "run.json" in out
    code, out = status(tmp_path / "missing")
    assert code == 2
    assert "does not exist" in out


def test_a_budget_exceeded_points_to_rerun_failed(tmp_path):
    """The queued mini-batches were cancelled: resuming would hit the same budget again."""
    tries = [(ok(0, 0), "DONE"), (bad(1, 0.1, 3), "FAILED"), (bad(2, 0.2, 3), "FAILED")]
    root = make_run(
        tmp_path / "r",
        batches=5,
        tries=tries,
        finals=[(3, "CANCELLED"), (4, "CANCELLED")],
        outcome="FAILED",
        failure="step score: 2 mini-batches failed, over mini_batch_error_threshold (1)",
    )
    view = read_run(root)
    assert view.state == "failed"
    code, out = status(root)
    assert code == 0
    assert "run r: FAILED" in out
    assert "failure:   step score: 2 mini-batches failed" in out
    assert f"next: daskprs rerun-failed {root}" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("score"))
    assert row.split()[1:8] == ["with", "failures", "1", "2", "2", "0", "5"]
