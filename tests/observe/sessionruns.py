"""Run directories of several steps and sessions written by hand (an interrupt, then a resume),
with a plan and the resource monitor's files when asked: what the report's figures are checked
against. No cluster needed."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rundirs import SETTINGS, T0

from daskprs.inputs.batches import TableBatch, TablePiece
from daskprs.inputs.plan import Plan
from daskprs.inputs.planfile import write_plan
from daskprs.results.ledger import Ledger
from daskprs.results.outcome import TryRecord

PERF_HEADER = (
    "Time,Node CPU Percent,Node Memory Percent,Node Memory Used MB,Disk Used Percent,"
    "Process Id,Process CPU Percent,Process RSS MB"
)

# (record, the final state it gave its mini-batch or None), in the order they ended
Tries = list[tuple[TryRecord, str | None]]


def done(
    mb: int, start: float, seconds: float = 1.0, rows: int = 20_000, process: str = "process000"
) -> TryRecord:
    """A try that succeeded, ``start`` seconds after T0."""
    return TryRecord(
        mb=mb,
        try_no=1,
        status="RUN_DONE",
        total=rows,
        succeeded=rows,
        node="node000",
        process=process,
        start_time=T0 + start,
        elapsed=seconds,
        run_seconds=seconds * 0.9,
    )


def timed_out(
    mb: int, start: float, seconds: float, rows: int | None = None, try_no: int = 1
) -> TryRecord:
    """A try killed at its timeout, as the slot records it: no run() time (the child never
    reported), its wall time in ``elapsed``, and ``total`` only when the plan counted rows."""
    return TryRecord(
        mb=mb,
        try_no=try_no,
        status="RUN_TIMEOUT",
        total=rows,
        failed=rows or 0,
        node="node000",
        process="process001",
        start_time=T0 + start,
        elapsed=seconds,
        run_seconds=0.0,
        error="run() took longer than the timeout of 5 s; its process was killed and replaced",
    )


def write_run(
    root: Path,
    steps: dict[str, list[Tries]],
    *,
    batches: dict[str, int],
    settings: dict | None = None,
    result: list[str] | None = None,
    plan_rows: dict[str, list[int | None]] | None = None,
) -> Path:
    """A run directory of parallel steps (in the order of ``steps``), each with its sessions'
    tries; ``result``: the lines of ``logs/job_result.txt`` after the outcome; ``plan_rows``:
    a step's tabular plan, the row count of each mini-batch (None: not counted)."""
    root.mkdir(parents=True)
    (root / "run.json").write_text(
        json.dumps({"job_file": "/jobs/job.yml", "name": root.name, "created": T0 - 2})
    )
    job_steps = [{"name": n, "kind": "parallel", "settings": settings or SETTINGS} for n in steps]
    (root / "job.json").write_text(json.dumps({"steps": job_steps}))
    for name, sessions in steps.items():
        with Ledger(str(root / "steps" / name / "ledger.jsonl")) as ledger:
            for k, tries in enumerate(sessions):
                ledger.start_session({"step": name, "session": k, "batches": batches[name]})
                for record, final in tries:
                    ledger.record_try(record, final)
    for name, rows in (plan_rows or {}).items():
        pieces = [TablePiece(f"/data/{name}-{i}.csv", n_rows=n) for i, n in enumerate(rows)]
        plan = Plan(
            "tabular", tuple(TableBatch(i, (p,), None) for i, p in enumerate(pieces)), "/data"
        )
        write_plan(str(root / "steps" / name / "plan.json"), plan)
    if result is not None:
        lines = ["job: /jobs/job.yml", f"run: {root.name}", *result]
        (root / "logs").mkdir(exist_ok=True)
        (root / "logs" / "job_result.txt").write_text("\n".join(lines) + "\n")
    return root


def perf_file(root: Path, process: str, rows: list[tuple[float, str]]) -> None:
    """``logs/perf/node000/<process>.csv``: (seconds after T0, the rest of the line)."""
    folder = root / "logs" / "perf" / "node000"
    folder.mkdir(parents=True, exist_ok=True)
    lines = [PERF_HEADER]
    for at, rest in rows:
        lines.append(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(T0 + at)) + "," + rest)
    (folder / f"{process}.csv").write_text("\n".join(lines) + "\n")
