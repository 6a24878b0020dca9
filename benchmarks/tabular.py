"""tabular: a folder of generated CSV, mini_batch_size 10mb, append_row_to, vs four peers.

Contenders, all writing the same bytes (space-separated, no header, no index, ``\\n``):
serial pandas (chunks per file), hand-written Dask (``read_csv(blocksize="10MB")`` +
``map_partitions`` + ``to_csv`` parts + concatenation), a ``ProcessPoolExecutor`` over 10 MB
byte ranges cut at line ends, daskprs on its embedded cluster, and, when ray is installed
(``pip install 'ray[data]'``; not a project dependency), Ray Data on a local Ray
(``read_csv`` in 10 MiB blocks + ``map_batches`` + ``to_csv`` per block, written in order),
run last. Every contender is timed from nothing to its output file (cluster, pool or Ray
start included). Targets (issue 11): daskprs <= 0.60 x serial, <= 0.75 x Dask, <= 1.0 x the
pool; outputs byte-identical. Ray has no target: the table shows daskprs / ray.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import inspect
import io
import itertools
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks import _common as c

TARGETS = {"serial": 0.60, "dask": 0.75, "pool": 1.0}
BLOCK = 10 * 2**20
READ_OPTS = {"keep_default_na": False, "na_values": [""]}
TO_CSV = {"sep": " ", "header": False, "index": False, "lineterminator": "\n"}


def compute(df, extra=()):
    """The work of every contender: a computed column, returned with the id (2 columns),
    plus the ``extra`` input columns given."""
    import pandas as pd

    out = pd.DataFrame({"id": df["id"], "score": df["a"] * 0.5 + df["b"] * 2.0 - df["d"]})
    for col in extra:
        out[col] = df[col]
    return out


# The entry script holds compute() word for word.
SCRIPT_TAIL = """

EXTRA = {extra!r}


def init():
    pass


def run(mini_batch):
    return compute(mini_batch, EXTRA)
