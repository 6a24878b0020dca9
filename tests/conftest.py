"""Shared fixtures: a LocalCluster, job folders written on the fly, polling helpers."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from daskprs.testing import output_of, poll_for, write_job

__all__ = [
    "kill_worker_script",
    "make_files",
    "output_of",
    "pid_alive",
    "poll_for",
    "run_killing_a_worker",
    "write_job",
]

faulthandler.enable(file=sys.stderr, all_threads=True)

# The session's temporary folder (see pytest_configure)
_scratch: list[str] = []


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """The temporary folder of this session: what the tests and the processes they start leave
    in the temporary folder (the cache folders of slots whose worker a test killed, Dask's
    scratch space, the working folders of entry-script processes driven alone) goes into one
    folder, removed when the session ends. pytest's ``tmp_path`` folders stay where pytest
    keeps them (its base folder is made first), for a look after a failure."""
    factory = getattr(config, "_tmp_path_factory", None)
    if factory is not None:
        factory.getbasetemp()
    folder = tempfile.mkdtemp(prefix="daskprs-tests-")
    _scratch.append(folder)
    os.environ["TMPDIR"] = folder  # for the processes the tests start
    tempfile.tempdir = None  # and for this one: read from TMPDIR again


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in _scratch:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def client():
    """The embedded cluster itself: 2 single-threaded workers, threads of this process."""
    from daskprs.execute.cluster import open_cluster

    with open_cluster(n_workers=2) as handle:
        yield handle.client


def make_files(folder: Path, n: int, prefix: str = "f") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:03d}.txt"
        p.write_text(f"line {i}\n")
        paths.append(p)
    return paths


def report_and_ledger(run_dir: Path, *steps: str) -> tuple[list, list]:
    """The try report's rows and the ledgers' tries of ``steps`` (default: ``score``) one
    step after the other, each as (mini-batch, try, status), in the order written: equal
    when the records agree."""
    import csv

    from daskprs.results.ledger import ledger_tries

    report = run_dir / "logs/sys/job_report/processed_mini-batches.csv"
    with report.open(encoding="utf-8") as f:
        rows = [(int(r["Mini-batch Id"]), int(r["Try"]), r["Status"]) for r in csv.DictReader(f)]
    tries = [
        (t.mb, t.try_no, str(t.status))
        for step in steps or ("score",)
        for t in ledger_tries(str(run_dir / "steps" / step / "ledger.jsonl"))
    ]
    return rows, tries


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small filesystem of our own mounted at ``where`` (root only), unmounted after."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); needs root")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def external_cluster_at(
    folder: Path,
    hide: Path | None = None,
    tls: tuple[Path, Path, Path] | None = None,
    dashboard: bool = True,
):
    """Start a real `dask scheduler` and `dask worker --nworkers 2 --nthreads 1` on 127.0.0.1;
    yield the scheduler address; end both process groups.

    With ``hide``, the worker runs in its own mount namespace where that folder is covered by
    an empty tmpfs: a worker "on another host" that cannot see it. With ``tls`` (CA file,
    certificate, key), both speak TLS only (``tls://`` address). Without ``dashboard``, the
    scheduler is started with ``--no-dashboard`` (its HTTP server, on a free port, serves
    /health and metrics only).
    """
    port = _free_port()
    address = f"{'tls' if tls else 'tcp'}://127.0.0.1:{port}"
    security = None
    tls_args: list[str] = []
    if tls is not None:
        from distributed.security import Security

        ca, cert, key = (str(p) for p in tls)
        tls_args = ["--tls-ca-file", ca, "--tls-cert", cert, "--tls-key", key]
        security = Security(
            tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key, require_encryption=True
        )
    log = open(folder / "cluster.log", "wb")
    scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
    scheduler += ["--port", str(port), "--dashboard-address", ":0", "--no-show"]
    scheduler += [] if dashboard else ["--no-dashboard"]
    scheduler += [*tls_args, *(["--protocol", "tls"] if tls else [])]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2"]
    worker += ["--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"]
    worker += ["--memory-limit", "0", *tls_args]
    if hide is not None:
        command = f"mount -t tmpfs tmpfs {shlex.quote(str(hide))} && exec {shlex.join(worker)}"
        worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c", command]
    procs = [subprocess.Popen(scheduler, stdout=log, stderr=log, start_new_session=True)]
    try:
        from distributed import Client

        def connected():
            try:
                with Client(address, timeout="1s", security=security) as c:
                    return c is not None
            except (OSError, TimeoutError):
                return False

        poll_for(connected, timeout=60, interval=0.2)
        procs.append(subprocess.Popen(worker, stdout=log, stderr=log, start_new_session=True))
        with Client(address, timeout="10s", security=security) as c:
            c.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log.close()


@pytest.fixture
def external_cluster(tmp_path):
    """A real `dask scheduler` and `dask worker --nworkers 2 --nthreads 1` on 127.0.0.1."""
    with external_cluster_at(tmp_path) as address:
        yield address, None


def can_hide_folders() -> bool:
    """Whether this machine lets a test run a process in its own mount namespace."""
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def kill_worker_script(mb: int) -> str:
    """An entry script whose ``run()`` on mini-batch ``mb`` (first time only) writes the pid of
    the Dask worker running it (its parent) to ``$MARKS/worker.pid`` and waits to be killed."""
    return f"""
import os, time

def run(mini_batch, context):
    marks = os.environ["MARKS"]
    if context.minibatch_index == {mb} and not os.path.exists(os.path.join(marks, "killed")):
        with open(os.path.join(marks, "worker.pid.tmp"), "w") as f:
            f.write(str(os.getppid()))
        os.rename(os.path.join(marks, "worker.pid.tmp"), os.path.join(marks, "worker.pid"))
        time.sleep(3600)
    return [os.path.basename(p) for p in mini_batch]
"""


def run_killing_a_worker(job: Path, marks: Path, **run_kwargs):
    """Run ``job`` (with :func:`kill_worker_script`) in a thread, SIGKILL the Dask worker that
    reports itself in ``marks`` (a process this test started, directly or through `dask
    worker`), and return the job's result."""
    import threading

    from daskprs.api import run_job

    box = {}
    thread = threading.Thread(
        target=lambda: box.setdefault("result", run_job(job, echo=lambda s: None, **run_kwargs))
    )
    thread.start()
    pid_file = marks / "worker.pid"
    pid = int(poll_for(lambda: pid_file.exists() and pid_file.read_text()))
    (marks / "killed").touch()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=240)
    assert not thread.is_alive()
    return box["result"]


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on loopback; credentials and endpoint through the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    import urllib.request

    # moto's in-process backend outlives a server: start every test from an empty store
    urllib.request.urlopen(
        urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST")
    ).close()
    env = {
        "AWS_ACCESS_KEY_ID": "daskprs-test",
        "AWS_SECRET_ACCESS_KEY": "daskprs-secret-never-logged",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    import fsspec
    import s3fs

    # filesystem instances are cached by their arguments, not by the endpoint in the
    # environment: forget the previous test's server
    s3fs.S3FileSystem.clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir("data")
    fs.mkdir("out")
    try:
        yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


# Azurite's well-known development account (public: Azure's storage emulator documents it).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@pytest.fixture
def azurite(tmp_path, monkeypatch):
    """Azure's Blob storage emulator (Azurite, from npm: `npm install -g azurite`) on
    127.0.0.1, reached through adlfs with a connection string in the environment; yields the
    adlfs filesystem. The test is skipped where Azurite is not installed (CI installs it)."""
    import shutil

    binary = shutil.which("azurite-blob")
    if binary is None:
        pytest.skip("Azurite is not installed (npm install -g azurite)")
    port = _free_port()
    log = open(tmp_path / "azurite.log", "wb")
    proc = subprocess.Popen(
        [
            binary,
            *("--blobHost", "127.0.0.1", "--blobPort", str(port)),
            *("--location", str(tmp_path / "azurite"), "--silent", "--skipApiVersionCheck"),
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    conn = (
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
        f"AccountKey={AZURITE_KEY};BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        poll_for(listening, timeout=60, interval=0.1)
        import adlfs

        fs = adlfs.AzureBlobFileSystem(connection_string=conn, skip_instance_cache=True)
        yield fs
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
