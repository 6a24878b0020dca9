"""``daskprs status``: reading a run directory in each state it can be left in."""

from __future__ import annotations

import json
import os
from dataclasses import replace

from click.testing import CliRunner
from rundirs import T0, bad, dead_pid, make_run, ok

from daskprs.api import _write_results
from daskprs.cli import cli
from daskprs.job.model import Job
from daskprs.observe.runview import read_run
from daskprs.observe.status import format_status, next_command
from daskprs.results.jobresult import JobResult, StepOutcome
from daskprs.results.ledger import Ledger
from daskprs.rundir import RunDir


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


def row_of(out: str, step: str = "score") -> list[str]:
    return next(line for line in out.splitlines() if line.strip().startswith(step)).split()


NO_ROOM = (
    "step score: /r/steps/score/parts/00001.s0n2.part: no space left on the device (No space "
    "left on device) while entry-script process node000/process000 wrote the rows of "
    "mini-batch 1; every mini-batch done is kept. Free some space there"
)


def test_a_stop_for_lack_of_room_points_to_resume_and_is_no_failure(tmp_path):
    """The step's budget ``storage`` is on record: room is made outside the run, and a resume
    runs what was cancelled (the mini-batch whose rows found no room has no try on record,
    though it ran)."""
    root = make_run(
        tmp_path / "r",
        batches=3,
        tries=[(ok(0, 0), "DONE")],
        finals=[(1, "CANCELLED"), (2, "CANCELLED")],
        outcome="FAILED",
        failure=NO_ROOM,
        result_lines=["stopped by: storage"],
    )
    view = read_run(root)
    assert view.stopped_by == "storage"
    code, out = status(root)
    assert code == 0
    assert f"next: daskprs run --resume {root}    (after making room" in out
    assert "after fixing the entry script" not in out
    assert row_of(out)[1:7] == ["stopped", "1", "0", "2", "0", "3"]
    assert "with failures" not in out
    assert "score #1  CANCELLED: cancelled (runs again on --resume)" in out
    assert "before it ran" not in out


def test_a_stop_for_lack_of_room_recorded_by_an_older_daskprs_reads_alike(tmp_path):
    """No ``stopped by`` line: the failure's own ``continue with`` says it, and the failed
    mini-batches' file says "cancelled before it ran" of the one that ran."""
    failure = f"{NO_ROOM}, then continue with: daskprs run --resume {tmp_path / 'r'}"
    cancelled = {"step": "score", "status": "CANCELLED", "state": "CANCELLED", "tries": 0}
    root = make_run(
        tmp_path / "r",
        batches=2,
        finals=[(0, "CANCELLED"), (1, "CANCELLED")],
        outcome="FAILED",
        failure=failure,
        failed_jsonl=[{**cancelled, "id": i, "error": "cancelled before it ran"} for i in (0, 1)],
    )
    _, out = status(root)
    assert f"next: daskprs run --resume {root}    (after making room" in out
    assert "before it ran" not in out and "with failures" not in out
    assert out.count("CANCELLED: cancelled (runs again on --resume)") == 2


def test_a_cancelled_mini_batch_with_a_try_on_record_is_not_said_never_to_have_run(tmp_path):
    """init() failed everywhere: each mini-batch had a try (INIT_FAILED) before the stop
    cancelled it. Rerun after fixing the script; nothing FAILED, so no "with failures"."""
    init = [bad(mb, 0.1 * mb, 1, status="INIT_FAILED") for mb in (0, 1)]
    root = make_run(
        tmp_path / "r",
        batches=2,
        tries=[(rec, None) for rec in init],
        finals=[(0, "CANCELLED"), (1, "CANCELLED")],
        outcome="FAILED",
        failure="step score: init() failed everywhere: 2 init() failures in the job",
        result_lines=["stopped by: init"],
    )
    _, out = status(root)
    assert "score #0  CANCELLED after 1 try: cancelled (runs again on --resume)" in out
    assert "before it ran" not in out
    assert row_of(out)[1:4] == ["stopped", "0", "0"]
    assert f"next: daskprs rerun-failed {root}    (after fixing the entry script)" in out


def test_a_cluster_not_reached_points_to_resume(tmp_path):
    """The run stopped before any step began (no ledger, no command started): what the
    failure names is fixed outside the run, and a resume starts it."""
    root = make_run(
        tmp_path / "r",
        prep=None,
        ledger=False,
        inputs={"score": {"batches": 2}},
        outcome="FAILED",
        failure="cannot reach the Dask scheduler at tcp://127.0.0.1:1 (Timed out)",
    )
    code, out = status(root)
    assert code == 0
    assert f"next: daskprs run --resume {root}    (after fixing what the failure above" in out
    assert "after fixing the entry script" not in out
    assert "/jobs/job.yml" not in out.split("next:")[1]


def test_a_failed_command_step_points_to_rerun_failed(tmp_path):
    """--resume and rerun-failed both run a command step that did not finish again."""
    root = make_run(
        tmp_path / "r",
        prep="failed",
        ledger=False,
        outcome="FAILED",
        failure="command step prep exited with code 1; see /r/logs/steps/prep/stderr.txt",
    )
    code, out = status(root)
    assert code == 0
    assert row_of(out, "prep")[1:3] == ["not", "done"]
    assert f"next: daskprs rerun-failed {root}    (after fixing the command of step prep)" in out


