"""Existing clusters: what decides how many mini-batches run at once (worker threads,
``--resources GPU=n``), the per-process ``CUDA_VISIBLE_DEVICES``, and workers that join or
leave in the middle of a job. Real ``dask scheduler``/``dask worker`` processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_files, output_of, poll_for

from daskprs.api import run_job
from daskprs.testing import write_job

# Each run() leaves a marker in $RUNNING while it runs, waits (bounded, $WAIT s) until $WANT
# markers are there (or another run saw them: the file "reached" beside $RUNNING), and reports
# the most it saw, with its pid and CUDA_VISIBLE_DEVICES.
CONCURRENT = """\
import os, time


def init():
    pass


def run(mini_batch):
    folder = os.environ["RUNNING"]
    me = os.path.join(folder, f"{os.getpid()}-{time.monotonic_ns()}")
    open(me, "w").close()
    want, wait = int(os.environ["WANT"]), float(os.environ["WAIT"])
    deadline = time.monotonic() + wait
    seen = len(os.listdir(folder))
    reached = os.path.join(os.path.dirname(folder), "reached")
    while seen < want and not os.path.exists(reached) and time.monotonic() < deadline:
        time.sleep(0.02)
        seen = max(seen, len(os.listdir(folder)))
    if seen >= want:
        open(reached, "w").close()
    os.unlink(me)
    device = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
    return [f"{os.path.basename(p)} {os.getpid()} {device} {seen}" for p in mini_batch]
"""


class Processes:
    """A `dask scheduler` on 127.0.0.1 and the `dask worker` processes added to it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.log = open(folder / "cluster.log", "wb")
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def start_scheduler(self) -> str:
        from conftest import _free_port

        port = _free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
        cmd += ["--port", str(port), "--dashboard-address", ":0", "--no-show"]
        self._spawn(cmd, None)
        poll_for(lambda: self.n_workers() is not None, timeout=60, interval=0.2)
        return self.address

    def add_worker(self, *args: str, env: dict[str, str] | None = None, name: str = "") -> None:
        cmd = [sys.executable, "-m", "distributed.cli.dask_worker", self.address, "--host"]
        cmd += ["127.0.0.1", "--no-dashboard", "--memory-limit", "0", "--no-nanny", *args]
        if name:
            cmd += ["--name", name]
        self._spawn(cmd, {**os.environ, **(env or {})})

    def _spawn(self, cmd: list[str], env: dict[str, str] | None) -> None:
        self.procs.append(
            subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env, start_new_session=True)
        )

    def n_workers(self) -> int | None:
        from distributed import Client

        try:
            with Client(self.address, timeout="2s") as c:
                return len(c.scheduler_info(n_workers=-1)["workers"])
        except (OSError, TimeoutError):
            return None

    def close(self) -> None:
        # one at a time, the scheduler last: a worker closes quickly while it can still
        # say goodbye to its scheduler
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.log.close()


@contextlib.contextmanager
def cluster(folder: Path, *workers: tuple[str, ...], env: dict | None = None) -> Iterator:
    procs = Processes(folder)
    try:
        procs.start_scheduler()
        for args in workers:
            procs.add_worker(*args, env=env)
        poll_for(lambda: procs.n_workers() == len(workers), timeout=60, interval=0.2)
        yield procs
    finally:
        procs.close()


def concurrency_job(folder: Path, n: int, want: int, wait: float, extra: str = "") -> Path:
    make_files(folder / "data", n)
    running = folder / "running"
    running.mkdir()
    return write_job(
        folder,
        CONCURRENT,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  RUNNING: {running}\n  WANT: '{want}'\n"
        f"  WAIT: '{wait}'\n{extra}",
    )


def rows_of(run_dir: Path) -> list[tuple[str, str, str, int]]:
    rows = [line.split() for line in output_of(run_dir).read_text().splitlines()]
    return [(name, pid, device, int(seen)) for name, pid, device, seen in rows]


def devices_by_process(rows) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for _, pid, device, _ in rows:
        found.setdefault(pid, set()).add(device)
    return found


@pytest.mark.slow
def test_a_workers_threads_run_that_many_at_once_each_with_its_own_gpu(tmp_path):
    """One worker with 2 threads that sees GPUs 7 and 8: two entry-script processes run at
    once, each with one of the devices; max_concurrency_per_instance (1 here) does not cap
    an existing cluster."""
    job = concurrency_job(tmp_path, 2, want=2, wait=20)
    job.write_text(
        job.read_text().replace(
            "max_concurrency_per_instance: 2", "max_concurrency_per_instance: 1"
        )
    )
    lines: list[str] = []
    with cluster(tmp_path, ("--nthreads", "2"), env={"CUDA_VISIBLE_DEVICES": "7,8"}) as c:
        result = run_job(job, run_dir=tmp_path / "run", scheduler=c.address, echo=lines.append)
    assert result.ok, result.failure
    assert (
        "note: [score] the cluster runs 2 mini-batches at once (its worker threads); "
        "instance_count x max_concurrency_per_instance = 1 sizes the embedded cluster only"
    ) in "\n".join(lines)
    rows = rows_of(tmp_path / "run")
    assert sorted(r[0] for r in rows) == ["f000.txt", "f001.txt"]
    assert max(r[3] for r in rows) == 2
    by_process = devices_by_process(rows)
    assert sorted(d for devices in by_process.values() for d in devices) == ["7", "8"]


@pytest.mark.slow
def test_a_worker_with_one_gpu_resource_runs_one_at_a_time(tmp_path):
    """`dask worker --nthreads 2 --resources GPU=1`: one try at a time there, on device 7."""
    job = concurrency_job(tmp_path, 3, want=2, wait=1)
    with cluster(
        tmp_path, ("--nthreads", "2", "--resources", "GPU=1"), env={"CUDA_VISIBLE_DEVICES": "7,8"}
    ) as c:
        result = run_job(job, run_dir=tmp_path / "run", scheduler=c.address, echo=lambda s: None)
    assert result.ok, result.failure
    rows = rows_of(tmp_path / "run")
    assert len(rows) == 3
    assert max(r[3] for r in rows) == 1
    assert devices_by_process(rows) == {rows[0][1]: {"7"}}


