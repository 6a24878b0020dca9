"""timeout: one mini-batch hangs (timeout 2 s, max_retries 1) among ~20 others.

Measures the job's end after the hang started (target <= 2 x 2 s + 10 s), the kill latency
(the timeout's deadline to the hung process being gone, watched from outside with psutil),
the replacement latency (deadline to ``init()`` of the next process in that worker slot), and
that every other mini-batch's row is in the output. Cluster start excluded (a client).
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from benchmarks import _common as c

TIMEOUT = 2.0
MAX_RETRIES = 1
TARGET = (MAX_RETRIES + 1) * TIMEOUT + 10.0

SCRIPT = """\
import os
import time

LOG = {log!r}
HANG = {hang!r}
WORK = {work!r}


def _log(kind):
    with open(LOG, "a") as f:
        f.write(f"{{kind}} {{time.time():.6f}} {{os.getpid()}} {{os.getppid()}}\\n")


def init():
    _log("init")


def run(mini_batch):
    out = []
    for path in mini_batch:
        name = os.path.basename(path)
        if name == HANG:
            _log("hang")
            time.sleep(3600)
        time.sleep(WORK)
        out.append(name)
    return out
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=20, help="other mini-batches (default 20)")
    p.add_argument("--hang-at", type=int, default=2, help="index of the hanging mini-batch")
    p.add_argument("--work", type=float, default=0.5, help="seconds each other run() takes")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--verbose", action="store_true", help="show daskprs progress lines")


def _read_log(log: Path) -> list[tuple[str, float, int, int]]:
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        kind, t, pid, ppid = line.split()
        out.append((kind, float(t), int(pid), int(ppid)))
    return out


class DeathWatch:
    """Watches the log for hung processes and notes when each one is gone."""

    def __init__(self, log: Path, interval: float = 0.005):
        self.log, self.interval = log, interval
        self.gone: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="death-watch")

    def _loop(self) -> None:
        import psutil

        watched: dict[int, psutil.Process] = {}
        while not self._stop.is_set():
            for kind, _, pid, _ in _read_log(self.log):
                if kind == "hang" and pid not in watched and pid not in self.gone:
                    try:
                        watched[pid] = psutil.Process(pid)
                    except psutil.NoSuchProcess:
                        self.gone[pid] = time.time()
            for pid, proc in list(watched.items()):
                try:
                    alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
                except psutil.NoSuchProcess:
                    alive = False
                if not alive:
                    self.gone[pid] = time.time()
                    del watched[pid]
            self._stop.wait(self.interval)

    def __enter__(self) -> DeathWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(args: argparse.Namespace) -> dict:
    total = args.n + 1
    with c.data_folder(args.data, "timeout") as root:
        files = c.make_small_files(root / f"input-{total}", total)
        hang = files[args.hang_at].name
        log = root / "events.log"
        log.unlink(missing_ok=True)
        job = c.write_job(
            root / "job",
            SCRIPT.format(log=str(log), hang=hang, work=args.work),
            input_yaml=f"type: uri_folder\npath: {root / f'input-{total}'}",
            mini_batch_size='"1"',
            extra=f"retry_settings:\n  max_retries: {MAX_RETRIES}\n  timeout: {TIMEOUT:g}",
        )
        with c.local_client(args.workers) as (client, start):
            c.header(
                f"timeout: 1 hanging mini-batch (timeout {TIMEOUT:g} s, max_retries "
                f"{MAX_RETRIES}) among {args.n} others of {args.work:g} s",
                cluster_start=f"{start:.2f} s (excluded)",
            )
            with DeathWatch(log) as watch:
                result, wall = c.run_daskprs(
                    job, root / "run", client=client, echo=c.Echo(args.verbose)
                )
                ended = time.time()
                time.sleep(0.05)
        events = _read_log(log)
        hangs = [e for e in events if e[0] == "hang"]
        inits = [e for e in events if e[0] == "init"]
        out_path = c.output_of(root / "run")
        rows_out = out_path.read_text().splitlines() if out_path.exists() else []
        expected = [f.name for f in files if f.name != hang]
        all_present = rows_out == expected
        print(
            f"  job: ok={result.ok} wall {wall:.2f} s; summary {result.steps[0].summary}"
            if result.steps
            else f"  job: ok={result.ok} failure={result.failure}"
        )
        table_rows = []
        kills, replacements = [], []
        for i, (_, t_start, pid, ppid) in enumerate(hangs, start=1):
            deadline = t_start + TIMEOUT
            gone = watch.gone.get(pid)
            kill = gone - deadline if gone is not None else None
            nxt = next((e for e in inits if e[3] == ppid and e[1] > t_start), None)
            repl = nxt[1] - deadline if nxt is not None else None
            if kill is not None:
                kills.append(kill)
            if repl is not None:
                replacements.append(repl)
            table_rows.append(
                (
                    f"try {i}",
                    pid,
                    f"{t_start - hangs[0][1]:.2f}",
                    "-" if kill is None else f"{kill * 1e3:.0f} ms",
                    "- (no next task in slot)" if repl is None else f"{repl * 1e3:.0f} ms",
                )
            )
        print(
            c.table(
                ["hang", "pid", "start +s", "deadline->killed", "deadline->next init()"],
                table_rows,
            )
        )
        after = ended - hangs[0][1] if hangs else float("nan")
        print(f"  tries of the hanging mini-batch: {len(hangs)} (expected {MAX_RETRIES + 1})")
        print(f"  other rows present and in order: {all_present} ({len(rows_out)}/{len(expected)})")
        met = c.verdict("job end after the hang started, s", after, TARGET)
        c.verdict("worst kill latency after the deadline, s", max(kills or [float("nan")]), 2.0)
        row = {
            "others": args.n,
            "work_s": args.work,
            "workers": args.workers,
            "wall_s": wall,
            "after_hang_s": after,
            "target_s": TARGET,
            "hang_tries": len(hangs),
            "kill_latency_max_s": max(kills) if kills else "",
            "kill_latency_mean_s": sum(kills) / len(kills) if kills else "",
            "replacement_latency_max_s": max(replacements) if replacements else "",
            "rows_present": all_present,
            "job_ok": result.ok,
            "met": met and all_present,
        }
        c.record("timeout", row, not args.no_csv)
        return row