def test_a_run_directory_changed_while_it_ran_is_run_again(tmp_path):
    """What it did is not on record: a resume cannot help, and status says why."""
    root = make_run(
        tmp_path / "r",
        tries=[(ok(0, 0), "DONE")],
        finals=[(mb, "CANCELLED") for mb in (1, 2, 3)],
        outcome="FAILED",
        failure="step score: the ledger /r/steps/score/ledger.jsonl was replaced while it ran",
        result_lines=["stopped by: run_directory"],
    )
    _, out = status(root)
    assert "next: daskprs run /jobs/job.yml    (in a new run directory: this one's records" in out
    assert "a resume cannot continue it" in out


def test_the_budget_that_stopped_the_job_is_on_record(tmp_path):
    """``logs/job_result.txt`` says which budget stopped the job (the failed step's), and
    status follows it."""
    run = RunDir(str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    run.write_record({"name": "r", "job_file": "/j.yml", "created": 1.0})
    job = Job(source="/j.yml", kind="pipeline", steps=(), name="r", run_dir=run.root)
    outcome = StepOutcome(
        "score", NO_ROOM.removeprefix("step score: "), "storage", {"total": 2, "cancelled": 2}, None
    )
    counts = {"done": 0, "failed": 0, "succeeded_items": 0, "failed_items": 0}
    outcome = replace(outcome, summary={**outcome.summary, **counts})
    result = JobResult(run_dir=run.root, failure=NO_ROOM, steps=[outcome])
    _write_results(run, result, job)
    assert "stopped by: storage" in (tmp_path / "run" / "logs" / "job_result.txt").read_text()
    assert next_command(read_run(run.root)) == f"daskprs run --resume {run.root}"
    # the driver's own disk: no step's budget, the job's
    result = JobResult(run_dir=run.root, failure="no space left on the device", budget="storage")
    _write_results(run, result, job)
    assert "stopped by: storage" in (tmp_path / "run" / "logs" / "job_result.txt").read_text()
    # a failure no budget made says none
    result = JobResult(run_dir=run.root, failure="command step prep exited with code 1")
    _write_results(run, result, job)
    assert "stopped by" not in (tmp_path / "run" / "logs" / "job_result.txt").read_text()


def map_batches_run(root, tries, outcome: str | None, npartitions: int = 3):
    """A map_batches call's run directory: map_batches.json, no run.json nor job.json."""
    root.mkdir()
    (root / "map_batches.json").write_text(
        json.dumps({"kind": "bag", "npartitions": npartitions, "created": T0})
    )
    with Ledger(str(root / "steps" / "map_batches" / "ledger.jsonl")) as ledger:
        ledger.start_session({"step": "map_batches", "session": 0, "batches": npartitions})
        for rec, final in tries:
            ledger.record_try(rec, final)
    if outcome is not None:
        (root / "logs").mkdir()
        (root / "logs" / "job_result.txt").write_text(
            f"map_batches run: {root}\noutcome: {outcome}\n"
        )
    return root


def test_a_map_batches_run_directory_reads_as_a_run(tmp_path):
    """map_batches leaves a ledger and logs as a job's step does: status and report read it,
    and the next step is a call of map_batches, not a command."""
    tries = [(ok(0, 0), "DONE"), (bad(1, 0.1, 1), "FAILED"), (ok(2, 0.2), "DONE")]
    root = map_batches_run(tmp_path / "m", tries, "succeeded with failures")
    code, out = status(root)
    assert code == 0, out
    assert "run m: SUCCEEDED" in out and "(none: a map_batches run)" in out
    assert row_of(out, "map_batches")[1:8] == ["with", "failures", "2", "1", "0", "0", "3"]
    assert "map_batches #1  RUN_EXCEPTION after 1 try: ValueError: mini-batch 1 is bad" in out
    # the same run_dir keeps it failed: a new one runs it again
    assert "next: map_batches(..., run_dir=<a new folder>)    (after fixing run()" in out
    report = CliRunner().invoke(cli, ["report", str(root)])
    assert report.exit_code == 0, report.output
    html = (root / "report.html").read_text()
    assert "daskprs map_batches m" in html and "mini-batch 1 is bad" in html


def test_an_interrupted_map_batches_run_is_continued_by_the_same_call(tmp_path):
    root = map_batches_run(tmp_path / "m", [(ok(0, 0), "DONE")], None, npartitions=4)
    view = read_run(root)
    assert view.state == "incomplete"
    [step] = view.steps
    assert (step.count("DONE"), step.pending) == (1, 3)
    assert next_command(view) == f"map_batches(..., run_dir={str(root)!r})"
    assert "the same call again: it runs only the partitions not done" in format_status(view)


def test_the_budgets_status_reads_are_named_as_the_supervisor_writes_them():
    from daskprs.execute.supervisor import Budget
    from daskprs.observe import status

    assert (status._STORAGE, status._RUN_DIRECTORY) == (Budget.STORAGE, Budget.RUN_DIRECTORY)
