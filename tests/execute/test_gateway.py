"""A job on a real Dask Gateway through ``dask_gateway.GatewayCluster`` with ``adapt``
(docs/clusters.md, "Dask Gateway"): the test starts `dask-gateway-server` on 127.0.0.1 with
its local backend (``UnsafeLocalBackend``: schedulers and workers are processes of this
machine, run as this user) and ``SimpleAuthenticator`` (HTTP basic authentication, no
password), its scheduler and workers `dask scheduler` and `dask worker` of this Python, and
stops it (and with it every cluster it started) by pid at the end. Skipped, saying why,
without `dask-gateway` and `dask-gateway-server[local]`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import make_files, output_of, poll_for

from daskprs.testing import write_job

pytestmark = pytest.mark.slow

GATEWAY_CONFIG = """\
c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{proxy_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.LocalBackend.clusters_directory = {clusters!r}
c.ClusterConfig.scheduler_cmd = [{python!r}, "-m", "dask", "scheduler"]
c.ClusterConfig.worker_cmd = [{python!r}, "-m", "dask", "worker"]
c.ClusterConfig.worker_cores = 1
c.ClusterConfig.worker_memory = "1 G"
c.ClusterConfig.idle_timeout = 0
"""


def _unavailable() -> str | None:
    try:
        import dask_gateway  # noqa: F401
        import dask_gateway_server.backends.local  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _left_in(folder: Path) -> list[psutil.Process]:
    """The processes (schedulers, workers) running in a cluster folder of the gateway."""
    left = []
    for proc in psutil.process_iter(["cwd"]):
        cwd = proc.info.get("cwd") or ""
        if cwd.startswith(str(folder)):
            left.append(proc)
    return left


@contextlib.contextmanager
def gateway_at(root: Path) -> Iterator[str]:
    """Start `dask-gateway-server` configured in ``root``; yield its address; stop it."""
    proxy_port = _free_port()
    clusters = root / "clusters"
    config = root / "dask_gateway_config.py"
    config.write_text(
        GATEWAY_CONFIG.format(
            api_port=_free_port(),
            proxy_port=proxy_port,
            clusters=str(clusters),
            python=sys.executable,
        )
    )
    address = f"http://127.0.0.1:{proxy_port}"
    log = open(root / "gateway.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "dask_gateway_server", "-f", str(config)],
        cwd=root,
        stdout=log,
        stderr=log,
    )

    def healthy() -> bool:
        assert proc.poll() is None, (root / "gateway.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{address}/api/health", timeout=2) as answer:
                return answer.status == 200
        except (OSError, urllib.error.URLError):
            return False

    try:
        poll_for(healthy, timeout=60, interval=0.2)
        yield address
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # it stops the clusters it started, then itself
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for left in _left_in(clusters):  # what it did not stop (its own processes)
            left.kill()


@pytest.fixture
def gateway(tmp_path) -> Iterator[str]:
    why = _unavailable()
    if why is not None:
        pytest.skip(why)
    (tmp_path / "gateway").mkdir()
    with gateway_at(tmp_path / "gateway") as address:
        yield address
        # the job's cluster was shut down at its end, not by the gateway's own stop
        poll_for(lambda: not _left_in(tmp_path / "gateway" / "clusters"), timeout=30)


# The recipe of docs/clusters.md, with this gateway's address and its authentication: basic,
# as the user running the job, no password.
GATEWAY_SPEC = """\
computes:
  gateway:
    class: dask_gateway.GatewayCluster
    kwargs:
      address: {address}
      auth: basic
    adapt: {{minimum: 1, maximum: 2}}
"""

# Each run() leaves a marker named after its process, and waits (bounded) until markers of
# two processes are there: the job ends quickly only once adapt() has added a second worker.
SCRIPT = """\
import os, time


def init():
    pass


def run(mini_batch):
    marks = os.environ["MARKS"]
    open(os.path.join(marks, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(marks)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]
"""


def test_a_job_on_a_dask_gateway_cluster_that_adapts(gateway, tmp_path):
    from daskprs.api import run_job

    make_files(tmp_path / "data", 4)
    (tmp_path / "marks").mkdir()
    (tmp_path / "daskprs.yaml").write_text(GATEWAY_SPEC.format(address=gateway))
    job = write_job(
        tmp_path,
        SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"compute: azureml:gateway\nenvironment_variables:\n  MARKS: {tmp_path / 'marks'}",
    )
    lines: list[str] = []
    unraisable: list[str] = []
    hook = sys.unraisablehook
    sys.unraisablehook = lambda info: unraisable.append(f"{info.object!r}: {info.exc_value!r}")
    try:
        result = run_job(job, run_dir=tmp_path / "run", echo=lines.append)
        gc.collect()  # the closed cluster's objects
    finally:
        sys.unraisablehook = hook
    assert result.ok, result.failure
    # dask_gateway's Gateway, closed with the cluster, does not fail closing again in __del__
    assert not unraisable, unraisable
    rows = output_of(tmp_path / "run").read_text().splitlines()
    assert rows == [f"f{i:03d}.txt line {i}" for i in range(4)]
    assert len(os.listdir(tmp_path / "marks")) >= 2  # adapt() added a second worker
    assert any("gateway://" in line or "tls://" in line for line in lines), lines
