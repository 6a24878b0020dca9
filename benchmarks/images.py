"""images: a file list of PNG images, Pillow decode + a small scikit-learn model, vs four peers.

The workload (issue 23): ``--n`` PNG images of 64 x 64 (scikit-learn's bundled digits, 8 x 8,
upscaled with Pillow and given noise; nothing downloaded). ``init()`` trains a support vector
classifier on the digits (the same upscaling, 32 x 32 features); ``run()`` opens each image with
Pillow, takes its features and classifies it, one row per image (``img000042.png 7``);
``mini_batch_size: "100"``, 2 processes.

Contenders, all writing the same bytes, each in a fresh Python process of its own (its
framework's imports, cluster or pool start and teardown included; the tree's memory sampled
from outside): a serial loop; ``ProcessPoolExecutor(2)`` over chunks of 100 with
``initializer=init``; the floor (the same pool, with Dask imported and daskprs's embedded
cluster started beside it and kept open until the pool ends: what any tool driving the
embedded Dask cluster pays before doing anything, reported with no target); hand-written
Dask (``dask.bag.from_sequence(partition_size=100).map_partitions`` on a ``LocalCluster`` of
2 single-threaded processes, the model kept per worker); Ray Data when ray is installed
(``from_items`` + ``map_batches`` on a 2-actor pool, order kept; skipped with a note
otherwise); daskprs (``run_job`` on its embedded cluster).
With ``--repeat`` the contenders take turns, round after round; each keeps its best time and
its largest tree.

Then a no-op job over the same files (``run()`` returns its input) through daskprs and through
the pool: end to end, the time from ``run_job``'s call to the first ``run()`` and from the last
``run()``'s return to ``run_job``'s (the entry script notes ``time.time()`` at its first call
and after its last one and writes them from ``shutdown()``).

Targets (issue 23): daskprs <= 1.05 x the pool at 20,000 images (<= 1.15 x at 5,000), <= 0.80
x Dask, <= 0.70 x Ray; tree memory <= 1.3 x the pool's; the no-op job <= 1.5 s; the first
``run()`` <= 0.8 s after the start, the teardown <= 0.3 s.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks import _common as c

TARGETS = {"pool": 1.05, "dask": 0.80, "ray": 0.70}
TARGET_POOL_SMALL = 1.15  # at 5,000 images or fewer
SMALL = 5000
TARGET_MEMORY = 1.3  # x the pool's tree
TARGET_NOOP = 1.5  # seconds, 20,000 files
TARGET_FIRST_RUN = 0.8  # seconds from run_job's call to the first run()
TARGET_TEARDOWN = 0.3  # seconds from the last run()'s return to run_job's
CHUNK = 100
CONTENDERS = ("serial", "pool", "floor", "dask", "daskprs", "ray")


# --------------------------------------------------------------------------------------------
# The workload: every contender runs these functions (the entry script holds their source)
# --------------------------------------------------------------------------------------------


def features(image):
    """A 64 x 64 grey image as 32 x 32 features in [0, 1]."""
    import numpy as np
    from PIL import Image

    small = image.convert("L").resize((32, 32), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32).ravel() / 255.0


def train():
    """A support vector classifier trained on scikit-learn's digits, upscaled as the images."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    grey = (digits.images * (255 / 16)).astype(np.uint8)
    x = np.stack(
        [features(Image.fromarray(g).resize((64, 64), Image.Resampling.BILINEAR)) for g in grey]
    )
    return SVC(gamma="scale").fit(x, digits.target)


def classify(model, paths):
    """One row per image: its file name and the digit the model sees in it."""
    import os

    from PIL import Image

    rows = []
    for path in paths:
        with Image.open(path) as image:
            x = features(image)
        rows.append(f"{os.path.basename(path)} {int(model.predict(x[None, :])[0])}")
    return rows


SCRIPT_TAIL = """

MODEL = None


def init():
    global MODEL
    MODEL = train()


def run(mini_batch):
    return classify(MODEL, mini_batch)
"""


def entry_script() -> str:
    return "\n\n".join(inspect.getsource(f) for f in (features, train, classify)) + SCRIPT_TAIL


# The no-op: returns its input, notes when its first run() started and its last one ended.
NOOP_SCRIPT = """\
import os
import time

FIRST = None
LAST = None


def init():
    pass


def run(mini_batch):
    global FIRST, LAST
    if FIRST is None:
        FIRST = time.time()
    LAST = time.time()
    return mini_batch


def shutdown():
    if FIRST is not None:
        with open(os.path.join(os.environ["MARKS"], f"{os.getpid()}.json"), "w") as f:
            f.write('{"first": %r, "last": %r}' % (FIRST, LAST))
"""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def generate_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``img000000.png``...: digit ``i % 1797`` upscaled to 64 x 64 (bilinear) with uniform
    noise of +-40 grey levels; reused when a previous call made the same."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    marker = folder.with_name(f"{folder.name}.json")  # beside: the job lists the folder
    want = {"n": n, "seed": seed, "version": 1}
    paths = [folder / f"img{i:06d}.png" for i in range(n)]
    if marker.exists() and json.loads(marker.read_text()) == want:
        return paths
    c.fresh_dir(folder)
    t0 = time.perf_counter()
    grey = (load_digits().images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    for i, path in enumerate(paths):
        big = Image.fromarray(grey[i % len(grey)]).resize((64, 64), Image.Resampling.BILINEAR)
        noisy = np.asarray(big, dtype=np.int16) + rng.integers(-40, 41, (64, 64))
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)
    marker.write_text(json.dumps(want))
    print(f"  generated {n} PNG images in {time.perf_counter() - t0:.1f} s", flush=True)
    return paths


def images_job(folder: Path, data: Path, script: str, marks: Path | None = None) -> Path:
    env = f"environment_variables:\n  MARKS: {marks}\n" if marks else ""
    return c.write_job(
        folder,
        script,
        input_yaml=f"type: uri_folder\npath: {data}",
        mini_batch_size='"100"',
        extra=f"retry_settings:\n  max_retries: 1\n  timeout: 600\n{env}",
    )


# --------------------------------------------------------------------------------------------
# Contenders (each runs in a process of its own: `_contender`)
# --------------------------------------------------------------------------------------------

_MODEL: Any = None


def _init() -> None:
    global _MODEL
    _MODEL = train()


def _pool_chunk(paths: list[str]) -> list[str]:
    return classify(_MODEL, paths)


def _noop_chunk(paths: list[str]) -> list[str]:
    return paths


def _dask_part(paths: list[str]) -> list[str]:
    """One bag partition; the model is trained once per worker process."""
    if _MODEL is None:
        _init()
    return classify(_MODEL, paths)


def _chunks(files: list[str]) -> list[list[str]]:
    return [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]


def _write(rows: list[str], out: Path) -> None:
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write("".join(f"{r}\n" for r in rows))


def run_serial(files: list[str], out: Path) -> dict:
    model = train()
    rows: list[str] = []
    for chunk in _chunks(files):
        rows.extend(classify(model, chunk))
    _write(rows, out)
    return {}


def run_pool(
    files: list[str], out: Path, workers: int, noop: bool = False, floor: bool = False
) -> dict:
    """The process pool; with ``floor``, Dask imported and daskprs's embedded cluster opened
    once the pool has its work (while its workers train), and closed after its last chunk."""
    import concurrent.futures
    import contextlib

    rows: list[str] = []
    init, fn = (None, _noop_chunk) if noop else (_init, _pool_chunk)
    with contextlib.ExitStack() as stack:
        executor = concurrent.futures.ProcessPoolExecutor(workers, initializer=init)
        pool = stack.enter_context(executor)
        parts = pool.map(fn, _chunks(files))
        if floor:
            from daskprs.execute.cluster import open_cluster

            stack.enter_context(open_cluster(n_workers=workers))
        for part in parts:
            rows.extend(part)
    _write(rows, out)
    return {}


def run_dask(files: list[str], out: Path, workers: int) -> dict:
    import dask.bag as db

    with c.local_client(workers) as (client, start):
        bag = db.from_sequence(files, partition_size=CHUNK).map_partitions(_dask_part)
        rows = bag.compute(scheduler=client)
    _write(rows, out)
    return {"note": f"cluster start {start:.2f} s"}


class RayMissing(Exception):
    """``import ray`` (or ``ray.data``) failed: the ray contender is skipped."""


