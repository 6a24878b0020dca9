"""Run directories written by hand, in every state a run can be left in (no cluster needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from daskprs.observe.logs import Report
from daskprs.results.ledger import Ledger
from daskprs.results.outcome import TryRecord
from daskprs.rundir import RunDir

T0 = 1_790_000_000.0
SETTINGS = {
    "max_retries": 2,
    "timeout": 5.0,
    "error_threshold": -1,
    "mini_batch_error_threshold": 3,
    "allowed_failed_percent": 100.0,
    "task_overhead_timeout": 30.0,
    "progress_update_timeout": None,
}


def ok(mb: int, start: float, process: str = "process000", try_no: int = 1) -> TryRecord:
    return TryRecord(
        mb=mb,
        try_no=try_no,
        status="RUN_DONE",
        total=2,
        succeeded=2,
        node="node000",
        process=process,
        start_time=T0 + start,
        elapsed=1.0,
        run_seconds=0.8,
    )


def bad(mb: int, start: float, try_no: int, status: str = "RUN_EXCEPTION") -> TryRecord:
    return TryRecord(
        mb=mb,
        try_no=try_no,
        status=status,
        total=2,
        failed=2,
        node="node000",
        process="process001",
        start_time=T0 + start,
        elapsed=0.5,
        run_seconds=0.4,
        error=f"ValueError: mini-batch {mb} is bad",
        traceback='Traceback (most recent call last):\n  File "score.py", line 3\n'
        f"ValueError: mini-batch {mb} is bad",
    )


def make_run(
    root: Path,
    *,
    batches: int = 4,
    tries: list[tuple[TryRecord, str | None]] = (),
    finals: list[tuple[int, str]] = (),
    outcome: str | None = "succeeded",
    failure: str | None = None,
    lock_pid: int | None = None,
    failed_jsonl: list[dict] | None = None,
    result_lines: list[str] = (),
    prep: str | None = "done",
    ledger: bool = True,
    inputs: dict | None = None,
) -> Path:
    """A run directory of one parallel step ``score`` with ``batches`` mini-batches.

    ``tries``: (record, final state or None) in the order they ended; ``finals``: mini-batches
    ended without a try of theirs (cancelled); ``outcome``/``failure``: what
    ``logs/job_result.txt`` says (None: not written), ``result_lines`` its lines after the
    failure (``stopped by: storage``); ``lock_pid``: the driver holding the lock. ``prep``:
    the command step before it is ``done``, ``failed`` (started, not done) or None (not
    started); ``ledger``: whether ``score`` began its ledger; ``inputs``: the run record's.
    """
    root.mkdir(parents=True)
    (root / "run.json").write_text(
        json.dumps(
            {"job_file": "/jobs/job.yml", "name": root.name, "created": T0 - 2, "inputs": inputs}
        )
    )
    (root / "job.json").write_text(
        json.dumps(
            {
                "steps": [
                    {"name": "prep", "kind": "command", "command": "true"},
                    {
                        "name": "score",
                        "kind": "parallel",
                        "entry_script": "score.py",
                        "settings": SETTINGS,
                    },
                ]
            }
        )
    )
    (root / "steps" / "prep").mkdir(parents=True)
    if prep is not None:
        (root / "steps" / "prep" / "command.json").write_text(json.dumps({"started": T0 - 1}))
    if prep == "done":
        (root / "steps" / "prep" / "done").touch()
    if ledger:
        report = Report(RunDir(str(root)).logs.processed_report)
        with Ledger(str(root / "steps" / "score" / "ledger.jsonl")) as written:
            written.start_session({"step": "score", "session": 0, "batches": batches})
            for rec, final in tries:
                written.record_try(rec, final)
                report.add(rec)
            for mb, state in finals:
                written.record_final(mb, state, None)
        report.close()
    if outcome is not None:
        lines = ["job: /jobs/job.yml", f"run: {root.name}", f"outcome: {outcome}"]
        if failure:
            lines.append(f"failure: {failure}")
        lines += result_lines
        (root / "logs").mkdir(exist_ok=True)
        (root / "logs" / "job_result.txt").write_text("\n".join(lines) + "\n")
    if lock_pid == os.getpid():
        RunDir(str(root)).lock()  # held as a running driver holds it (flock), for the test
    elif lock_pid is not None:
        (root / "run.lock").write_text(str(lock_pid))  # left by a driver that ended
    if failed_jsonl is not None:
        with open(root / "failed_mini_batches.jsonl", "w") as f:
            for obj in failed_jsonl:
                f.write(json.dumps(obj) + "\n")
    return root


def dead_pid() -> int:
    """The pid of a process that has ended (and was reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid
