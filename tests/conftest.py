"""Shared fixtures: a LocalCluster, job folders written on the fly, polling helpers."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

faulthandler.enable(file=sys.stderr, all_threads=True)


@pytest.fixture(scope="session")
def client():
    """A LocalCluster of 2 single-threaded worker processes, as the embedded one is."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            memory_limit=0,
            silence_logs=logging.ERROR,
        )
        c = Client(cluster, set_as_default=False)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def poll_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.05):
    """Wait until ``predicate()`` is truthy and return it; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s: {predicate}")
        time.sleep(interval)


def write_job(
    folder: Path,
    script: str,
    *,
    input_yaml: str,
    mini_batch_size: str = '"2"',
    extra: str = "",
    program_arguments: str = "",
    append_row: bool = True,
    settings: str = "",
) -> Path:
    """Write a pipeline with one inline parallel node ``score`` and its entry script."""
    (folder / "code").mkdir(parents=True, exist_ok=True)
    (folder / "code" / "score.py").write_text(textwrap.dedent(script))
    args = (
        f"      program_arguments: >-\n        {program_arguments}\n" if program_arguments else ""
    )
    append = "      append_row_to: ${{outputs.result}}\n" if append_row else ""
    text = f"""\
type: pipeline
{settings}
jobs:
  score:
    type: parallel
    inputs:
      data:
{textwrap.indent(textwrap.dedent(input_yaml).strip(), " " * 8)}
    outputs:
      result:
        type: uri_file
    input_data: ${{{{inputs.data}}}}
    mini_batch_size: {mini_batch_size}
    max_concurrency_per_instance: 2
{textwrap.indent(textwrap.dedent(extra).strip(), " " * 4)}
    task:
      type: run_function
      code: ./code
      entry_script: score.py
{args}{append}"""
    path = folder / "job.yml"
    path.write_text(text)
    return path


def make_files(folder: Path, n: int, prefix: str = "f") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}{i:03d}.txt"
        p.write_text(f"line {i}\n")
        paths.append(p)
    return paths


def output_of(run_dir: Path, step: str = "score", name: str = "result") -> Path:
    return run_dir / "outputs" / step / name / "parallel_run_step.txt"


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
def external_cluster_at(folder: Path, hide: Path | None = None):
    """Start a real `dask scheduler` and `dask worker --nworkers 2 --nthreads 1` on 127.0.0.1;
    yield the scheduler address; end both process groups.

    With ``hide``, the worker runs in its own mount namespace where that folder is covered by
    an empty tmpfs: a worker "on another host" that cannot see it.
    """
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(folder / "cluster.log", "wb")
    scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1"]
    scheduler += ["--port", str(port), "--dashboard-address", ":0", "--no-show"]
    worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2"]
    worker += ["--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"]
    worker += ["--memory-limit", "0"]
    if hide is not None:
        command = f"mount -t tmpfs tmpfs {shlex.quote(str(hide))} && exec {shlex.join(worker)}"
        worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c", command]
    procs = [subprocess.Popen(scheduler, stdout=log, stderr=log, start_new_session=True)]
    try:
        from distributed import Client

        def connected():
            try:
                with Client(address, timeout="1s") as c:
                    return c is not None
            except (OSError, TimeoutError):
                return False

        poll_for(connected, timeout=60, interval=0.2)
        procs.append(subprocess.Popen(worker, stdout=log, stderr=log, start_new_session=True))
        with Client(address, timeout="10s") as c:
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
