"""A job on a real one-node Slurm through ``dask_jobqueue.SLURMCluster`` (docs/clusters.md,
"Slurm or PBS"): the recipe as the docs give it, a worker's batch job cancelled by `scancel`
in the middle of a mini-batch, a worker's batch job that reaches its walltime, and Ctrl-C or
SIGTERM ending the run with exit 130 and no batch job left in the queue (also while its batch
jobs still wait in the queue). The Slurm and PBS recipes of the docs are checked as the batch
scripts dask-jobqueue makes of them.

The fixture starts its own Slurm from Debian's packages (`slurm-wlm`, `munge`: `.ci/run`
installs them): a munge key and `munged` on a socket of its own, a `slurm.conf` in a temporary
folder (one node, this host, on 127.0.0.1, a partition `debug` of 2 CPUs; no cgroups, no
accounting) and `slurmctld` and `slurmd` in the foreground on free ports; it cancels what is
left in its queue and stops the daemons by pid at the end. Needs root (slurmd runs the batch
jobs as their user) and `dask-jobqueue`; skipped, saying why, otherwise.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_files, output_of, poll_for

from daskprs.testing import write_job

pytestmark = pytest.mark.slow

DAEMONS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel")


def _unavailable() -> str | None:
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (Debian packages slurm-wlm and munge)"
    if os.geteuid() != 0:
        return "a one-node Slurm run by the test needs root"
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        return "dask-jobqueue is not installed (pip install -e '.[test]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Slurm:
    """A running one-node Slurm: its configuration and the environment that reaches it."""

    root: Path
    conf: Path
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=30)

    def jobs(self) -> list[str]:
        """The ids of the batch jobs in the queue (pending, running or completing)."""
        return self.run("squeue", "-h", "-o", "%i").stdout.split()


SLURM_CONF = """\
ClusterName=daskprs
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
ReturnToService=2
KillWait=2
OverTimeLimit=0
MinJobAge=2
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def one_node_slurm(root: Path) -> Iterator[Slurm]:
    """Start munged, slurmctld and slurmd (configured in ``root``); wait until the node is
    idle; at the end cancel what is in the queue, wait until it is gone, stop the daemons."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)  # munged refuses a key or socket in a folder others may write to
    for folder in ("state", "spool"):
        (root / folder).mkdir(exist_ok=True)
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2  # MB
    conf = root / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            host=host,
            root=root,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            memory=memory,
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    slurm = Slurm(root, conf, env)
    munged = ["munged", "--foreground", "--force", f"--key-file={key}"]
    munged += [f"--socket={root / 'munge.socket'}", f"--pid-file={root / 'munged.pid'}"]
    munged += [f"--log-file={root / 'munged.log'}", f"--seed-file={root / 'munged.seed'}"]
    commands = [
        munged,
        ["slurmctld", "-D", "-f", str(conf)],
        ["slurmd", "-D", "-f", str(conf)],
    ]
    procs: list[subprocess.Popen] = []
    log = open(root / "daemons.log", "wb")
    try:
        for command in commands:
            procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=log))
            if command[0] == "munged":
                poll_for((root / "munge.socket").exists, timeout=30)

        def idle() -> bool:
            for p in procs:
                assert p.poll() is None, (root / "daemons.log").read_text()[-3000:]
            return slurm.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle"

        poll_for(idle, timeout=60, interval=0.2)
        yield slurm
    finally:
        if procs and procs[-1].poll() is None:
            slurm.run("scancel", "--partition=debug")
            with contextlib.suppress(AssertionError):
                poll_for(lambda: not slurm.jobs(), timeout=60, interval=0.2)
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[Slurm]:
    why = _unavailable()
    if why is not None:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("slurm")
    with one_node_slurm(root) as running, pytest.MonkeyPatch.context() as mp:
        # sbatch, squeue and scancel (run by dask_jobqueue in this process) find this Slurm
        mp.setenv("SLURM_CONF", str(running.conf))
        yield running
        assert not running.jobs(), "a test left batch jobs in the queue"


# The recipe of docs/clusters.md, sized for this node: two batch jobs of one worker thread.
# `interface: lo` keeps the scheduler and the workers on the loopback.
SLURM_SPEC = """\
computes:
  cpu-cluster:
    class: dask_jobqueue.SLURMCluster
    kwargs:
      queue: debug
      cores: 1
      processes: 1
      memory: 2GB
      walltime: "{walltime}"
      interface: lo
      scheduler_options: {{dashboard_address: "127.0.0.1:0"}}
      log_directory: {logs}
{extra}    {size}
"""

# Mini-batch VICTIM's first try writes the batch job it runs in to $MARKS/victim, then waits
# (bounded) to be ended with it; every try returns one row per file, the same wherever it runs.
SCRIPT = """\
import os, time

