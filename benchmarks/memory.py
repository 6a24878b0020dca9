"""memory: driver and worker peak RSS of a tabular job, at two input sizes.

The tabular workload (CSV, mini_batch_size 10mb, a 2-column DataFrame per mini-batch through
append_row_to, output about half the input) runs on the embedded cluster at half of --size and
at --size. A thread samples the RSS of this process (the driver, which also hosts the
embedded scheduler) and of every descendant (Dask worker processes, entry-script children).
Targets: driver peak RSS <= 300 MB and flat in input size; a child's peak within a few x the
mini-batch size above its idle footprint.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from benchmarks import _common as c
from benchmarks import tabular

TARGET_DRIVER = 300e6
FLAT = 1.2  # bigger / smaller driver peak, counted as flat
BATCH = 10 * 2**20


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="500MB", help="larger input (default 500MB; full: 2GB)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--file-size", default="100MB", help="size of each generated CSV file")
    p.add_argument("--interval", type=float, default=0.05, help="sampling interval, s")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one run, print JSON
    p.add_argument("--run-dir", help=argparse.SUPPRESS)


def idle_child_rss() -> int:
    """RSS of a fresh Python that imported what an entry-script child imports."""
    code = (
        "import psutil, pandas, daskprs.execute.child, daskprs.inputs.readers,"
        " daskprs.results.formatting;"
        "print(psutil.Process().memory_info().rss)"
    )
    return int(subprocess.check_output([sys.executable, "-c", code], text=True).strip())


def measure_one(folder: str, run_dir: str, workers: int, interval: float) -> dict:
    """One daskprs run in this (fresh) process, sampled from before daskprs is imported."""
    import json

    job = tabular.tabular_job(Path(run_dir).parent / "job", Path(folder))
    with c.RssSampler(interval) as rss:
        result, wall = c.run_daskprs(job, Path(run_dir), workers=workers)
    assert result.ok, result.failure
    out = {
        "input": sum(f.stat().st_size for f in Path(folder).glob("*.csv")),
        "output": c.output_of(Path(run_dir)).stat().st_size,
        "wall": wall,
        "driver_start": rss.start,
        "driver": rss.driver,
        "worker": rss.by_kind.get("dask worker", 0),
        "child": rss.by_kind.get("entry-script child", 0),
        "tree": rss.total,
        "samples": rss.samples,
    }
    print(json.dumps(out))
    return out


def _measure_in_subprocess(folder: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    import json

    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "memory",
        "--one",
        str(folder),
        "--run-dir",
        str(run_dir),
        "--workers",
        str(args.workers),
        "--interval",
        str(args.interval),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> dict | None:
    if args.one:
        measure_one(args.one, args.run_dir, args.workers, args.interval)
        return None
    big = c.parse_size(args.size)
    sizes = [big // 2, big]
    with c.data_folder(args.data, "memory") as root:
        c.header(
            f"memory: tabular job at {c.mb(sizes[0])} and {c.mb(sizes[1])} of CSV, each run "
            "in a fresh driver process"
        )
        idle = idle_child_rss()
        print(f"  an idle entry-script child: {c.mb(idle)}")
        results = []
        for size in sizes:
            folder = root / f"csv-{size}"
            tabular.generate_csv(folder, size, c.parse_size(args.file_size))
            r = _measure_in_subprocess(folder, root / "runs" / "run", args)
            results.append(r)
            print(f"  {c.mb(r['input'])}: {r['wall']:.1f} s, {r['samples']} samples", flush=True)
        rows = [
            (
                c.mb(r["input"]),
                c.mb(r["output"]),
                f"{r['wall']:.1f}",
                c.mb(r["driver_start"]),
                c.mb(r["driver"]),
                c.mb(r["worker"]),
                c.mb(r["child"]),
                f"{(r['child'] - idle) / BATCH:.1f}",
                c.mb(r["tree"]),
            )
            for r in results
        ]
        print(
            c.table(
                [
                    "input",
                    "output",
                    "s",
                    "driver at start",
                    "driver peak",
                    "dask worker peak",
                    "child peak",
                    "(child-idle)/batch",
                    "all processes peak",
                ],
                rows,
            )
        )
        small, large = results
        met_abs = c.verdict("driver peak RSS, MB", large["driver"] / 1e6, TARGET_DRIVER / 1e6)
        growth = large["driver"] / max(1, small["driver"])
        met_flat = c.verdict(
            f"driver peak at {c.mb(large['input'])} / at {c.mb(small['input'])}", growth, FLAT
        )
        row = {"workers": args.workers, "idle_child": idle, "met": met_abs and met_flat}
        for tag, r in (("small", small), ("large", large)):
            row.update({f"{tag}_{k}": v for k, v in r.items() if k != "samples"})
        c.record("memory", row, not args.no_csv)
        return row