@pytest.mark.slow
def test_the_embedded_cluster_on_a_gpu_machine_runs_a_process_per_device(tmp_path, monkeypatch):
    """Without max_concurrency_per_instance, a machine that sees 2 GPUs runs 2 processes,
    each on its own device (as Azure does on a GPU node)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    job = concurrency_job(tmp_path, 2, want=2, wait=20)
    job.write_text(job.read_text().replace("    max_concurrency_per_instance: 2\n", ""))
    lines: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", echo=lines.append)
    assert result.ok, result.failure
    assert "embedded local cluster: 2 worker slots" in "\n".join(lines)
    rows = rows_of(tmp_path / "run")
    assert max(r[3] for r in rows) == 2
    by_process = devices_by_process(rows)
    assert sorted(d for devices in by_process.values() for d in devices) == ["3", "5"]


@pytest.mark.slow
def test_no_gpu_in_daskprs_gpu_devices_hides_the_gpus_a_process_would_inherit(
    tmp_path, monkeypatch
):
    """``DASKPRS_GPU_DEVICES=-1`` (no GPU) on a machine whose ``CUDA_VISIBLE_DEVICES`` is 3:
    one process a core, and none of them sees device 3 (they did, and counted it in
    ``AZ_BATCHAI_GPU_COUNT_FOUND``)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setenv("DASKPRS_GPU_DEVICES", "-1")
    make_files(tmp_path / "data", 2)
    job = write_job(
        tmp_path,
        "import os\n\ndef run(mini_batch):\n    return [os.environ.get('CUDA_VISIBLE_DEVICES')"
        " + ' ' + os.environ['AZ_BATCHAI_GPU_COUNT_FOUND'] for _ in mini_batch]\n",
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
    )
    result = run_job(job, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == ["-1 0", "-1 0"]


# --------------------------------------------------------------------------- elastic clusters

# $WHO names the worker a child runs on (set in each `dask worker`'s environment). A run on a
# worker other than $GO_WHO first waits (bounded) for the file $GO; runs on $MARK_WHO leave
# a marker "<WHO>-<file>" in $MARKS first.
ELASTIC = """\
import os, time


def init():
    pass


def run(mini_batch):
    who, marks = os.environ["WHO"], os.environ["MARKS"]
    for p in mini_batch:
        open(os.path.join(marks, f"{who}-{os.path.basename(p)}"), "w").close()
    deadline = time.monotonic() + 60
    if who != os.environ["GO_WHO"]:
        while not os.path.exists(os.environ["GO"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    return [f"{os.path.basename(p)} {who}" for p in mini_batch]
"""


def elastic_job(folder: Path, n: int, go_who: str) -> tuple[Path, Path]:
    make_files(folder / "data", n)
    marks = folder / "marks"
    marks.mkdir()
    job = write_job(
        folder,
        ELASTIC,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"retry_settings:\n  max_retries: 2\nenvironment_variables:\n  MARKS: {marks}\n"
        f"  GO: {folder / 'go'}\n  GO_WHO: {go_who}",
    )
    return job, marks


def tries_of(run_dir: Path) -> dict[str, list[tuple[str, str]]]:
    import csv

    path = run_dir / "logs/sys/job_report/processed_mini-batches.csv"
    found: dict[str, list[tuple[str, str]]] = {}
    for r in csv.DictReader(path.open()):
        found.setdefault(r["Mini-batch Id"], []).append((r["Try"], r["Status"]))
    return found


def run_in_thread(job: Path, run_dir: Path, address: str, **kwargs):
    import threading

    outcome: dict = {}

    def target():
        try:
            outcome["result"] = run_job(
                job, run_dir=run_dir, scheduler=address, echo=lambda s: 0, **kwargs
            )
        except BaseException as err:  # reported by the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.slow
def test_a_worker_that_joins_in_the_middle_gets_work(tmp_path):
    """The first worker's runs wait until the worker that joins later ran a mini-batch."""
    job, marks = elastic_job(tmp_path, 6, go_who="late")
    with cluster(tmp_path, ("--nthreads", "1"), env={"WHO": "early"}) as c:
        thread, outcome = run_in_thread(job, tmp_path / "run", c.address)
        poll_for(lambda: any(marks.glob("early-*")), timeout=60)
        c.add_worker("--nthreads", "1", env={"WHO": "late"})
        poll_for(lambda: any(marks.glob("late-*")), timeout=60)
        (tmp_path / "go").touch()
        thread.join(120)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["result"].ok, outcome["result"].failure
    rows = [line.split() for line in output_of(tmp_path / "run").read_text().splitlines()]
    assert sorted(name for name, _ in rows) == [f"f{i:03d}.txt" for i in range(6)]
    assert {who for _, who in rows} == {"early", "late"}
    assert all(t == [("1", "RUN_DONE")] for t in tries_of(tmp_path / "run").values())


@pytest.mark.slow
@pytest.mark.parametrize("staged", [False, True], ids=["shared", "staged"])
def test_a_retired_worker_hands_back_its_mini_batches_without_burning_tries(
    tmp_path, request, staged
):
    """Retiring a worker in the middle: its running try and the queued ones run on the
    other worker, each counted once, with no try burnt. Staged (``--staging`` on a moto S3
    server), the claims and the hand-back markers are objects of the store, a marker taken
    by its exclusive create."""
    from distributed import Client

    staging = {"staging": "s3://out/stage"} if staged else {}
    s3 = request.getfixturevalue("s3") if staged else None
    job, marks = elastic_job(tmp_path, 6, go_who="nobody")
    with cluster(tmp_path, ("--nthreads", "1", "--name", "stay"), env={"WHO": "stay"}) as c:
        c.add_worker("--nthreads", "2", "--name", "leave", env={"WHO": "leave"})
        poll_for(lambda: c.n_workers() == 2, timeout=60)
        thread, outcome = run_in_thread(job, tmp_path / "run", c.address, **staging)
        poll_for(lambda: len(list(marks.glob("leave-*"))) == 2, timeout=60)
        poll_for(lambda: any(marks.glob("stay-*")), timeout=60)
        with Client(c.address, timeout="10s") as client:
            client.retire_workers(names=["leave"], close_workers=True)
        poll_for(lambda: c.n_workers() == 1, timeout=60)
        (tmp_path / "go").touch()
        thread.join(120)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["result"].ok, outcome["result"].failure
    rows = [line.split() for line in output_of(tmp_path / "run").read_text().splitlines()]
    assert sorted(name for name, _ in rows) == [f"f{i:03d}.txt" for i in range(6)]
    assert {who for _, who in rows} == {"stay"}
    assert all(t == [("1", "RUN_DONE")] for t in tries_of(tmp_path / "run").values())
    if s3 is not None:  # the parts came from the store, which is empty again
        assert "s3://out/stage/" in (tmp_path / "run/steps/score/ledger.jsonl").read_text()
        s3.invalidate_cache()
        assert not s3.find("out/stage")
