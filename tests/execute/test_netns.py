"""Several hosts on one machine: a `dask scheduler` and two `dask worker` hosts, each in its
own network namespace on a private bridge (10.99.13.0/24), the filesystem shared. One worker
host is cut off the network (link down) while it runs a mini-batch; the job completes on the
other, its output is the serial reference, and the cut host's mini-batch is retried there and
counted once. Needs root and `ip netns` (Debian iproute2); skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_files, output_of, poll_for

from daskprs.testing import write_job

pytestmark = pytest.mark.slow

SUBNET = "10.99.13"
PORT = 8786


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _netns_unavailable() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (Debian iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"dpr-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


class Hosts:
    """A switch namespace with a bridge, and host namespaces each on it by a veth pair."""

    def __init__(self, tag: str):
        self.tag = tag
        self.switch = f"dpr{tag}-sw"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def ns(self, name: str) -> str:
        return f"dpr{self.tag}-{name}"

    def build(self, hosts: dict[str, int]) -> None:
        _ip("netns", "add", self.switch)
        self.namespaces.append(self.switch)
        sw = ["netns", "exec", self.switch, "ip"]
        _ip(*sw, "link", "add", "br0", "type", "bridge")
        _ip(*sw, "link", "set", "br0", "up")
        for name, last in hosts.items():
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self.namespaces.append(ns)
            inner, outer = f"v{name}", f"s{name}"
            # the pair is made inside the host namespace; its outer end moves to the switch
            host = ["netns", "exec", ns, "ip"]
            _ip(*host, "link", "add", inner, "type", "veth", "peer", "name", outer)
            _ip(*host, "link", "set", outer, "netns", self.switch)
            _ip(*host, "addr", "add", f"{SUBNET}.{last}/24", "dev", inner)
            _ip(*host, "link", "set", inner, "up")
            _ip(*host, "link", "set", "lo", "up")
            _ip(*sw, "link", "set", outer, "master", "br0")
            _ip(*sw, "link", "set", outer, "up")

    def start(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        cmd = ["ip", "netns", "exec", self.ns(name), *argv]
        with open(log, "ab") as out:
            self.procs.append(
                subprocess.Popen(cmd, stdout=out, stderr=out, env=env, start_new_session=True)
            )

    def cut(self, name: str) -> None:
        _ip("netns", "exec", self.ns(name), "ip", "link", "set", f"v{name}", "down")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.procs:
            p.wait(30)
        for ns in reversed(self.namespaces):  # deleting a namespace deletes its veths
            _ip("netns", "del", ns, check=False)


@contextlib.contextmanager
def hosts_on_a_bridge(hosts: dict[str, int]) -> Iterator[Hosts]:
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(f"several hosts need network namespaces: {reason}")
    made = Hosts(str(os.getpid()))
    try:
        made.build(hosts)
        yield made
    finally:
        made.close()


# The worker host $WHO=a blocks in run() (bounded) after leaving a marker: the test cuts it
# off then. The other host's runs wait (bounded) until host a runs one, so that it has one.
SCRIPT = """\
import os, time


def init():
    pass


def run(mini_batch):
    marks = os.environ["MARKS"]
    deadline = time.monotonic() + 120
    if os.environ["WHO"] == "a":
        for p in mini_batch:
            open(os.path.join(marks, f"a-{os.path.basename(p)}"), "w").close()
        while time.monotonic() < deadline:
            time.sleep(0.1)
    while not any(m.startswith("a-") for m in os.listdir(marks)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_worker_host_cut_off_the_network_in_the_middle(tmp_path):
    make_files(tmp_path / "data", 8)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"retry_settings:\n  max_retries: 2\nenvironment_variables:\n  MARKS: {marks}",
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    # the scheduler gives a silent worker up after 5 s instead of 5 minutes
    env.update(
        {
            "DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "5s",
            "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
            "DASKPRS_HANDBACK_SECONDS": "1",
        }
    )
    address = f"tcp://{SUBNET}.1:{PORT}"
    log = tmp_path / "hosts.log"
    py = sys.executable
    with hosts_on_a_bridge({"s": 1, "a": 2, "b": 3}) as hosts:
        scheduler = [py, "-m", "distributed.cli.dask_scheduler", "--host", f"{SUBNET}.1"]
        hosts.start("s", [*scheduler, "--port", str(PORT), "--dashboard-address", ":0"], log, env)
        for name, last in (("a", 2), ("b", 3)):
            worker = [py, "-m", "distributed.cli.dask_worker", address, "--host"]
            worker += [f"{SUBNET}.{last}", "--nthreads", "1", "--no-nanny", "--no-dashboard"]
            worker += ["--memory-limit", "0", "--name", name]
            hosts.start(name, worker, log, {**env, "WHO": name})
        wait = "from distributed import Client; "
        wait += f"Client('{address}', timeout='60s').wait_for_workers(2, timeout=60)"
        ready = subprocess.run(
            ["ip", "netns", "exec", hosts.ns("s"), py, "-c", wait], env=env, timeout=120
        )
        assert ready.returncode == 0, log.read_text()[-3000:]
        # the driver runs on the scheduler's host
        driver = [py, "-m", "daskprs", "run", str(job), "--scheduler", address]
        driver += ["--run-dir", str(tmp_path / "run")]
        hosts.start("s", driver, tmp_path / "driver.log", env)
        run = hosts.procs[-1]
        cut = poll_for(lambda: sorted(marks.glob("a-*")), timeout=90)
        hosts.cut("a")
        try:
            code = run.wait(180)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 0, (tmp_path / "driver.log").read_text()[-3000:]
    run_dir = tmp_path / "run"
    assert output_of(run_dir).read_text().splitlines() == [f"f{i:03d}.txt" for i in range(8)]
    report = list(
        csv.DictReader((run_dir / "logs/sys/job_report/processed_mini-batches.csv").open())
    )
    # the mini-batch host a was running when it was cut: one lost try, done on host b
    (name,) = [p.name.removeprefix("a-") for p in cut]
    mb = str(int(name[1:4]))
    assert [(r["Try"], r["Status"]) for r in report if r["Mini-batch Id"] == mb] == [
        ("1", "PROCESS_DIED"),
        ("2", "RUN_DONE"),
    ]
    # every other mini-batch ran once
    others = [r for r in report if r["Mini-batch Id"] != mb]
    assert sorted(r["Mini-batch Id"] for r in others) == sorted(
        str(i) for i in range(8) if str(i) != mb
    )
    assert all(r["Status"] == "RUN_DONE" for r in others)
