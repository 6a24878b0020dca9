"""scale: many tiny mini-batches planned, supervised and assembled; driver cost per mini-batch.

A no-op ``run()`` over N one-file mini-batches (``--kind files``, the default) or N one-row
mini-batches of a CSV MLTable (``--kind rows``, ``mini_batch_size: 1rows``), for each N of
``--n``, each in a fresh driver process on its own ``LocalCluster`` client (cluster start and a
20-mini-batch warm-up excluded). Measured: ``run_job`` wall (planning, running, assembly) per
mini-batch, and the driver's peak RSS (this process only: it also hosts the scheduler, as the
embedded cluster does), sampled in a thread. Targets (benchmarks/README.md, at 10k and 100k): time
per mini-batch flat (largest / smallest <= 1.2), memory growth per mini-batch flat (same
ratio), driver peak RSS <= 500 MB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import _common as c

TARGET_FLAT = 1.2
TARGET_RSS = 500e6
WARMUP = 20

SCRIPT_FILES = """\
def init():
    pass


def run(mini_batch):
    return mini_batch
"""

SCRIPT_ROWS = """\
def init():
    pass


def run(mini_batch):
    return mini_batch[["id"]]
"""

MLTABLE = """\
paths:
  - file: ./data.csv
transformations:
  - read_delimited:
      delimiter: ','
      header: all_files_same_headers
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n",
        default="2000,20000",
        help="mini-batch counts, comma-separated (default 2000,20000; full: 10000,100000)",
    )
    p.add_argument("--kind", choices=("files", "rows"), default="files", help="mini-batch kind")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--interval", type=float, default=0.02, help="RSS sampling interval, s")
    p.add_argument("--profile", action="store_true", help="cProfile each driver (top 20)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one size, print JSON
    p.add_argument("--run-dir", help=argparse.SUPPRESS)


# --------------------------------------------------------------------------------------------
# Data and jobs
# --------------------------------------------------------------------------------------------


def make_rows(folder: Path, n: int) -> Path:
    """A CSV of ``n`` rows (``id,x``) with an ``MLTable`` beside it; reused when present."""
    marker = folder / "generated.json"
    want = {"rows": n, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return folder
    c.fresh_dir(folder)
    with open(folder / "data.csv", "w", encoding="utf-8", newline="\n") as f:
        f.write("id,x\n")
        f.writelines(f"{i},{i % 97}\n" for i in range(n))
    (folder / "MLTable").write_text(MLTABLE)
    marker.write_text(json.dumps(want))
    return folder


def make_input(root: Path, kind: str, n: int) -> Path:
    """The input folder of ``n`` mini-batches of ``kind``, generated once under ``root``."""
    t0 = time.perf_counter()
    if kind == "files":
        folder = root / f"files-{n}"
        c.make_small_files(folder, n)
    else:
        folder = make_rows(root / f"rows-{n}", n)
    took = time.perf_counter() - t0
    if took > 1:
        print(f"  input of {n} {kind} ready in {took:.1f} s (kept with --data)", flush=True)
    return folder


def scale_job(folder: Path, kind: str, data: Path) -> Path:
    if kind == "files":
        script, input_yaml, size = SCRIPT_FILES, f"type: uri_folder\npath: {data}", '"1"'
    else:
        script, input_yaml, size = SCRIPT_ROWS, f"type: mltable\npath: {data}", "1rows"
    return c.write_job(
        folder,
        script,
        input_yaml=input_yaml,
        mini_batch_size=size,
        extra="retry_settings:\n  max_retries: 0\n  timeout: 60",
    )


# --------------------------------------------------------------------------------------------
# One size, in a fresh driver process
# --------------------------------------------------------------------------------------------


def measure_one(args: argparse.Namespace) -> dict:
    """Run the job of ``--one`` (input folder) on a fresh LocalCluster client; print JSON."""
    data = Path(args.one)
    kind = args.kind
    run_dir = Path(args.run_dir)
    warm_data = make_input(run_dir.parent, kind, WARMUP)
    warm_job = scale_job(run_dir.parent / "warm-job", kind, warm_data)
    job = scale_job(run_dir.parent / f"job-{data.name}", kind, data)
    with c.local_client(args.workers) as (client, start):
        # warm-up; the second run's wall is the fixed cost of a job on this client (children
        # started, init(), planning, assembly) that the net figures leave out
        for _ in range(2):
            res, fixed = c.run_daskprs(warm_job, run_dir.parent / "run-warm", client=client)
            assert res.ok, res.failure
        prof = None
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
        with c.RssSampler(args.interval, children=False) as rss:
            if prof is not None:
                prof.enable()
            result, wall = c.run_daskprs(job, run_dir, client=client)
            if prof is not None:
                prof.disable()
        assert result.ok, result.failure
    if prof is not None:
        import io
        import pstats

        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(20)
        print(buf.getvalue(), file=sys.stderr)
    step = result.steps[0]
    with open(c.output_of(run_dir), "rb") as f:
        out_rows = sum(1 for _ in f)
    out = {
        "n": step.summary["total"],
        "done": step.summary["done"],
        "out_rows": out_rows,
        "cluster_start": start,
        "wall": wall,
        "fixed": fixed,
        "plan": step.plan_seconds,
        "run": step.seconds,
        "rss_start": rss.start,
        "rss_peak": rss.driver,
        "samples": rss.samples,
    }
    print(json.dumps(out))
    return out


def _measure_in_subprocess(data: Path, run_dir: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "scale",
        "--one",
        str(data),
        "--run-dir",
        str(run_dir),
        "--kind",
        args.kind,
        "--workers",
        str(args.workers),
        "--interval",
        str(args.interval),
    ]
    if args.profile:
        cmd.append("--profile")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the measuring process failed ({proc.returncode}): {proc.stdout}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _net(m: dict, n: int) -> float:
    """Seconds per mini-batch beyond the fixed cost of a job (that of the warm-up job)."""
    return max(m["wall"] - m["fixed"], 1e-9) / max(n - WARMUP, 1)


def main(args: argparse.Namespace) -> dict:
    if args.one:
        return measure_one(args)
    sizes = sorted({int(x) for x in args.n.split(",") if x.strip()})
    with c.data_folder(args.data, "scale") as root:
        c.header(
            f"scale: {', '.join(map(str, sizes))} {args.kind} mini-batches, no-op run(), "
            f"{args.workers} workers",
            drivers="one fresh process per size; cluster start and warm-up excluded",
        )
        inputs = {n: make_input(root, args.kind, n) for n in sizes}
        got: dict[int, dict] = {}
        for n in sizes:
            got[n] = m = _measure_in_subprocess(inputs[n], root / f"run-{args.kind}-{n}", args)
            assert m["n"] == m["done"] == m["out_rows"] == n, f"mini-batches/rows differ: {m}"
            print(
                f"  {n}: {m['wall']:.2f} s, {m['wall'] / n * 1e3:.3f} ms per mini-batch, "
                f"driver peak {c.mb(m['rss_peak'])}",
                flush=True,
            )
        rows = []
        for n in sizes:
            m = got[n]
            rest = m["wall"] - m["plan"] - m["run"]
            growth = m["rss_peak"] - m["rss_start"]
            rows.append(
                (
                    n,
                    m["wall"],
                    f"{m['wall'] / n * 1e3:.3f}",
                    f"{_net(m, n) * 1e3:.3f}",
                    f"{m['plan'] / n * 1e3:.3f}",
                    f"{m['run'] / n * 1e3:.3f}",
                    f"{rest / n * 1e3:.3f}",
                    f"{n / m['wall']:.0f}",
                    c.mb(m["rss_start"]),
                    c.mb(m["rss_peak"]),
                    f"{growth / n / 1e3:.2f}",
                )
            )
        fixed = ", ".join(f"{got[n]['fixed']:.2f} s" for n in sizes)
        print(f"  fixed cost of a {WARMUP}-mini-batch job on the same client: {fixed}")
        print(
            c.table(
                [
                    "mini-batches",
                    "wall s",
                    "ms/mb",
                    "net ms/mb",
                    "plan ms/mb",
                    "run ms/mb",
                    "rest ms/mb",
                    "mb/s",
                    "RSS before",
                    "RSS peak",
                    "kB/mb",
                ],
                rows,
            )
        )
        small, large = got[sizes[0]], got[sizes[-1]]
        ns, nl = sizes[0], sizes[-1]
        row: dict = {"kind": args.kind, "workers": args.workers}
        for n in sizes:
            m = got[n]
            row.update(
                {
                    f"n{n}_wall_s": m["wall"],
                    f"n{n}_fixed_s": m["fixed"],
                    f"n{n}_plan_s": m["plan"],
                    f"n{n}_run_s": m["run"],
                    f"n{n}_rss_start": m["rss_start"],
                    f"n{n}_rss_peak": m["rss_peak"],
                }
            )
        met = True
        if len(sizes) > 1:
            time_ratio = (large["wall"] / nl) / (small["wall"] / ns)
            net_ratio = _net(large, nl) / _net(small, ns)
            g_small = max(small["rss_peak"] - small["rss_start"], 1) / ns
            g_large = max(large["rss_peak"] - large["rss_start"], 1) / nl
            mem_ratio = g_large / g_small
            met &= c.verdict(f"time per mini-batch, {nl} / {ns}", time_ratio, TARGET_FLAT)
            c.verdict(
                f"  the same net of the fixed cost of a {WARMUP}-mb job", net_ratio, TARGET_FLAT
            )
            met &= c.verdict(
                f"driver RSS growth per mini-batch, {nl} / {ns}", mem_ratio, TARGET_FLAT
            )
            row.update(
                {"time_ratio": time_ratio, "net_time_ratio": net_ratio, "mem_ratio": mem_ratio}
            )
        peak = max(m["rss_peak"] for m in got.values())
        print(f"  driver peak RSS: {c.mb(peak)} (target <= {c.mb(TARGET_RSS)})  ", end="")
        print("met" if peak <= TARGET_RSS else "MISSED")
        met &= peak <= TARGET_RSS
        row.update({"rss_peak": peak, "met": met})
        c.record("scale", row, not args.no_csv)
        return row
