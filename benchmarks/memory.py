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
    p.add_argument("--verbose", action="store_true", help="show daskprs progress lines")


def idle_child_rss() -> int:
    """RSS of a fresh Python that imported what an entry-script child imports."""
    code = (
        "import psutil, pandas, daskprs.child, daskprs.readers, daskprs.formatting;"
        "print(psutil.Process().memory_info().rss)"
    )
    return int(subprocess.check_output([sys.executable, "-c", code], text=True).strip())


def main(args: argparse.Namespace) -> dict:
    big = c.parse_size(args.size)
    sizes = [big // 2, big]
    with c.data_folder(args.data, "memory") as root:
        c.header(f"memory: tabular job at {c.mb(sizes[0])} and {c.mb(sizes[1])} of CSV")
        idle = idle_child_rss()
        cold = c.rss_now()
        # a small warm-up run first, so that imports and first-use caches are not counted
        # as growth with input size
        warm = root / "csv-warmup"
        tabular.generate_csv(warm, 20 * 2**20, 10 * 2**20)
        res, _ = c.run_daskprs(tabular.tabular_job(root / "job", warm), root / "run", workers=1)
        assert res.ok, res.failure
        base = c.rss_now()
        print(
            f"  driver RSS: {c.mb(cold)} cold, {c.mb(base)} after a warm-up run; "
            f"an idle child: {c.mb(idle)}"
        )
        results = []
        for size in sizes:
            folder = root / f"csv-{size}"
            files = tabular.generate_csv(folder, size, c.parse_size(args.file_size))
            in_bytes = sum(f.stat().st_size for f in files)
            job = tabular.tabular_job(root / "job", folder)
            before = c.rss_now()
            with c.RssSampler(args.interval) as rss:
                result, wall = c.run_daskprs(
                    job, root / "run", workers=args.workers, echo=c.Echo(args.verbose)
                )
            assert result.ok, result.failure
            out_bytes = c.output_of(root / "run").stat().st_size
            results.append(
                {
                    "input": in_bytes,
                    "output": out_bytes,
                    "wall": wall,
                    "driver": rss.driver,
                    "driver_before": before,
                    "worker": rss.by_kind.get("dask worker", 0),
                    "child": rss.by_kind.get("entry-script child", 0),
                    "tree": rss.total,
                    "samples": rss.samples,
                }
            )
            print(f"  {c.mb(in_bytes)}: {wall:.1f} s, {rss.samples} samples", flush=True)
        rows = [
            (
                c.mb(r["input"]),
                c.mb(r["output"]),
                f"{r['wall']:.1f}",
                c.mb(r["driver_before"]),
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
                    "driver before",
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
        print(
            f"  driver peak above its RSS before the run: "
            f"{c.mb(small['driver'] - small['driver_before'])} -> "
            f"{c.mb(large['driver'] - large['driver_before'])} for "
            f"{c.mb(large['input'] - small['input'])} more input"
        )
        row = {
            "workers": args.workers,
            "driver_cold": cold,
            "driver_warm": base,
            "idle_child": idle,
            "met": met_abs and met_flat,
        }
        for tag, r in (("small", small), ("large", large)):
            row.update({f"{tag}_{k}": v for k, v in r.items() if k != "samples"})
        c.record("memory", row, not args.no_csv)
        return row