class _RayClassifier:
    """The actor of Ray Data's pool: the model trained once per actor."""

    def __init__(self) -> None:
        self.model = train()

    def __call__(self, batch: dict) -> dict:
        return {"row": classify(self.model, list(batch["path"]))}


def run_ray(files: list[str], out: Path, workers: int) -> dict:
    """Ray Data on a new local Ray: ``from_items`` (one block per 100 paths) +
    ``map_batches`` on a pool of ``workers`` actors, order kept; shut down at the end."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise RayMissing(
            "ray is not installed" if getattr(e, "name", None) == "ray" else str(e)
        ) from e
    import logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    t0 = time.perf_counter()
    ray.init(
        address="local", num_cpus=workers, include_dashboard=False, logging_level=logging.ERROR
    )
    start = time.perf_counter() - t0
    data_logger = logging.getLogger("ray.data")
    data_logger.setLevel(logging.ERROR)  # no execution-plan lines (as in tabular.py)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(
            [{"path": f} for f in files], override_num_blocks=-(-len(files) // CHUNK)
        )
        ds = ds.map_batches(
            _RayClassifier,
            batch_size=CHUNK,
            compute=ray.data.ActorPoolStrategy(size=workers),  # 2 actors, each trains once
        )
        rows = [r["row"] for r in ds.iter_rows()]
    finally:
        ray.shutdown()
    _write(rows, out)
    return {"note": f"ray {ray.__version__}: ray start {start:.2f} s"}


def run_daskprs(job: Path, run_dir: Path, workers: int, marks: Path | None = None) -> dict:
    """``daskprs.run_job`` on the embedded cluster; with ``marks``, the no-op job's first
    ``run()`` and teardown from the marks its processes wrote."""
    t_call = time.time()
    result, _wall = c.run_daskprs(job, run_dir, workers=workers)
    t_back = time.time()
    assert result.ok, result.failure
    step = result.steps[0]
    info: dict = {
        "out": str(c.output_of(run_dir)),
        "note": f"planning {step.plan_seconds:.2f} s, running {step.seconds:.2f} s, "
        f"{step.summary['total']} mini-batches",
    }
    if marks is not None:
        seen = [json.loads(p.read_text()) for p in marks.glob("*.json")]
        info["first_run"] = min(s["first"] for s in seen) - t_call
        info["teardown"] = t_back - max(s["last"] for s in seen)
    return info


def _contender(spec: dict) -> dict:
    """Run one contender as ``spec`` says, timed from before its framework's imports."""
    t0 = time.perf_counter()
    name, out, workers = spec["name"], Path(spec["out"]), spec["workers"]
    files = spec["files"]
    if name == "serial":
        info = run_serial(files, out)
    elif name in ("pool", "pool-noop", "floor"):
        info = run_pool(files, out, workers, noop=name == "pool-noop", floor=name == "floor")
    elif name == "dask":
        info = run_dask(files, out, workers)
    elif name == "ray":
        try:
            info = run_ray(files, out, workers)
        except RayMissing as e:
            return {"skipped": str(e)}
    else:
        marks = Path(spec["marks"]) if spec.get("marks") else None
        if marks is not None:
            c.fresh_dir(marks)
        info = run_daskprs(Path(spec["job"]), Path(spec["run_dir"]), workers, marks)
    info["seconds"] = time.perf_counter() - t0
    info.setdefault("out", str(out))
    return info


# --------------------------------------------------------------------------------------------
# Measuring a contender's process tree from outside
# --------------------------------------------------------------------------------------------


def _kind(cmdline: str, root: bool) -> str:
    if root:
        return "driver"
    if "daskprs.execute.child" in cmdline:
        return "entry-script processes"
    return "worker processes"  # Dask workers (spawned), the pool's (forked), Ray's


