"""The end of a run on the embedded cluster: Dask's own log messages (the closing noise of its
workers and scheduler) go to ``logs/sys/daskprs.log``, not to the console."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_files, output_of, write_job

pytestmark = pytest.mark.slow

SCRIPT = """
import os

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""

# What Dask prints when a worker's heartbeat meets a connection closed under it at the end of
# a run; it happens when the timing is unlucky, so a preload says it at every close, in each
# worker process and in the scheduler (in the driver process).
NOISE = """
import logging

from distributed.comm.core import CommClosedError


def dask_teardown(server):
    try:
        raise CommClosedError("in <TCP (closed) ConnectionPool.heartbeat_worker>: Stream is closed")
    except CommClosedError:
        logging.getLogger(f"distributed.{type(server).__name__.lower()}").exception(
            "Failed to communicate with scheduler during heartbeat."
        )
"""


def _run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    make_files(tmp_path / "data", 4)
    job = write_job(tmp_path, SCRIPT, input_yaml="type: uri_folder\npath: ./data")
    return subprocess.run(
        [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
        cwd=tmp_path,
    )


def test_dask_closing_noise_goes_to_the_log_file_not_the_console(tmp_path):
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "daskprs_test_noise.py").write_text(textwrap.dedent(NOISE))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tmp_path / "noise"), env.get("PYTHONPATH", "")) if p
    )
    preload = json.dumps(["daskprs_test_noise"])
    env["DASK_DISTRIBUTED__WORKER__PRELOAD"] = preload
    env["DASK_DISTRIBUTED__SCHEDULER__PRELOAD"] = preload
    done = _run(tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert "job succeeded" in done.stderr
    assert "Traceback" not in done.stderr and "CommClosedError" not in done.stderr, done.stderr
    log = (tmp_path / "run" / "logs" / "sys" / "daskprs.log").read_text()
    said = [line for line in log.splitlines() if "Failed to communicate with scheduler" in line]
    # once in the scheduler, once in each of the two workers: none lost, none on the console
    assert sum("distributed.scheduler" in line for line in said) == 1, log
    # (named by the worker's class: daskprs's in-memory workers are EmbeddedWorker)
    assert sum("distributed.embeddedworker" in line for line in said) == 2, log
    assert "CommClosedError: in <TCP (closed)" in log


PARENT_SCRIPT = """
import os

def run(mini_batch):
    return [f"{os.path.basename(p)} {os.getppid()}" for p in mini_batch]
"""


def test_the_embedded_workers_are_threads_of_the_driver_and_leave_no_process(tmp_path):
    """The embedded cluster starts no worker process: its workers are threads of the driver,
    whose only processes are the entry scripts', and none is left when the run returns."""
    import psutil

    from daskprs.api import run_job

    def children() -> set[int]:  # multiprocessing's resource tracker stays: not a worker
        found = set()
        for p in psutil.Process().children(recursive=True):
            try:
                if "resource_tracker" not in " ".join(p.cmdline()):
                    found.add(p.pid)
            except psutil.Error:
                pass
        return found

    before = children()
    make_files(tmp_path / "data", 6)
    job = write_job(tmp_path, PARENT_SCRIPT, input_yaml="type: uri_folder\npath: ./data")
    result = run_job(job, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert result.ok, result.failure
    rows = output_of(tmp_path / "run").read_text().split()
    assert set(rows[1::2]) == {str(os.getpid())}  # started by this process's slots
    assert children() <= before