"""


def entry_script(extra: tuple[str, ...] = ()) -> str:
    return inspect.getsource(compute) + SCRIPT_TAIL.format(extra=tuple(extra))


MLTABLE = """\
paths:
  - pattern: ./*.csv
transformations:
  - read_delimited:
      delimiter: ','
      header: all_files_same_headers
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", default="200MB", help="CSV input size (default 200MB; full: 1GB)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--file-size", default="50MB", help="size of each generated CSV file")
    p.add_argument(
        "--only",
        default="serial,pool,dask,daskprs,ray",
        help="contenders to run, comma-separated (daskprs is the reference; ray is skipped "
        "when not installed)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds in which the contenders take turns; each keeps its best time",
    )
    p.add_argument("--verbose", action="store_true", help="show daskprs progress lines")
    p.add_argument(
        "--staging",
        action="store_true",
        help="also run daskprs with --staging on an S3 server (moto) on 127.0.0.1 and print "
        "what staging costs: staged / shared filesystem",
    )


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def generate_csv(folder: Path, size: int, file_size: int, seed: int = 0) -> list[Path]:
    """CSV files ``part-000.csv``... of about ``file_size`` bytes, ``size`` bytes in all, with
    an ``MLTable`` beside them; reused when a previous call made the same."""
    import numpy as np
    import pandas as pd

    marker = folder / "generated.json"
    want = {"size": size, "file_size": file_size, "seed": seed, "version": 2}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return sorted(folder.glob("*.csv"))
    c.fresh_dir(folder)
    n_files = max(1, math.ceil(size / file_size))
    rng = np.random.default_rng(seed)
    cats = np.array([f"cat{i:02d}" for i in range(50)])

    def frame(first: int, n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "id": np.arange(first, first + n, dtype=np.int64),
                "a": rng.integers(0, 1_000_000, n),
                "b": np.round(rng.random(n) * 1000, 3),
                "c": cats[rng.integers(0, len(cats), n)],
                "d": rng.integers(-500, 500, n),
            }
        )

    row_bytes = len(frame(10**7, 10_000).to_csv(index=False, header=False)) / 10_000
    rows_per_file = max(1, int(size / n_files / row_bytes))
    t0 = time.perf_counter()
    for k in range(n_files):
        df = frame(k * rows_per_file, rows_per_file)
        df.to_csv(folder / f"part-{k:03d}.csv", index=False, lineterminator="\n")
    (folder / "MLTable").write_text(MLTABLE)
    marker.write_text(json.dumps(want))
    files = sorted(folder.glob("*.csv"))
    total = sum(f.stat().st_size for f in files)
    print(f"  generated {len(files)} CSV files, {c.mb(total)}, in {time.perf_counter() - t0:.1f} s")
    return files


def tabular_job(folder: Path, data: Path, extra: tuple[str, ...] = ()) -> Path:
    return c.write_job(
        folder,
        entry_script(extra),
        input_yaml=f"type: mltable\npath: {data}",
        mini_batch_size="10mb",
        extra="retry_settings:\n  max_retries: 1\n  timeout: 600",
    )


# --------------------------------------------------------------------------------------------
# Contenders
# --------------------------------------------------------------------------------------------


def run_serial(files: list[Path], out: Path, extra: tuple[str, ...] = ()) -> None:
    """A serial pandas loop: each file read in chunks of about 10 MB, computed, appended."""
    rows = max(1, BLOCK // 35)  # about 10 MB of these rows
    with open(out, "w", encoding="utf-8", newline="") as f:
        for path in files:
            for chunk in pd_read_csv(path, chunksize=rows):
                compute(chunk, extra).to_csv(f, **TO_CSV)


def pd_read_csv(src, **kw):
    import pandas as pd

    return pd.read_csv(src, **READ_OPTS, **kw)


def byte_ranges(path: Path, block: int = BLOCK) -> list[tuple[str, int, int]]:
    """``(path, start, end)`` ranges of about ``block`` bytes, each cut after a newline."""
    size = path.stat().st_size
    cuts = [0]
    with open(path, "rb") as f:
        pos = block
        while pos < size:
            f.seek(pos)
            while True:
                probe = f.read(65536)
                i = probe.find(b"\n")
                if i >= 0 or not probe:
                    break
                pos += len(probe)
            if not probe:
                break
            pos += i + 1
            if pos >= size:
                break
            cuts.append(pos)
            pos += block
    cuts.append(size)
    return [(str(path), a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _pool_task(task: tuple[str, int, int, str, tuple[str, ...], tuple[str, ...]]) -> str:
    path, start, end, part, names, extra = task
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    if start == 0:
        df = pd_read_csv(io.BytesIO(data), header=0)
    else:
        df = pd_read_csv(io.BytesIO(data), header=None, names=list(names))
    with open(part, "w", encoding="utf-8", newline="") as f:
        compute(df, extra).to_csv(f, **TO_CSV)
    return part


def run_pool(
    files: list[Path], out: Path, work: Path, workers: int, extra: tuple[str, ...] = ()
) -> None:
    """A ``ProcessPoolExecutor`` over 10 MB byte ranges: parts, then concatenation."""
    parts_dir = c.fresh_dir(work / "pool-parts")
    tasks = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            names = tuple(f.readline().rstrip("\n").split(","))
        for p, a, b in byte_ranges(path):
            part = str(parts_dir / f"{len(tasks):06d}.txt")
            tasks.append((p, a, b, part, names, extra))
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_pool_task, tasks))
    c.concat_files(parts, out)


def run_dask(
    files: list[Path], out: Path, work: Path, workers: int, extra: tuple[str, ...] = ()
) -> float:
    """Hand-written Dask on its own LocalCluster; returns the cluster start seconds."""
    import dask.dataframe as dd

    parts_dir = c.fresh_dir(work / "dask-parts")
    with c.local_client(workers) as (client, start):
        ddf = dd.read_csv([str(f) for f in files], blocksize="10MB", **READ_OPTS)
        meta = compute(ddf._meta, extra)
        result = ddf.map_partitions(compute, extra, meta=meta)
        result.to_csv(
            str(parts_dir / "*.txt"),
            name_function=lambda i: f"{i:06d}",
            compute_kwargs={"scheduler": client},
            **TO_CSV,
        )
    c.concat_files(sorted(parts_dir.glob("*.txt")), out)
    return start


class RayMissing(Exception):
    """``import ray`` (or ``ray.data``) failed: the ray contender is skipped."""


def _ray_part(df, extra: tuple[str, ...] = ()):
    """One Ray Data batch (a whole block): compute(), then its output bytes as one text row."""
    import pandas as pd

    return pd.DataFrame({"text": [compute(df, extra).to_csv(**TO_CSV)]})


def run_ray(
    files: list[Path], out: Path, work: Path, workers: int, extra: tuple[str, ...] = ()
) -> dict:
    """Ray Data on a new local Ray (``ray.init(num_cpus=workers)``, the import included in
    the start): ``read_csv`` with one read task per file and blocks of 10 MiB of CSV,
    ``map_batches(batch_format="pandas")`` of compute() + ``to_csv`` per block, the blocks'
    text written in input order (``preserve_order``); Ray shut down at the end. Returns the
    start and shutdown seconds, the number of blocks and the ray version. ``work`` is not
    used: the blocks' text goes through Ray's object store, not part files."""
    t0 = time.perf_counter()
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RayMissing(
            "ray is not installed" if getattr(e, "name", None) == "ray" else str(e)
        ) from e
    from pyarrow import csv

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report while timed
    # "local": a new Ray of its own, never one already running on the machine
    ray.init(
        address="local",
        num_cpus=workers,
        include_dashboard=False,
        logging_level=logging.ERROR,
    )
    start = time.perf_counter() - t0
    blocks = 0
    data_logger = logging.getLogger("ray.data")
    level = data_logger.level
    data_logger.setLevel(logging.ERROR)  # no execution-plan lines (Dask: silence_logs too)
    try:
        ctx = ray.data.DataContext.get_current()  # this process's: read by the next Dataset
        ctx.execution_options.preserve_order = True  # blocks come out in input order
        ctx.enable_progress_bars = False
        # A read task emits a block when its buffer reaches this size, so each 10 MiB batch
        # of pyarrow's streaming CSV reader (read_options below) becomes one block.
        ctx.target_max_block_size = BLOCK
        # Pandas batches with numpy dtypes, as the other contenders' compute() sees
        # (Ray >= 2.56 would hand it pd.ArrowDtype columns).
        ctx.enable_arrow_backed_pandas_conversion = False
        ds = ray.data.read_csv(
            [str(f) for f in files],
            # one read task per file (Ray never splits a CSV file); left to itself, Ray aims
            # at read_op_min_num_blocks (200) blocks and cuts each task's output into ~1 MB
            # blocks, which also stops the read from fusing with map_batches
            override_num_blocks=len(files),
            read_options=csv.ReadOptions(block_size=BLOCK, use_threads=False),
            # as READ_OPTS: only empty fields are missing values
            convert_options=csv.ConvertOptions(null_values=[""], strings_can_be_null=True),
        )
        ds = ds.map_batches(
            _ray_part, batch_size=None, batch_format="pandas", fn_kwargs={"extra": tuple(extra)}
        )
        with open(out, "w", encoding="utf-8", newline="") as f:
            for row in ds.iter_rows():
                f.write(row["text"])
                blocks += 1
    finally:
        data_logger.setLevel(level)
        t1 = time.perf_counter()
        ray.shutdown()
        stop = time.perf_counter() - t1
    return {"start": start, "shutdown": stop, "blocks": blocks, "version": ray.__version__}


def _cluster_start(echo: c.Echo) -> float | None:
    for line in echo.lines:
        m = re.search(r"started in ([0-9.]+) s", line)
        if m:
            return float(m.group(1))
    return None


def run_daskprs_embedded(
    job: Path, run_dir: Path, workers: int, verbose: bool = False, staging: str | None = None
) -> tuple[float, float | None, object]:
    echo = c.Echo(verbose)
    # force_rerun: the staged run must not reuse the shared-filesystem run's step
    result, wall = c.run_daskprs(
        job, run_dir, workers=workers, echo=echo, staging=staging, force_rerun=True
    )
    assert result.ok, result.failure
    return wall, _cluster_start(echo), result


class S3Server:
    """The staging URL on the benchmark's S3 server, and the CPU time that server used."""

    def __init__(self, url: str, pid: int):
        import psutil

        self.url, self._proc = url, psutil.Process(pid)

    def cpu(self) -> float:
        times = self._proc.cpu_times()
        return times.user + times.system


@contextlib.contextmanager
def s3_server(folder: Path) -> Iterator[S3Server]:
    """A moto S3 server in its own process on 127.0.0.1 with an empty bucket. The ``AWS_*``
    variables point this process (and the workers it starts) at it until the end."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(folder / "moto.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=log,
    )
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/").close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        import fsspec

        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("bench")
        yield S3Server("s3://bench/staging", proc.pid)
    finally:
        proc.terminate()
        proc.wait()
        log.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> dict:
    size, workers = c.parse_size(args.size), args.workers
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if args.staging:
        only.append("staged")
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(c.data_folder(args.data, "tabular"))
        staging = stack.enter_context(s3_server(root)) if args.staging else None
        c.header(f"tabular: {args.size} of CSV, mini_batch_size 10mb, {workers} workers")
        files = generate_csv(root / f"csv-{size}", size, c.parse_size(args.file_size))
        in_bytes = sum(f.stat().st_size for f in files)
        job = tabular_job(root / "job", root / f"csv-{size}")
        outs: dict[str, Path] = {}
        secs: dict[str, float] = {}
        notes: dict[str, str] = {}
        work = root / "work"
        work.mkdir(exist_ok=True)
        digests: dict[str, str] = {}
        skipped: set[str] = set()
        # The pool forks: run it before anything starts threads (Dask clients) in this process.
        # Ray last: its processes (raylet, GCS, workers) must not disturb the others. With
        # --repeat, the contenders take turns, round after round; each keeps its best time.
        for rnd in range(args.repeat):
            for name in ("serial", "pool", "dask", "daskprs", "staged", "ray"):
                if name not in only or name in skipped:
                    continue
                out = work / f"{name}.txt"
                note = ""
                t0 = time.perf_counter()
                if name == "ray":
                    try:
                        info = run_ray(files, out, work, workers)
                    except RayMissing as e:
                        print(f"  ray: skipped ({e}; pip install 'ray[data]')", flush=True)
                        skipped.add(name)
                        continue
                    note = (
                        f"ray {info['version']}: ray start {info['start']:.2f} s, "
                        f"shutdown {info['shutdown']:.2f} s, {info['blocks']} blocks"
                    )
                elif name == "serial":
                    run_serial(files, out)
                elif name == "pool":
                    run_pool(files, out, work, workers)
                elif name == "dask":
                    start = run_dask(files, out, work, workers)
                    note = f"cluster start {start:.2f} s"
                else:
                    run_dir = root / ("run-staged" if name == "staged" else "run")
                    s3_cpu = staging.cpu() if staging is not None else 0.0
                    _wall, start, result = run_daskprs_embedded(
                        job,
                        run_dir,
                        workers,
                        args.verbose,
                        staging.url if staging is not None and name == "staged" else None,
                    )
                    s3_cpu = staging.cpu() - s3_cpu if staging is not None else 0.0
                    step = result.steps[0]
                    began = f"{start:.2f} s" if start is not None else "not shown"
                    note = (
                        f"cluster start {began}, planning {step.plan_seconds:.2f} s, "
                        f"running {step.seconds:.2f} s, {step.summary['total']} mini-batches"
                        + (
                            f", parts and logs staged to S3 (moto: {s3_cpu:.1f} s of CPU)"
                            if name == "staged"
                            else ""
                        )
                    )
                    out = c.output_of(run_dir)
                took = time.perf_counter() - t0
                digest = c.sha256(out)
                if digests.setdefault(name, digest) != digest:
                    digests[name] = "differs between rounds"
                if name not in secs or took < secs[name]:
                    secs[name], notes[name] = took, note
                outs[name] = out
                turn = f" (round {rnd + 1})" if args.repeat > 1 else ""
                print(f"  {name}: {took:.2f} s{turn}", flush=True)
        ref = digests.get("daskprs") or next(iter(digests.values()))
        rows = [
            (
                k,
                secs[k],
                f"{in_bytes / secs[k] / 1e6:.1f}",
                f"{secs['daskprs'] / secs[k]:.3f}" if "daskprs" in secs else "",
                "yes" if digests[k] == ref else "NO",
                notes.get(k, ""),
            )
            for k in outs
        ]
        print(
            c.table(
                ["contender", "seconds", "MB/s in", "daskprs / it", "same bytes", "notes"], rows
            )
        )
        out_bytes = outs[next(iter(outs))].stat().st_size
        print(f"  input {c.mb(in_bytes)}, output {c.mb(out_bytes)}")
        identical = len(set(digests.values())) == 1
        print(f"  outputs byte-identical: {identical}")
        row: dict = {"size": in_bytes, "workers": workers, "identical": identical}
        row["repeat"] = args.repeat
        row.update({f"{k}_s": v for k, v in secs.items()})
        # ray has no target: its bytes show in the table and in "identical", not in "met"
        targeted = {v for k, v in digests.items() if k != "ray"} or set(digests.values())
        met_all = len(targeted) == 1
        if "daskprs" in secs:
            for k, target in TARGETS.items():
                if k in secs:
                    ratio = secs["daskprs"] / secs[k]
                    met = c.verdict(f"daskprs / {k}", ratio, target)
                    row[f"ratio_{k}"] = ratio
                    met_all = met_all and met
            if "ray" in secs:  # no target: the ratio is recorded, not judged
                row["ratio_ray"] = secs["daskprs"] / secs["ray"]
            if "staged" in secs:  # what staging costs: no target, recorded
                row["ratio_staged_shared"] = secs["staged"] / secs["daskprs"]
                print(
                    f"  staging on S3 / shared filesystem: {row['ratio_staged_shared']:.3f}",
                    flush=True,
                )
        row["met"] = met_all
        c.record("tabular", row, not args.no_csv)
        return row
