"""overhead: N one-file mini-batches, run() returns its input, vs a raw client.map no-op.

Both run on the same ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``;
the cluster start is reported apart. daskprs wall time covers planning, running and assembly.
Target: daskprs wall <= 0.5 x raw ``client.map`` (daskprs packs small mini-batches into
fewer Dask tasks; the raw map sends one task per item).

With ``--staging``, the same job also runs through daskprs's embedded cluster twice a round:
with the workers' files staged to a moto S3 server on 127.0.0.1 and without; the ratio and
the S3 requests a mini-batch are printed (no target: what staging costs short tries).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks import _common as c

TARGET = 0.5

SCRIPT = """\
def init():
    pass


def run(mini_batch):
    return mini_batch
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=2000, help="mini-batches (default 2000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--repeat", type=int, default=1, help="alternate runs; best kept")
    p.add_argument("--profile", action="store_true", help="cProfile the daskprs driver")
    p.add_argument("--verbose", action="store_true", help="show daskprs progress lines")
    p.add_argument(
        "--staging",
        action="store_true",
        help="also run daskprs on its embedded cluster with staging on an S3 server (moto) on "
        "127.0.0.1, and without, and print both and the S3 requests a mini-batch",
    )


def _noop(x):
    return x


def raw_map(client, items) -> float:
    """``client.map`` of a no-op over ``items`` and gather the results."""
    t0 = time.perf_counter()
    futures = client.map(_noop, items, pure=False)
    client.gather(futures)
    elapsed = time.perf_counter() - t0
    del futures
    return elapsed


def raw_window(client, items, window: int, batched: bool = False) -> float:
    """A no-op submitted one future per item in a bounded window, finished futures streamed
    back through done-callbacks and a queue, as daskprs's runner does. ``batched`` False reads
    each result with ``future.result()`` (one round trip each, as the runner does); True
    gathers every future already finished in one ``client.gather``."""
    import queue

    t0 = time.perf_counter()
    done: queue.Queue = queue.Queue()
    it = iter(items)
    running = 0

    def submit(x) -> None:
        fut = client.submit(_noop, x, pure=False)
        fut.add_done_callback(done.put)

    for x in it:
        submit(x)
        running += 1
        if running >= window:
            break
    while running:
        ready = [done.get()]
        if batched:
            while True:
                try:
                    ready.append(done.get_nowait())
                except queue.Empty:
                    break
            client.gather(ready)
        else:
            ready[0].result()
        for fut in ready:
            fut.release()
        running -= len(ready)
        for _ in ready:
            nxt = next(it, None)
            if nxt is not None:
                submit(nxt)
                running += 1
    return time.perf_counter() - t0


def _job(folder: Path, files: Path) -> Path:
    return c.write_job(
        folder,
        SCRIPT,
        input_yaml=f"type: uri_folder\npath: {files}",
        mini_batch_size='"1"',
        extra="retry_settings:\n  max_retries: 0\n  timeout: 60",
    )


