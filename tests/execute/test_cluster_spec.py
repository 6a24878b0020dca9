"""``compute: azureml:<name>`` starting the cluster class ``daskprs.yaml`` names."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_files, output_of, poll_for

from daskprs.api import run_job
from daskprs.errors import UserInputError
from daskprs.testing import write_job

SCRIPT = """\
import os


def init():
    pass


def run(mini_batch):
    return [f"{os.path.basename(p)} {os.environ.get('DASK_WORKER_NAME', '?')}" for p in mini_batch]
"""

LOCAL_SPEC = """\
computes:
  gpu-cluster:
    class: distributed.LocalCluster
    kwargs:
      n_workers: 2
      threads_per_worker: 1
      processes: true
      dashboard_address: null
      memory_limit: 0
"""


def spec_job(tmp_path: Path, config: str) -> Path:
    make_files(tmp_path / "data", 6)
    (tmp_path / "daskprs.yaml").write_text(config)
    return write_job(
        tmp_path,
        SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra="compute: azureml:gpu-cluster",
    )


@pytest.mark.slow
def test_a_local_cluster_named_in_the_configuration_runs_the_job(tmp_path):
    job = spec_job(tmp_path, LOCAL_SPEC)
    lines: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", echo=lines.append)
    assert result.ok, result.failure
    rows = output_of(tmp_path / "run").read_text().splitlines()
    assert sorted(r.split()[0] for r in rows) == [f"f{i:03d}.txt" for i in range(6)]
    # the named cluster ran it, not the embedded one (which is not announced as "cluster:")
    assert ": 2 worker slots, started in" in "\n".join(lines)
    assert not any("embedded" in line for line in lines)
    # dashboard_address: null: the scheduler's HTTP server serves no dashboard to link to
    assert not any("Dask dashboard" in line for line in lines)


def test_a_cluster_class_that_cannot_be_imported_is_a_user_error(tmp_path):
    job = spec_job(tmp_path, "computes:\n  gpu-cluster: {class: dask_nowhere.SLURMCluster}\n")
    with pytest.raises(UserInputError) as info:
        run_job(job, run_dir=tmp_path / "run", echo=lambda line: None)
    message = str(info.value)
    assert "computes: gpu-cluster: class dask_nowhere.SLURMCluster" in message
    assert "pip install dask-nowhere" in message


def test_wrong_cluster_arguments_are_a_user_error(tmp_path):
    config = "computes:\n  gpu-cluster:\n    class: distributed.LocalCluster\n"
    config += "    kwargs: {nworkerz: 2}\n"
    job = spec_job(tmp_path, config)
    with pytest.raises(UserInputError) as info:
        run_job(job, run_dir=tmp_path / "run", echo=lambda line: None)
    assert "nworkerz" in str(info.value) and "Fix `kwargs`" in str(info.value)


# Each run() leaves a marker named after its process, and waits (bounded) until markers of
# two processes are there: the job ends quickly only on two workers.
TWO_WORKERS = """\
import os, time


def init():
    pass


