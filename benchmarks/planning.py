"""planning: plan_input over many small files vs listing them with fsspec; a parquet dataset.

(1) --n small files (default 5,000; full 20,000) in a uri_folder, planned with
``daskprs.inputs.plan.plan_input(DataInput(name, "uri_folder", path), None)`` vs
``fsspec.filesystem("file").find(path)`` (and ``find(detail=True)``, which also gives sizes).
Target: plan <= 1.5 x the bare listing. (2) a --parquet-files parquet dataset (an MLTable
with read_parquet) planned through a filesystem that counts the bytes read, compared with
the files' footers: only footers should be read, no data rows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import _common as c

TARGET = 1.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=5000, help="small files (default 5000; full 20000)")
    p.add_argument("--parquet-files", type=int, default=200, help="parquet files (default 200)")
    p.add_argument("--rows", type=int, default=20_000, help="rows per parquet file")
    p.add_argument("--row-group", type=int, default=5_000, help="rows per parquet row group")
    p.add_argument("--repeat", type=int, default=3, help="alternating timings; best kept")


def counting_fs():
    """A local fsspec filesystem that counts the bytes read through it."""
    from fsspec.implementations.local import LocalFileSystem

    class CountingFS(LocalFileSystem):
        cachable = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.bytes_read = 0
            self.opened = 0

        def _open(self, path, mode="rb", **kwargs):
            f = super()._open(path, mode, **kwargs)
            self.opened += 1
            read = f.read

            def counting_read(*a):
                data = read(*a)
                self.bytes_read += len(data)
                return data

            f.read = counting_read
            return f

    return CountingFS()


def make_parquet(folder: Path, files: int, rows: int, row_group: int) -> list[Path]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = folder / f"made-{files}-{rows}-{row_group}"
    if marker.exists():
        return sorted(folder.glob("*.parquet"))
    c.fresh_dir(folder)
    rng = np.random.default_rng(0)
    for k in range(files):
        table = pa.table(
            {
                "id": np.arange(k * rows, (k + 1) * rows, dtype=np.int64),
                "x": rng.random(rows),
                "y": rng.integers(0, 1000, rows),
            }
        )
        pq.write_table(table, folder / f"part-{k:04d}.parquet", row_group_size=row_group)
    (folder / "MLTable").write_text(
        "paths:\n  - pattern: ./*.parquet\ntransformations:\n  - read_parquet: {}\n"
    )
    marker.touch()
    return sorted(folder.glob("*.parquet"))


def footer_bytes(path: Path) -> int:
    """The footer of a parquet file: metadata length + 4-byte length + 4-byte magic."""
    with open(path, "rb") as f:
        f.seek(-8, 2)
        return int.from_bytes(f.read(4), "little") + 8


def _best(fn, repeat: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def main(args: argparse.Namespace) -> dict:
    import fsspec

    from daskprs.inputs.plan import plan_input
    from daskprs.job.model import DataInput

    with c.data_folder(args.data, "planning") as root:
        c.header(f"planning: {args.n} small files; {args.parquet_files} parquet files")
        folder = root / f"files-{args.n}"
        c.make_small_files(folder, args.n)
        path = str(folder)
        data = DataInput("data", "uri_folder", path)
        fs = fsspec.filesystem("file")
        listing, plan_t, detail = [], [], []
        plan = found = None
        plan_input(data, None)  # warm the page cache and imports alike for both
        for _ in range(args.repeat):
            t, found = _best(lambda: fs.find(path), 1)
            listing.append(t)
            t, _ = _best(lambda: fs.find(path, detail=True), 1)
            detail.append(t)
            t, plan = _best(lambda: plan_input(data, None), 1)
            plan_t.append(t)
        assert plan is not None and found is not None
        n_files = sum(len(b.files) for b in plan.batches)
        assert n_files == len(found) == args.n, (n_files, len(found))
        lst, det, pl = min(listing), min(detail), min(plan_t)
        print(
            c.table(
                ["small files", "seconds", "files/s", "x find()"],
                [
                    ("fsspec find(path)", lst, f"{args.n / lst:.0f}", 1.0),
                    ("fsspec find(path, detail=True)", det, f"{args.n / det:.0f}", det / lst),
                    (
                        f"plan_input ({len(plan.batches)} mini-batches)",
                        pl,
                        f"{args.n / pl:.0f}",
                        pl / lst,
                    ),
                ],
            )
        )
        met = c.verdict("plan / fsspec find()", pl / lst, TARGET)
        c.verdict("plan / fsspec find(detail=True)", pl / det, TARGET)

        # parquet: footers only
        pq_folder = root / f"parquet-{args.parquet_files}"
        pfiles = make_parquet(pq_folder, args.parquet_files, args.rows, args.row_group)
        total = sum(f.stat().st_size for f in pfiles)
        footers = sum(footer_bytes(f) for f in pfiles)
        table_in = DataInput("data", "mltable", str(pq_folder))
        cfs = counting_fs()
        plan_input(table_in, None, fs=cfs)  # warm-up, then count one planning alone
        cfs = counting_fs()
        t0 = time.perf_counter()
        pplan = plan_input(table_in, None, fs=cfs)
        p_plan = time.perf_counter() - t0
        p_list, _ = _best(lambda: fs.find(str(pq_folder)), args.repeat)
        p_plan_plain, _ = _best(lambda: plan_input(table_in, None), args.repeat)
        rows_planned = sum(b.n_items or 0 for b in pplan.batches)
        mltable_bytes = (pq_folder / "MLTable").stat().st_size
        read = cfs.bytes_read
        print(
            c.table(
                ["parquet", "value"],
                [
                    ("files / total bytes", f"{len(pfiles)} / {c.mb(total)}"),
                    ("mini-batches / rows planned", f"{len(pplan.batches)} / {rows_planned}"),
                    ("bytes read while planning", f"{read} ({read / total:.2%} of the data)"),
                    ("footer bytes (all files)", footers),
                    ("MLTable bytes", mltable_bytes),
                    ("files opened", cfs.opened),
                    ("fsspec find() s", p_list),
                    ("plan_input s (counting fs / plain)", f"{p_plan:.3f} / {p_plan_plain:.3f}"),
                ],
            )
        )
        # pyarrow reads the last min(size, 64 KiB) of a file in one request to get the footer
        # (fewer round trips on object stores): that much per file is a footer read, not a
        # scan of data rows
        allowance = sum(max(footer_bytes(f), min(f.stat().st_size, 65536)) for f in pfiles)
        footers_only = read <= allowance + mltable_bytes + 1024 * len(pfiles)
        print(
            f"  bytes read per file: {(read - mltable_bytes) / len(pfiles):.0f} (footer "
            f"{footers / len(pfiles):.0f}, file {total / len(pfiles):.0f}) -> "
            + (
                "footer reads only (pyarrow's 64 KiB tail read)"
                if footers_only
                else "MORE THAN THE FOOTERS: data was read"
            )
        )
        assert rows_planned == args.parquet_files * args.rows
        row = {
            "n": args.n,
            "find_s": lst,
            "find_detail_s": det,
            "plan_s": pl,
            "ratio": pl / lst,
            "ratio_detail": pl / det,
            "target": TARGET,
            "met": met,
            "parquet_files": len(pfiles),
            "parquet_bytes": total,
            "parquet_bytes_read": read,
            "parquet_footer_bytes": footers,
            "parquet_plan_s": p_plan_plain,
            "parquet_find_s": p_list,
            "footers_only": footers_only,
        }
        c.record("planning", row, not args.no_csv)
        return row
