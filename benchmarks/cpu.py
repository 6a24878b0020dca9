"""cpu: 200 one-file mini-batches of ~100 ms of pure-Python CPU work each, vs serial.

The work is calibrated in this process to about --ms milliseconds, run serially here (the
entry script's own ``run()``, loaded in this process), then through daskprs on a
LocalCluster client (cluster start excluded and reported apart). Parallel efficiency =
serial time / (daskprs time x workers); targets: >= 0.90, and >= 0.98 x the
efficiency a raw ``client.map`` of the same ``run()`` gets on the same cluster in the same run.
"""

from __future__ import annotations

import argparse
import time
import types
from pathlib import Path

from benchmarks import _common as c

TARGET = 0.90
# daskprs's efficiency over the raw client.map's, measured side by side
RAW_TARGET = 0.98

SCRIPT = """\
import os

N = {n}


def work(n):
    s = 0
    for i in range(n):
        s += i * i % 7
    return s


def init():
    pass


def run(mini_batch):
    return [f"{{os.path.basename(p)}} {{work(N)}}" for p in mini_batch]
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=200, help="mini-batches (default 200)")
    p.add_argument("--ms", type=float, default=100.0, help="CPU milliseconds per mini-batch")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--verbose", action="store_true", help="show daskprs progress lines")


def _load(source: str) -> types.ModuleType:
    module = types.ModuleType("bench_cpu_entry")
    exec(compile(source, "score.py", "exec"), module.__dict__)
    return module


def calibrate(ms: float) -> int:
    """Loop count of ``work`` taking about ``ms`` milliseconds of CPU here."""
    work = _load(SCRIPT.format(n=0)).work
    n = 100_000
    while True:
        t0 = time.process_time()
        work(n)
        spent = time.process_time() - t0
        if spent > 0.05:
            break
        n *= 2
    best = min(_cpu(work, n) for _ in range(3))
    return max(1, int(n * ms / 1e3 / best))


def _cpu(fn, n: int) -> float:
    t0 = time.process_time()
    fn(n)
    return time.process_time() - t0


def main(args: argparse.Namespace) -> dict:
    n, workers = args.n, args.workers
    with c.data_folder(args.data, "cpu") as root:
        files = c.make_small_files(root / f"input-{n}", n)
        loops = calibrate(args.ms)
        source = SCRIPT.format(n=loops)
        module = _load(source)
        c.header(
            f"cpu: {n} mini-batches of ~{args.ms:g} ms CPU ({loops} loops) on {workers} workers",
        )
        module.init()
        t0 = time.perf_counter()
        serial_rows = [row for f in files for row in module.run([str(f)])]
        serial = time.perf_counter() - t0
        print(f"  serial: {serial:.2f} s ({serial / n * 1e3:.0f} ms per mini-batch)", flush=True)
        job = c.write_job(
            root / "job",
            source,
            input_yaml=f"type: uri_folder\npath: {root / f'input-{n}'}",
            mini_batch_size='"1"',
            extra="retry_settings:\n  max_retries: 0\n  timeout: 600",
        )
        warm_files = c.make_small_files(root / "warmup", 4)
        warm_job = c.write_job(
            root / "warm-job",
            SCRIPT.format(n=1000),
            input_yaml=f"type: uri_folder\npath: {root / 'warmup'}",
        )
        assert warm_files
        with c.local_client(workers) as (client, start):
            print(f"  cluster start: {start:.2f} s (excluded)")
            res, _ = c.run_daskprs(warm_job, root / "run-warm", client=client)
            assert res.ok, res.failure
            # control: the same run() through a raw client.map on the same cluster, to tell
            # daskprs's overhead from CPU taken by other processes on a shared machine
            t0 = time.perf_counter()
            raw_rows = client.gather(client.map(module.run, [[str(f)] for f in files]))
            raw = time.perf_counter() - t0
            assert [r for rows in raw_rows for r in rows] == serial_rows
            result, wall = c.run_daskprs(
                job, root / "run", client=client, echo=c.Echo(args.verbose)
            )
        assert result.ok, result.failure
        out = Path(c.output_of(root / "run")).read_text().splitlines()
        assert out == serial_rows, "daskprs output differs from the serial rows"
        step = result.steps[0]
        eff = serial / (wall * workers)
        ideal = serial / workers
        print(
            c.table(
                ["contender", "seconds", "mini-batches/s", "speed-up"],
                [
                    ("serial", serial, n / serial, 1.0),
                    (f"ideal on {workers} workers", ideal, n / ideal, float(workers)),
                    ("raw client.map (control)", raw, n / raw, serial / raw),
                    ("daskprs run_job", wall, n / wall, serial / wall),
                    ("  of which planning", step.plan_seconds, "", ""),
                    ("  of which running", step.seconds, "", ""),
                ],
            )
        )
        met = c.verdict("parallel efficiency", eff, TARGET, higher_is_better=True)
        raw_eff = serial / (raw * workers)
        print(f"  raw client.map efficiency (what the machine gave right now): {raw_eff:.3f}")
        vs_raw = eff / raw_eff
        met_raw = c.verdict("efficiency / raw's", vs_raw, RAW_TARGET, higher_is_better=True)
        met = met and met_raw
        print(f"  time above ideal: {wall - ideal:.2f} s ({(wall - ideal) / n * 1e3:.1f} ms each)")
        row = {
            "n": n,
            "ms": args.ms,
            "workers": workers,
            "cluster_start_s": start,
            "serial_s": serial,
            "raw_map_s": raw,
            "daskprs_s": wall,
            "raw_efficiency": raw_eff,
            "efficiency": eff,
            "target": TARGET,
            "vs_raw": vs_raw,
            "met": met,
        }
        c.record("cpu", row, not args.no_csv)
        return row
