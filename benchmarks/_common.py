"""Shared helpers: data folders, job files, a LocalCluster, RSS sampling, tables and CSV rows."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# the job writer the tests use too (re-exported: c.write_job, c.output_of)
from daskprs.testing import output_of as output_of
from daskprs.testing import write_job as write_job

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# Folders and files
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def data_folder(given: str | None, name: str) -> Iterator[Path]:
    """``given`` (kept afterwards, so generated data can be reused) or a temp folder."""
    if given:
        path = Path(given).resolve() / name
        path.mkdir(parents=True, exist_ok=True)
        try:
            yield path
        finally:
            empty_trash(path)
        return
    path = Path(tempfile.mkdtemp(prefix=f"daskprs-bench-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def fresh_dir(path: Path) -> Path:
    """An empty folder at ``path`` (an earlier one set aside first: :func:`set_aside`)."""
    set_aside(path)
    path.mkdir(parents=True)
    return path


TRASH = ".trash"


def set_aside(path: Path) -> None:
    """Move ``path`` (when it exists) into the ``.trash`` folder beside it; the trash is
    emptied when the benchmark ends (:func:`data_folder`, :func:`empty_trash`).

    Deleting many files just before a measurement slows the file creations of the run that
    follows for minutes: ext4 without a journal (this machine's disk) skips every inode freed
    in the last 5 s (300 s while its table block is dirty) one by one when it allocates a new
    one. A rename costs nothing of the kind.
    """
    if not os.path.lexists(path):
        return
    trash = path.parent / TRASH
    trash.mkdir(exist_ok=True)
    os.rename(path, trash / f"{path.name}-{uuid.uuid4().hex[:8]}")


def empty_trash(root: Path) -> None:
    """Delete the ``.trash`` folders :func:`set_aside` made in ``root`` and its sub-folders."""
    found = [root / TRASH]
    try:
        with os.scandir(root) as it:
            found += [Path(e.path) / TRASH for e in it if e.is_dir(follow_symlinks=False)]
    except OSError:
        return
    for trash in found:
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)


def make_small_files(folder: Path, n: int, prefix: str = "f") -> list[Path]:
    """``n`` one-line files ``f000000.txt``...; existing ones of the same count are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}{i:06d}.txt" for i in range(n)]
    existing = sum(1 for _ in folder.iterdir())
    if existing == n and all(p.exists() for p in (paths[0], paths[-1])):
        return paths
    fresh_dir(folder)
    for i, p in enumerate(paths):
        p.write_text(f"line {i}\n")
    return paths


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def concat_files(parts: Sequence[str | os.PathLike], dest: str | os.PathLike) -> None:
    """Concatenate ``parts`` in order into ``dest``."""
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)


# --------------------------------------------------------------------------------------------
# Clusters and daskprs
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def local_client(n_workers: int = 2) -> Iterator[tuple[Any, float]]:
    """A ``LocalCluster`` of ``n_workers`` single-threaded worker processes, as a real
    cluster's workers (the embedded cluster's are threads of the driver), with
    ``allowed-failures`` 0; yields ``(client, start_seconds)``."""
    import dask
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            memory_limit=0,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster, set_as_default=False)
    client.wait_for_workers(n_workers)
    started = time.perf_counter() - t0
    try:
        yield client, started
    finally:
        client.close()
        cluster.close()


class Echo:
    """Collects daskprs's progress lines (printed only with ``verbose``)."""

    def __init__(self, verbose: bool = False):
        self.lines: list[str] = []
        self.verbose = verbose

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if self.verbose:
            print(f"    | {line}", flush=True)


def run_daskprs(job: Path, run_dir: Path, **kwargs: Any) -> tuple[Any, float]:
    """``daskprs.run_job`` timed (wall seconds, planning + running + assembly); never a step
    reused from an earlier run of the same job."""
    import daskprs

    set_aside(run_dir)
    kwargs.setdefault("echo", Echo())
    kwargs.setdefault("force_rerun", True)
    t0 = time.perf_counter()
    result = daskprs.run_job(job, run_dir=run_dir, **kwargs)
    return result, time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


class RssSampler:
    """Samples, in a thread, the RSS of this process and of every descendant process.

    ``driver`` is this process's peak; ``by_kind`` the peak RSS of any single descendant per
    kind (``classify(cmdline)`` names it), ``total`` the peak of the sum over the tree.
    """

    def __init__(
        self,
        interval: float = 0.05,
        classify: Callable[[str], str] | None = None,
        children: bool = True,
    ):
        import psutil

        self._psutil = psutil
        self.me = psutil.Process()
        self.interval = interval
        self.classify = classify or _classify
        self.driver = 0
        self.total = 0
        self.by_kind: dict[str, int] = {}
        self.samples = 0
        self.children = children  # False: this process only (cheaper, for the driver alone)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._kinds: dict[int, str] = {}

    def _sample(self) -> None:
        ps = self._psutil
        rss = self.me.memory_info().rss
        self.driver = max(self.driver, rss)
        total = rss
        try:
            children = self.me.children(recursive=True) if self.children else []
        except ps.Error:
            children = []
        for child in children:
            try:
                kind = self._kinds.get(child.pid)
                if kind is None:
                    kind = self._kinds[child.pid] = self.classify(" ".join(child.cmdline()))
                r = child.memory_info().rss
            except ps.Error:
                continue
            total += r
            self.by_kind[kind] = max(self.by_kind.get(kind, 0), r)
        self.total = max(self.total, total)
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.start = self.me.memory_info().rss
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _classify(cmdline: str) -> str:
    if "daskprs.execute.child" in cmdline:
        return "entry-script child"
    if "multiprocessing" in cmdline or "spawn_main" in cmdline or "forkserver" in cmdline:
        return "dask worker"
    return "other"


def rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def verdict(label: str, value: float, target: float, *, higher_is_better: bool = False) -> bool:
    """Print ``label: value (target <= t): met/MISSED`` and return whether it was met."""
    met = value >= target if higher_is_better else value <= target
    op = ">=" if higher_is_better else "<="
    print(f"  {label}: {value:.3f}  (target {op} {target:g})  {'met' if met else 'MISSED'}")
    return met


def header(title: str, **facts: Any) -> None:
    print(f"\n== {title} ==", flush=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"  cores: {os.cpu_count()}, load average: {load} (the machine may be shared)")
    for k, v in facts.items():
        print(f"  {k}: {v}")


def record(name: str, row: dict[str, Any], enabled: bool = True) -> Path | None:
    """Append ``row`` (with a UTC timestamp and the machine's cores) to
    ``benchmarks/results/<name>.csv``; a changed set of columns rewrites the header."""
    if not enabled:
        return None
    import daskprs

    full = {
        "utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cores": os.cpu_count(),
        "daskprs": getattr(daskprs, "__version__", "?"),
        "loadavg1": round(os.getloadavg()[0], 2),
        **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    rows: list[dict[str, Any]] = []
    fields = list(full)
    if path.exists():
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            old = list(reader.fieldnames or [])
        fields = old + [k for k in full if k not in old]
        if fields != old:  # new columns: rewrite the file with the union of the columns
            with open(path, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(full)
    print(f"  row appended to {path}")
    return path


def parse_size(text: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(text))