class TreeSampler:
    """Samples, in a thread, the RSS and CPU times of process ``pid`` and its descendants:
    ``peak`` the largest sum of RSS over the tree, ``cpu`` the CPU seconds (user + system)
    per kind of process at their last sample."""

    def __init__(self, pid: int, interval: float = 0.05):
        import psutil

        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_by_kind: dict[str, int] = {}
        self._cpu: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def _sample(self) -> None:
        ps = self._psutil
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except ps.Error:
            return
        total = 0
        kinds: dict[str, int] = {}
        for p in procs:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    kind = self._cpu[p.pid][0] if p.pid in self._cpu else None
                    if kind is None or kind == "worker processes":
                        # (again until it is told: a process just forked has its parent's
                        # command line until it starts its own program)
                        kind = _kind(" ".join(p.cmdline()), p.pid == self.root.pid)
            except ps.Error:
                continue
            total += rss
            kinds[kind] = kinds.get(kind, 0) + rss
            self._cpu[p.pid] = (kind, t.user + t.system)
        if total > self.peak:  # the tree at its peak, by kind of process
            self.peak, self.peak_by_kind = total, kinds

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, secs in self._cpu.values():
            out[kind] = out.get(kind, 0.0) + secs
        return out


def measure(spec: dict) -> dict:
    """Run one contender in a fresh Python process; its figures, peak tree RSS and CPU."""
    code = (
        "import json, sys; from benchmarks.images import _contender; "
        "print(json.dumps(_contender(json.loads(sys.stdin.read()))))"
    )
    root = Path(__file__).resolve().parent.parent
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    sampler = TreeSampler(proc.pid)
    sampler.start()
    stdout, _ = proc.communicate(json.dumps(spec))
    sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['name']} failed (exit {proc.returncode})")
    info = json.loads(stdout.strip().splitlines()[-1])
    info["peak"] = sampler.peak
    info["peak_by_kind"] = sampler.peak_by_kind
    info["cpu"] = sampler.cpu
    return info


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--n",
        default="5000,20000",
        help="image counts, comma-separated (default 5000,20000; the targets are set for both)",
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--only",
        default=",".join(CONTENDERS),
        help="contenders to run, comma-separated (ray is skipped when not installed)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds in which the contenders take turns; each keeps its best time",
    )
    p.add_argument("--no-noop", action="store_true", help="skip the no-op job")