VICTIM = {victim}


def run(mini_batch, context):
    marks = os.environ["MARKS"]
    if context.minibatch_index == VICTIM:
        try:  # the first try only
            os.close(os.open(os.path.join(marks, "first"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            pass
        else:
            with open(os.path.join(marks, "victim.tmp"), "w") as f:
                f.write(os.environ["SLURM_JOB_ID"])
            os.rename(os.path.join(marks, "victim.tmp"), os.path.join(marks, "victim"))
            time.sleep(300)
    return [f"{{os.path.basename(p)}} {{open(p).read().strip()}}" for p in mini_batch]
"""

N_FILES = 6


def slurm_job(
    tmp_path: Path, *, victim: int, walltime: str, size: str, extra: str = "", arguments: str = ""
) -> Path:
    make_files(tmp_path / "data", N_FILES)
    (tmp_path / "marks").mkdir()
    (tmp_path / "slurm-logs").mkdir()
    spec = SLURM_SPEC.format(
        walltime=walltime, logs=tmp_path / "slurm-logs", size=size, extra=extra
    )
    (tmp_path / "daskprs.yaml").write_text(spec)
    return write_job(
        tmp_path,
        SCRIPT.format(victim=victim),
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra="compute: azureml:cpu-cluster\n"
        f"retry_settings:\n  max_retries: 2\nenvironment_variables:\n  MARKS: {tmp_path / 'marks'}",
        program_arguments=arguments,
    )


SERIAL = [f"f{i:03d}.txt line {i}" for i in range(N_FILES)]


def tries(run_dir: Path) -> dict[int, list[tuple[str, str]]]:
    """(try, status) of each mini-batch, from the job report."""
    report = run_dir / "logs/sys/job_report/processed_mini-batches.csv"
    found: dict[int, list[tuple[str, str]]] = {}
    for row in csv.DictReader(report.open()):
        found.setdefault(int(row["Mini-batch Id"]), []).append((row["Try"], row["Status"]))
    return {mb: sorted(t) for mb, t in sorted(found.items())}


def test_a_worker_batch_job_cancelled_in_the_middle(slurm, tmp_path):
    """`scancel` of the batch job running mini-batch 2: the job completes on the other batch
    job, mini-batch 2 retried, the output the serial reference, the queue empty at the end."""
    from daskprs.api import run_job

    job = slurm_job(tmp_path, victim=2, walltime="00:05:00", size="scale: 2")
    victim = tmp_path / "marks" / "victim"
    box: dict[str, float] = {}

    def cancel() -> None:
        job_id = poll_for(lambda: victim.exists() and victim.read_text(), timeout=120)
        box["cancelled"] = time.monotonic()
        slurm.run("scancel", job_id)

    killer = threading.Thread(target=cancel, daemon=True)
    killer.start()
    lines: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", echo=lines.append)
    ended = time.monotonic()
    killer.join(timeout=5)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == SERIAL
    found = tries(tmp_path / "run")
    print(f"tries: {found}; recovered {ended - box['cancelled']:.1f} s after the scancel")
    assert found[2][-1][1] == "RUN_DONE" and len(found[2]) == 2, found
    assert all(t == [("1", "RUN_DONE")] for mb, t in found.items() if mb != 2), found
    poll_for(lambda: not slurm.jobs(), timeout=30, interval=0.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_ends_the_run_and_cancels_its_batch_jobs(slurm, tmp_path, sig):
    """Ctrl-C (or SIGTERM) of `daskprs run` while a batch job runs a mini-batch: exit 130 with
    the resume hint, as on the embedded cluster (dask_jobqueue, imported to start the cluster,
    sets its own SIGINT handler: daskprs keeps its own), and no batch job left in the queue."""
    job = slurm_job(tmp_path, victim=0, walltime="00:05:00", size="scale: 2")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", str(run_dir)],
        env=slurm.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # pytest may run in the background, where the shell started it ignoring SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        victim = tmp_path / "marks" / "victim"
        poll_for(lambda: victim.exists() or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.communicate()[1]  # it ended before: how
        assert slurm.jobs()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert f"daskprs run --resume {run_dir}" in err, err
    assert "internal error" not in err, err
    poll_for(lambda: not slurm.jobs(), timeout=30, interval=0.2)


def test_an_interrupt_while_the_batch_jobs_wait_in_the_queue(slurm, tmp_path):
    """Ctrl-C while the cluster is still starting (its batch jobs pending behind another job
    that holds the node): the run ends at once with exit 130, without waiting for a first
    worker, and cancels its pending batch jobs."""
    blocker = slurm.run("sbatch", "--parsable", "-c", "2", "-o", "/dev/null", "--wrap", "sleep 300")
    assert blocker.returncode == 0, blocker.stderr
    blocker_id = blocker.stdout.strip().split(";")[0]
    try:
        poll_for(
            lambda: slurm.run("squeue", "-h", "-j", blocker_id, "-o", "%t").stdout.strip() == "R",
            timeout=30,
            interval=0.2,
        )
        job = slurm_job(tmp_path, victim=0, walltime="00:05:00", size="scale: 2")
        proc = subprocess.Popen(
            [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", str(tmp_path / "run")],
            env={**slurm.env, "DASKPRS_CLUSTER_TIMEOUT": "120"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            poll_for(lambda: len(slurm.jobs()) == 3, timeout=60, interval=0.2)  # 2 pending
            interrupted = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
            took = time.monotonic() - interrupted
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 130, err
        assert took < 30, f"the run took {took:.0f} s to end"
        poll_for(lambda: slurm.jobs() == [blocker_id], timeout=30, interval=0.2)
    finally:
        slurm.run("scancel", blocker_id)
        poll_for(lambda: not slurm.jobs(), timeout=30, interval=0.2)


def test_a_worker_batch_job_that_reaches_its_walltime(slurm, tmp_path):
    """Workers of a one-minute walltime; mini-batch 0's first try outlasts it. Slurm ends the
    batch job; adapt() starts another; the job completes with the serial output."""
    from daskprs.api import run_job

    job = slurm_job(
        tmp_path,
        victim=0,
        walltime="00:01:00",
        size="adapt: {minimum_jobs: 1, maximum_jobs: 1}",
        arguments="--run_invocation_timeout 200",
    )
    started = time.monotonic()
    result = run_job(job, run_dir=tmp_path / "run", echo=lambda line: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == SERIAL
    found = tries(tmp_path / "run")
    print(f"tries: {found}; ran {time.monotonic() - started:.1f} s")
    assert len(found[0]) == 2 and found[0][-1][1] == "RUN_DONE", found
    poll_for(lambda: not slurm.jobs(), timeout=30, interval=0.2)


def _recipes(cls: str) -> list[tuple[str, dict]]:
    """The ``computes:`` entries of docs/clusters.md whose class is ``cls``."""
    import re

    import yaml

    page = (Path(__file__).resolve().parents[2] / "docs" / "clusters.md").read_text()
    found = []
    for block in re.findall(r"```yaml\n(.*?)```", page, flags=re.S):
        for name, entry in (yaml.safe_load(block) or {}).get("computes", {}).items():
            if isinstance(entry, dict) and entry.get("class") == cls:
                found.append((name, entry))
    return found


@pytest.mark.parametrize("cls", ["dask_jobqueue.SLURMCluster", "dask_jobqueue.PBSCluster"])
def test_the_documented_jobqueue_recipes_make_batch_scripts(cls, tmp_path):
    """Each Slurm and PBS recipe of docs/clusters.md is taken by dask-jobqueue as written: the
    batch script it would submit asks for the recipe's queue, and for what `adapt`/`scale`
    give, the cluster's methods take them. No Slurm or PBS needed: nothing is submitted."""
    why = _unavailable()
    if why is not None and "dask-jobqueue" in why:
        pytest.skip(why)
    from daskprs.execute.cluster import _cluster_class
    from daskprs.job.model import ClusterSpec

    recipes = _recipes(cls)
    assert recipes, f"docs/clusters.md has no {cls} recipe"
    for name, entry in recipes:
        spec = ClusterSpec(name=name, cls=cls, kwargs=entry.get("kwargs", {}))
        kwargs = dict(spec.kwargs)
        # nothing listens anywhere but here
        kwargs["scheduler_options"] = {"host": "127.0.0.1", "dashboard_address": ":0"}
        kwargs["log_directory"] = str(tmp_path / "logs")  # made as the cluster is
        cluster = _cluster_class(spec)(**kwargs)
        try:
            script = cluster.job_script()
            assert ("#SBATCH" if "SLURM" in cls else "#PBS") in script, script
            assert str(entry["kwargs"].get("queue", "")) in script, script
            assert callable(cluster.adapt) and callable(cluster.scale)
        finally:
            cluster.close()