def run(mini_batch):
    marks = os.environ["MARKS"]
    open(os.path.join(marks, str(os.getpid())), "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir(marks)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return [f"{os.path.basename(p)} {os.getpid()}" for p in mini_batch]
"""

ADAPTIVE_SPEC = """\
computes:
  gpu-cluster:
    class: distributed.LocalCluster
    kwargs: {n_workers: 1, threads_per_worker: 1, dashboard_address: null, memory_limit: 0}
    adapt: {minimum: 1, maximum: 2, interval: 100ms, target_duration: 0.1s}
"""


@pytest.mark.slow
def test_an_adaptive_local_cluster_grows_with_the_queue(tmp_path):
    """Started with one worker and adapt(maximum=2): the queued mini-batches make it add the
    second worker, which gets work."""
    make_files(tmp_path / "data", 4)
    (tmp_path / "marks").mkdir()
    (tmp_path / "daskprs.yaml").write_text(ADAPTIVE_SPEC)
    job = write_job(
        tmp_path,
        TWO_WORKERS,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra="compute: azureml:gpu-cluster\n"
        f"environment_variables:\n  MARKS: {tmp_path / 'marks'}",
    )
    lines: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", echo=lines.append)
    assert result.ok, result.failure
    assert ": 1 worker slots, started in" in "\n".join(lines)
    rows = [line.split() for line in output_of(tmp_path / "run").read_text().splitlines()]
    assert sorted(name for name, _ in rows) == [f"f{i:03d}.txt" for i in range(4)]
    assert len({pid for _, pid in rows}) == 2


# A cluster module that sets a SIGINT handler as it is imported, as dask_jobqueue's runner does
SIGNAL_SETTING_MODULE = """\
import signal
import sys

signal.signal(signal.SIGINT, lambda *_: sys.exit())

from distributed import LocalCluster as Cluster
"""


@pytest.fixture
def signal_setting_module(tmp_path, monkeypatch):
    """A module ``sigset_cluster_<n>`` (new to this process) that sets SIGINT on import."""
    import signal
    import sys

    name = f"sigset_cluster_{tmp_path.name.replace('-', '_')}"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(SIGNAL_SETTING_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield name
    for sig, handler in before.items():
        signal.signal(sig, handler)
    sys.modules.pop(name, None)


def test_a_cluster_class_is_imported_on_the_callers_thread_keeping_its_signal_handlers(
    signal_setting_module,
):
    """open_cluster imports the class as it is called (LazyCluster calls it on the main
    thread, then starts the cluster in a thread), and the SIGINT handler daskprs relies on for
    exit 130 is the one it had before."""
    import signal
    import sys

    from daskprs.execute.cluster import open_cluster
    from daskprs.job.model import ClusterSpec

    before = signal.getsignal(signal.SIGINT)
    spec = ClusterSpec(name="gpu-cluster", cls=f"{signal_setting_module}.Cluster")
    open_cluster(cluster_spec=spec)  # not entered: nothing starts
    assert signal_setting_module in sys.modules
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_a_cluster_module_that_sets_signals_on_import_runs_the_job(tmp_path, signal_setting_module):
    """The cluster starts in a background thread while the step plans; a module that sets a
    signal handler on import (dask_jobqueue) could not be imported there."""
    import signal

    before = signal.getsignal(signal.SIGINT)
    spec = LOCAL_SPEC.replace("distributed.LocalCluster", f"{signal_setting_module}.Cluster")
    job = spec_job(tmp_path, spec)
    result = run_job(job, run_dir=tmp_path / "run", echo=lambda line: None)
    assert result.ok, result.failure
    assert signal.getsignal(signal.SIGINT) is before


def test_a_cluster_module_that_fails_on_a_thread_is_a_user_error(signal_setting_module):
    """Imported from a thread (run_job called off the main thread), the module's
    signal.signal fails: an exit-2 error saying to import it on the main thread, not an
    internal error."""
    import concurrent.futures

    from daskprs.execute.cluster import _cluster_class
    from daskprs.job.model import ClusterSpec

    spec = ClusterSpec(name="gpu-cluster", cls=f"{signal_setting_module}.Cluster")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with pytest.raises(UserInputError) as info:
            pool.submit(_cluster_class, spec).result()
    assert f"import {signal_setting_module}` there" in str(info.value)


@pytest.mark.slow
def test_a_start_still_waiting_for_its_first_worker_is_cancelled_at_the_end():
    """The run ends (Ctrl-C, a failed step) while the cluster started in advance still waits
    for a first worker (batch jobs queued, pods pending): closing does not wait for that
    worker or the cluster timeout, and the cluster is closed."""
    import time

    from daskprs.execute.cluster import open_cluster
    from daskprs.execute.lazycluster import LazyCluster
    from daskprs.job.model import ClusterSpec
    from daskprs.settings import EnvSettings

    spec = ClusterSpec(
        name="gpu-cluster",
        cls="distributed.LocalCluster",
        kwargs={"n_workers": 0, "dashboard_address": None, "processes": False},
    )
    settings = EnvSettings(cluster_timeout=120)
    lazy = LazyCluster(lambda: open_cluster(cluster_spec=spec, settings=settings), print)
    lazy.prestart()
    starting = lazy._starting
    assert starting is not None
    poll_for(starting.running, timeout=30)
    began = time.monotonic()
    lazy.close()
    assert time.monotonic() - began < 20
    assert starting.done()