def _one_size(args: argparse.Namespace, root: Path, n: int) -> dict:
    workers = args.workers
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    c.header(f"images: {n} PNG images of 64 x 64, mini_batch_size 100, {workers} processes")
    data = root / f"png-{n}"
    files = [str(p) for p in generate_images(data, n)]
    work = c.fresh_dir(root / f"work-{n}")
    job = images_job(work / "job", data, entry_script())
    secs: dict[str, float] = {}
    peaks: dict[str, int] = {}
    trees: dict[str, dict[str, int]] = {}  # the largest tree of each, by kind of process
    cpus: dict[str, dict[str, float]] = {}
    notes: dict[str, str] = {}
    digests: dict[str, str] = {}
    skipped: set[str] = set()
    for rnd in range(args.repeat):
        for name in CONTENDERS:
            if name not in only or name in skipped:
                continue
            spec = {
                "name": name,
                "files": files,
                "out": str(work / f"{name}.txt"),
                "workers": workers,
                "job": str(job),
                "run_dir": str(work / "run"),
            }
            info = measure(spec)
            if "skipped" in info:
                print(f"  {name}: skipped ({info['skipped']}; pip install 'ray[data]')")
                skipped.add(name)
                continue
            digest = c.sha256(info["out"])
            if digests.setdefault(name, digest) != digest:
                digests[name] = "differs between rounds"
            took = info["seconds"]
            if name not in secs or took < secs[name]:
                secs[name], notes[name], cpus[name] = took, info.get("note", ""), info["cpu"]
            if info["peak"] > peaks.get(name, 0):
                peaks[name], trees[name] = info["peak"], info["peak_by_kind"]
            cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(info["cpu"].items()))
            print(
                f"  {name}: {took:.2f} s, tree {c.mb(info['peak'])}, CPU s: {cpu}"
                f" (round {rnd + 1}, load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    ref = digests.get("serial") or next(iter(digests.values()))
    rows = [
        (
            k,
            secs[k],
            f"{n / secs[k]:.0f}",
            f"{secs['daskprs'] / secs[k]:.3f}" if "daskprs" in secs else "",
            c.mb(peaks[k]),
            "yes" if digests[k] == ref else "NO",
            notes.get(k, ""),
        )
        for k in secs
    ]
    headers = ["contender", "seconds", "images/s", "daskprs / it", "tree peak", "same bytes"]
    print(c.table([*headers, "notes"], rows))
    print("  CPU seconds by kind of process (best round of each):")
    for k in secs:
        print(f"    {k}: " + ", ".join(f"{a} {b:.1f}" for a, b in sorted(cpus[k].items())))
    print("  the largest tree's RSS by kind of process:")
    for k in secs:
        print(f"    {k}: " + ", ".join(f"{a} {c.mb(b)}" for a, b in sorted(trees[k].items())))
    identical = len(set(digests.values())) == 1
    print(f"  outputs byte-identical: {identical}")
    row: dict = {"n": n, "workers": workers, "repeat": args.repeat, "identical": identical}
    row.update({f"{k}_s": v for k, v in secs.items()})
    row.update({f"{k}_peak_mb": round(v / 1e6) for k, v in peaks.items()})
    met_all = identical
    if "daskprs" in secs:
        for k, target in TARGETS.items():
            if k in secs:
                if k == "pool" and n <= SMALL:
                    target = TARGET_POOL_SMALL
                ratio = secs["daskprs"] / secs[k]
                met_all = c.verdict(f"daskprs / {k}", ratio, target) and met_all
                row[f"ratio_{k}"] = ratio
        if "floor" in secs and "pool" in secs:
            # no target: what is left above the floor is daskprs's own
            row["ratio_floor"] = secs["daskprs"] / secs["floor"]
            row["floor_over_pool"] = secs["floor"] / secs["pool"]
            print(
                f"  the floor (the pool beside Dask's embedded cluster) is "
                f"{row['floor_over_pool']:.3f} x the pool; daskprs is {row['ratio_floor']:.3f} x "
                "the floor"
            )
        if "pool" in peaks:
            ratio = peaks["daskprs"] / peaks["pool"]
            met_all = c.verdict("daskprs tree memory / pool's", ratio, TARGET_MEMORY) and met_all
            row["ratio_memory"] = ratio
    if not args.no_noop and "daskprs" in only:
        met_all = _noop(args, work, data, files, row) and met_all
    row["met"] = met_all
    c.record("images", row, not args.no_csv)
    return row


def _noop(args: argparse.Namespace, work: Path, data: Path, files: list[str], row: dict) -> bool:
    """The no-op job through daskprs and the pool, best of ``--repeat`` each."""
    n = len(files)
    marks = work / "marks"
    job = images_job(work / "noop-job", data, NOOP_SCRIPT, marks)
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for name in ("pool-noop", "daskprs-noop"):
            spec = {
                "name": name,
                "files": files,
                "out": str(work / f"{name}.txt"),
                "workers": args.workers,
                "job": str(job),
                "run_dir": str(work / "noop-run"),
                "marks": str(marks),
            }
            info = measure(spec)
            if name not in best or info["seconds"] < best[name]["seconds"]:
                best[name] = info
    d, p = best["daskprs-noop"], best["pool-noop"]
    print(
        f"  no-op run() over {n} files: daskprs {d['seconds']:.2f} s (first run() "
        f"{d['first_run']:.2f} s after run_job's call, teardown {d['teardown']:.2f} s after "
        f"the last), the pool {p['seconds']:.2f} s; load {os.getloadavg()[0]:.2f}"
    )
    cpu = ", ".join(f"{k} {v:.1f}" for k, v in sorted(d["cpu"].items()))
    print(f"    daskprs no-op CPU s: {cpu}")
    row.update(
        noop_s=d["seconds"],
        noop_pool_s=p["seconds"],
        first_run_s=d["first_run"],
        teardown_s=d["teardown"],
    )
    met = True
    if n >= 20000:  # the no-op target is set for 20,000 files
        met = c.verdict(f"no-op job over {n} files, s", d["seconds"], TARGET_NOOP) and met
    met = c.verdict("first run() after the start, s", d["first_run"], TARGET_FIRST_RUN) and met
    return c.verdict("teardown after the last run(), s", d["teardown"], TARGET_TEARDOWN) and met


def main(args: argparse.Namespace) -> list[dict]:
    sizes = [int(x) for x in str(args.n).split(",") if x.strip()]
    with c.data_folder(args.data, "images") as root:
        return [_one_size(args, root, n) for n in sizes]
