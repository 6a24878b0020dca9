"""sweep: throughput of the tabular workload over a mini_batch_size x workers grid.

The data, job and entry script of ``tabular`` (CSV, a computed column, a 2-column DataFrame
through ``append_row_to``) run on daskprs's embedded cluster for every ``--sizes`` x
``--workers`` setting, through ``run_job(..., workers=w,
sets=["jobs.score.mini_batch_size=<size>"])``; the cluster start is included, as a user sees
it (and reported apart). After one unmeasured run, the grid is run ``--repeat`` times in turn
and each setting keeps its best. Prints a table of throughput (input MB/s), names the best
setting, checks that every setting wrote the same bytes, and draws
``benchmarks/results/sweep.png`` when matplotlib is installed (skipped with a note if not)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks import _common as c
from benchmarks import tabular


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="200MB", help="CSV input size (default 200MB)")
    p.add_argument("--file-size", default="50MB", help="size of each generated CSV file")
    p.add_argument(
        "--sizes", default="2mb,5mb,10mb,25mb", help="mini_batch_size values, comma-separated"
    )
    p.add_argument("--workers", default="1,2,3", help="worker counts, comma-separated")
    p.add_argument("--repeat", type=int, default=1, help="passes over the grid; best kept")
    p.add_argument("--plot", help="PNG path (default benchmarks/results/sweep.png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    p.add_argument("--verbose", action="store_true", help="show daskprs progress lines")


def plot(
    path: Path,
    sizes: list[str],
    workers: list[int],
    mbps: dict[tuple[str, int], float],
    title: str,
) -> bool:
    """Throughput against mini_batch_size, one line per worker count; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [c.parse_size(s) / 2**20 for s in sizes]
    for w in workers:
        ax.plot(xs, [mbps[(s, w)] for s in sizes], marker="o", label=f"{w} workers")
    ax.set_xscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels(sizes)
    ax.minorticks_off()
    ax.set_xlabel("mini_batch_size")
    ax.set_ylabel("throughput, input MB/s (cluster start included)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(args: argparse.Namespace) -> dict:
    size = c.parse_size(args.size)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    grid = [(s, w) for s in sizes for w in workers]
    with c.data_folder(args.data, "tabular") as root:  # shares tabular's generated data
        c.header(
            f"sweep: {args.size} of CSV, mini_batch_size {', '.join(sizes)} x workers "
            f"{', '.join(map(str, workers))}, embedded cluster (start included)"
        )
        files = tabular.generate_csv(root / f"csv-{size}", size, c.parse_size(args.file_size))
        in_bytes = sum(f.stat().st_size for f in files)
        job = tabular.tabular_job(root / "sweep-job", root / f"csv-{size}")
        wall: dict[tuple[str, int], float] = {}
        start: dict[tuple[str, int], float] = {}
        batches: dict[tuple[str, int], int] = {}
        digest: dict[tuple[str, int], str] = {}
        # one unmeasured run first: page cache, imports and disk writeback settle
        warm_s, warm_w = grid[len(grid) // 2]
        c.run_daskprs(
            job, root / "sweep-run", workers=warm_w, sets=[f"jobs.score.mini_batch_size={warm_s}"]
        )
        t_all = time.perf_counter()
        for r in range(args.repeat):
            for s, w in grid:
                echo = c.Echo(args.verbose)
                run_dir = root / "sweep-run"
                result, secs = c.run_daskprs(
                    job,
                    run_dir,
                    workers=w,
                    sets=[f"jobs.score.mini_batch_size={s}"],
                    echo=echo,
                )
                assert result.ok, result.failure
                key = (s, w)
                if key not in wall or secs < wall[key]:
                    wall[key] = secs
                    start[key] = tabular._cluster_start(echo) or 0.0
                batches[key] = result.steps[0].summary["total"]
                digest[key] = c.sha256(c.output_of(run_dir))
                tag = f" (pass {r + 1})" if args.repeat > 1 else ""
                print(
                    f"  {s:>5} x {w} workers: {secs:6.2f} s, {in_bytes / secs / 1e6:6.1f} MB/s, "
                    f"{batches[key]} mini-batches{tag}",
                    flush=True,
                )
        mbps = {k: in_bytes / v / 1e6 for k, v in wall.items()}
        best = max(grid, key=lambda k: mbps[k])
        rows = [
            (
                s,
                w,
                batches[(s, w)],
                wall[(s, w)],
                start[(s, w)],
                f"{mbps[(s, w)]:.1f}",
                f"{in_bytes / max(wall[(s, w)] - start[(s, w)], 1e-9) / 1e6:.1f}",
                "<- best" if (s, w) == best else "",
            )
            for s, w in grid
        ]
        print(
            c.table(
                [
                    "mini_batch_size",
                    "workers",
                    "mini-batches",
                    "seconds",
                    "cluster start",
                    "MB/s",
                    "MB/s w/o start",
                    "",
                ],
                rows,
            )
        )
        # throughput as a matrix: sizes down, workers across
        print(
            c.table(
                ["MB/s", *[f"{w} workers" for w in workers]],
                [(s, *[f"{mbps[(s, w)]:.1f}" for w in workers]) for s in sizes],
            )
        )
        identical = len(set(digest.values())) == 1
        print(f"  input {c.mb(in_bytes)}; grid took {time.perf_counter() - t_all:.1f} s")
        print(f"  every setting wrote the same bytes: {identical}")
        print(
            f"  best setting: mini_batch_size {best[0]}, {best[1]} workers "
            f"({mbps[best]:.1f} MB/s, {wall[best]:.2f} s)"
        )
        plot_note = "skipped (--no-plot)"
        if not args.no_plot:
            path = Path(args.plot) if args.plot else c.RESULTS / "sweep.png"
            title = f"daskprs tabular sweep: {c.mb(in_bytes)} of CSV, {os.cpu_count()} cores"
            if plot(path, sizes, workers, mbps, title):
                plot_note = str(path)
            else:
                plot_note = "skipped: matplotlib is not installed (pip install matplotlib)"
        print(f"  plot: {plot_note}")
        row: dict = {
            "size": in_bytes,
            "sizes": " ".join(sizes),
            "workers": " ".join(map(str, workers)),
            "repeat": args.repeat,
            "best_size": best[0],
            "best_workers": best[1],
            "best_mb_s": mbps[best],
            "identical": identical,
        }
        row.update({f"mbs_{s}_w{w}": mbps[(s, w)] for s, w in grid})
        c.record("sweep", row, not args.no_csv)
        return row