def main(args: argparse.Namespace) -> dict:
    n, workers = args.n, args.workers
    with c.data_folder(args.data, "overhead") as root:
        files = c.make_small_files(root / f"input-{n}", n)
        warm_files = c.make_small_files(root / "warmup", 20)
        job = _job(root / "job", root / f"input-{n}")
        warm_job = _job(root / "warm-job", root / "warmup")
        items = [str(p) for p in files]
        with c.local_client(workers) as (client, start):
            c.header(
                f"overhead: {n} one-file mini-batches on {workers} workers",
                cluster_start=f"{start:.2f} s (excluded)",
            )
            # warm-up: imports and first child processes in the workers, not measured
            raw_map(client, [str(p) for p in warm_files])
            res, _ = c.run_daskprs(warm_job, root / "run-warm", client=client)
            assert res.ok, res.failure
            raws, windows, batched, prs = [], [], [], []
            result = None
            window = max(8, 4 * workers)
            for i in range(args.repeat):
                raws.append(raw_map(client, items))
                windows.append(raw_window(client, items, window))
                batched.append(raw_window(client, items, 4 * window, batched=True))
                echo = c.Echo(args.verbose)
                if args.profile and i == 0:
                    import cProfile
                    import pstats

                    prof = cProfile.Profile()
                    prof.enable()
                    result, wall = c.run_daskprs(job, root / "run", client=client, echo=echo)
                    prof.disable()
                    print("  cProfile of the daskprs driver (top 25 by cumulative time):")
                    pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
                else:
                    result, wall = c.run_daskprs(job, root / "run", client=client, echo=echo)
                assert result.ok, result.failure
                prs.append(wall)
            assert result is not None
            out = c.output_of(root / "run").read_text().splitlines()
            assert sorted(out) == sorted(items) and len(out) == n, "output rows differ"
        step = result.steps[0]
        raw, win, bat, pr = min(raws), min(windows), min(batched), min(prs)
        plan_s, run_s = step.plan_seconds, step.seconds
        rows = [
            ("raw client.map + gather", raw, n / raw, 1.0),
            (f"raw submit, window {window}, result() each", win, n / win, win / raw),
            (f"raw submit, window {4 * window}, batched gather", bat, n / bat, bat / raw),
            ("daskprs run_job", pr, n / pr, pr / raw),
            ("  of which planning", plan_s, "", ""),
            ("  of which running", run_s, "", ""),
            ("  rest (load, assembly, logs)", pr - plan_s - run_s, "", ""),
        ]
        print(c.table(["contender", "seconds", "tasks/s", "x raw"], rows))
        ratio = pr / raw
        met = c.verdict("daskprs / raw client.map", ratio, TARGET)
        print(f"  daskprs per-mini-batch overhead over raw: {(pr - raw) / n * 1e3:.2f} ms")
        row = {
            "n": n,
            "workers": workers,
            "cluster_start_s": start,
            "raw_s": raw,
            "raw_window_s": win,
            "raw_window_batched_s": bat,
            "daskprs_s": pr,
            "plan_s": plan_s,
            "run_s": run_s,
            "raw_tasks_per_s": n / raw,
            "daskprs_tasks_per_s": n / pr,
            "ratio": ratio,
            "target": TARGET,
            "met": met,
        }
        if args.staging:
            row.update(staged(args, root, job, items))
        c.record("overhead", row, not args.no_csv)
        return row


def _requests(log: Path) -> int:
    """The requests the S3 server logged so far (one line each)."""
    with open(log, "rb") as f:
        return sum(b'HTTP/1.1" ' in line for line in f)


def staged(args: argparse.Namespace, root: Path, job: Path, items: list[str]) -> dict:
    """The job on daskprs's embedded cluster with staging on a moto S3 server and without,
    taking turns for ``--repeat`` rounds; the best wall of each, and the server's requests
    and CPU for one staged run."""
    from benchmarks.tabular import s3_server

    n = len(items)
    with s3_server(root) as s3:
        walls: dict[str, list[float]] = {"shared filesystem": [], "staged": []}
        requests, s3_cpu = 0, 0.0
        for _ in range(args.repeat):
            for name, walls_of in walls.items():
                before, cpu = _requests(root / "moto.log"), s3.cpu()
                result, wall = c.run_daskprs(
                    job,
                    root / "run-embedded",
                    workers=args.workers,
                    echo=c.Echo(args.verbose),
                    staging=s3.url if name == "staged" else None,
                )
                assert result.ok, result.failure
                out = c.output_of(root / "run-embedded").read_text().splitlines()
                assert sorted(out) == sorted(items) and len(out) == n, "output rows differ"
                walls_of.append(wall)
                if name == "staged":
                    requests, s3_cpu = _requests(root / "moto.log") - before, s3.cpu() - cpu
    shared, stage = min(walls["shared filesystem"]), min(walls["staged"])
    print(f"  staging, on the embedded cluster (cluster start included), {n} mini-batches:")
    rows = [
        ("daskprs, shared filesystem", shared, n / shared, 1.0),
        ("daskprs, staged to S3 (moto)", stage, n / stage, stage / shared),
    ]
    print(c.table(["contender", "seconds", "mini-batches/s", "x shared"], rows))
    print(
        f"  staged: {requests / n:.2f} S3 requests a mini-batch, "
        f"the S3 server {s3_cpu:.1f} s of CPU"
    )
    return {
        "embedded_s": shared,
        "staged_s": stage,
        "staged_ratio": stage / shared,
        "staged_requests_per_mb": requests / n,
        "staged_s3_cpu_s": s3_cpu,
    }
