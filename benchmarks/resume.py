"""resume: kill the driver at ~50% with SIGKILL, resume, and compare with a full run.

N one-file mini-batches whose ``run()`` sleeps ``--ms`` and returns the file's name. Three
``python -m daskprs run`` subprocesses on the same data and job: (1) a full uninterrupted run;
(2) a run started in its own session, its ledger polled until ``--at`` of the mini-batches are
DONE, then its whole process group (driver, embedded scheduler, workers, entry-script
children) killed with SIGKILL; (3) ``daskprs run --resume RUN_DIR``. The tries of each session
are counted from the ledger (``try`` events after each ``session`` event) and cross-checked
with ``logs/sys/job_report/processed_mini-batches.csv``. Targets: the resumed session re-runs
<= 55% of the mini-batches; its output is byte-identical to the full run's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _common as c

TARGET = 0.55

SCRIPT = """\
import os
import time

SLEEP = {sleep!r}


def init():
    pass


def run(mini_batch):
    time.sleep(SLEEP)
    return [os.path.basename(p) for p in mini_batch]
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=400, help="mini-batches (default 400)")
    p.add_argument("--ms", type=float, default=20.0, help="run() sleep, ms (default 20)")
    p.add_argument("--at", type=float, default=0.5, help="DONE fraction to kill at (0.5)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--timeout", type=float, default=300, help="give up waiting after, s")


# --------------------------------------------------------------------------------------------
# The run directory
# --------------------------------------------------------------------------------------------


def ledger_path(run_dir: Path, step: str = "score") -> Path:
    return run_dir / "steps" / step / "ledger.jsonl"


def done_count(run_dir: Path) -> int:
    from daskprs.results.ledger import read_ledger

    path = ledger_path(run_dir)
    if not path.exists():
        return 0
    return sum(1 for e in read_ledger(str(path)).entries.values() if e.state == "DONE")


def tries_by_session(run_dir: Path) -> list[dict[str, set[int] | int]]:
    """Per ledger session: ``tries`` (try events), ``ran`` (mini-batch ids tried) and ``done``
    (ids a try of this session ended DONE)."""
    sessions: list[dict] = []
    with open(ledger_path(run_dir), encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # cut short by the kill
            if event.get("event") == "session":
                sessions.append({"tries": 0, "ran": set(), "done": set()})
            elif event.get("event") == "try" and sessions:
                s = sessions[-1]
                s["tries"] += 1
                s["ran"].add(event["record"]["mb"])
                if event.get("final") == "DONE":
                    s["done"].add(event["record"]["mb"])
            elif event.get("event") == "final" and sessions and event.get("state") == "DONE":
                sessions[-1]["done"].add(event["mb"])
    return sessions


def report_rows(run_dir: Path) -> list[str]:
    """Data lines of ``processed_mini-batches.csv`` (one a try), the header left out."""
    path = run_dir / "logs" / "sys" / "job_report" / "processed_mini-batches.csv"
    if not path.exists():
        return []
    return path.read_text(encoding="utf-8").splitlines()[1:]


# --------------------------------------------------------------------------------------------
# Subprocesses
# --------------------------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "daskprs", "run", *args]


def run_cli(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run ``cmd`` to its end (stderr kept in ``log``); return wall seconds."""
    t0 = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}; see {log}")
    return wall


def run_and_kill(
    cmd: list[str], cwd: Path, run_dir: Path, at: int, timeout: float, log: Path
) -> tuple[float, int, float]:
    """Start ``cmd`` in its own session, poll the ledger until ``at`` mini-batches are DONE,
    SIGKILL the process group. Returns (seconds until the kill, DONE seen by the poll, seconds
    from seeing it to the group being gone)."""
    t0 = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    seen = 0
    try:
        deadline = t0 + timeout
        while time.perf_counter() < deadline:
            seen = done_count(run_dir)
            if seen >= at:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended before it could be killed; see {log}")
            time.sleep(0.01)
        else:
            raise RuntimeError(f"{at} mini-batches not DONE after {timeout:g} s; see {log}")
    finally:
        t_seen = time.perf_counter()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
        proc.wait()
        _wait_group_gone(proc.pid)
    return t_seen - t0, seen, time.perf_counter() - t_seen


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of the group ``pgid`` is left (zombies reaped by init)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = []
        for p in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    left.append(p.pid)
            except (ProcessLookupError, psutil.Error):
                continue
        if not left:
            return
        time.sleep(0.05)
    print(f"  WARNING: processes of group {pgid} still alive after SIGKILL: {left}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    n, workers = args.n, args.workers
    at = max(1, round(n * args.at))
    with c.data_folder(args.data, "resume") as root:
        files = c.make_small_files(root / f"input-{n}", n)
        job = c.write_job(
            root / "job",
            SCRIPT.format(sleep=args.ms / 1000),
            input_yaml=f"type: uri_folder\npath: {root / f'input-{n}'}",
            mini_batch_size='"1"',
            extra="retry_settings:\n  max_retries: 0\n  timeout: 60",
        )
        c.header(
            f"resume: {n} one-file mini-batches, run() sleeps {args.ms:g} ms, {workers} workers, "
            f"driver killed at {at} DONE",
        )
        w = ["--workers", str(workers)]
        full_dir, kill_dir = root / "run-full", root / "run-killed"
        for d in (full_dir, kill_dir):
            shutil.rmtree(d, ignore_errors=True)  # daskprs creates it
        logs = c.fresh_dir(root / "logs")

        # --force-rerun: both runs share a run root, where step reuse would copy the first
        fresh = ("--force-rerun",)
        full_s = run_cli(
            _cli(str(job), "--run-dir", str(full_dir), *fresh, *w), root, logs / "full.txt"
        )
        print(f"  full run: {full_s:.2f} s", flush=True)

        to_kill, seen, kill_lag = run_and_kill(
            _cli(str(job), "--run-dir", str(kill_dir), *fresh, *w),
            root,
            kill_dir,
            at,
            args.timeout,
            logs / "killed.txt",
        )
        done_at_kill = done_count(kill_dir)
        rows_at_kill = len(report_rows(kill_dir))
        out_at_kill = c.output_of(kill_dir).exists()
        print(
            f"  killed run: {done_at_kill} of {n} DONE at the kill ({seen} seen by the poll), "
            f"killed {to_kill:.2f} s after start, group gone {kill_lag:.2f} s later",
            flush=True,
        )

        resume_s = run_cli(_cli("--resume", str(kill_dir), *w), root, logs / "resume.txt")
        print(f"  resumed run: {resume_s:.2f} s", flush=True)

        sessions = tries_by_session(kill_dir)
        assert len(sessions) == 2, f"expected 2 ledger sessions, found {len(sessions)}"
        first, second = sessions
        rows_resumed = len(report_rows(kill_dir)) - rows_at_kill
        rerun = len(second["ran"])
        # DONE in the first session and run again: a try the kill caught between its output
        # and its ledger line (expected: at most the tries in flight)
        twice = len(first["done"] & second["ran"])
        not_done = n - done_at_kill
        full_out, kill_out = c.output_of(full_dir), c.output_of(kill_dir)
        identical = c.sha256(full_out) == c.sha256(kill_out)
        expected = [p.name for p in files]
        rows_ok = kill_out.read_text().splitlines() == expected
        rows = [
            ("full run", full_s, n, ""),
            ("killed run (to the kill)", to_kill, first["tries"], f"{done_at_kill} DONE"),
            ("resumed run", resume_s, second["tries"], f"{rerun} mini-batches"),
            ("killed + resumed", to_kill + resume_s, first["tries"] + second["tries"], ""),
        ]
        print(c.table(["session", "seconds", "tries", "notes"], rows))
        print(
            f"  resumed session: {rerun} mini-batches ({second['tries']} tries; report rows "
            f"after the kill: {rows_resumed}); not DONE at the kill: {not_done}; DONE before "
            f"the kill and run again: {twice}"
        )
        print(f"  output written before the kill: {out_at_kill}; rows in input order: {rows_ok}")
        fraction = rerun / n
        met_fraction = c.verdict("fraction re-run by the resumed session", fraction, TARGET)
        print(f"  output byte-identical to the full run: {identical}")
        if rows_resumed != second["tries"]:
            print(
                f"  NOTE: {rows_resumed} report rows after the kill vs {second['tries']} ledger "
                "tries in the resumed session"
            )
        met = met_fraction and identical and rows_ok
        row = {
            "n": n,
            "ms": args.ms,
            "workers": workers,
            "kill_at": at,
            "done_at_kill": done_at_kill,
            "full_s": full_s,
            "to_kill_s": to_kill,
            "resume_s": resume_s,
            "first_tries": first["tries"],
            "resumed_tries": second["tries"],
            "resumed_batches": rerun,
            "report_rows_resumed": rows_resumed,
            "done_then_rerun": twice,
            "fraction_rerun": fraction,
            "target": TARGET,
            "identical": identical,
            "met": met,
        }
        c.record("resume", row, not args.no_csv)
        return row
