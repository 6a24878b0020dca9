"""A new step's entry-script processes, started by the driver before the embedded cluster's
workers exist, taken by them, and stopped when no worker took them."""

from __future__ import annotations

import contextlib
import os

import pytest
from conftest import make_files, output_of, poll_for, write_job

from daskprs.api import run_job
from daskprs.execute.context import step_context
from daskprs.execute.warm import WarmSlots, take
from daskprs.job.load import load_job
from daskprs.rundir import RunDir
from daskprs.settings import EnvSettings

SCRIPT = """
import os

def init():
    open(os.path.join(os.environ["MARKS"], f"init-{os.getpid()}"), "w").close()

def run(mini_batch):
    return [f"{os.path.basename(p)} {os.getpid()}" for p in mini_batch]

def shutdown():
    open(os.path.join(os.environ["MARKS"], f"shutdown-{os.getpid()}"), "w").close()
"""


def marked(marks, kind: str) -> set[int]:
    return {int(n.split("-")[1]) for n in os.listdir(marks) if n.startswith(f"{kind}-")}


def marked_job(tmp_path, files: int, script: str = SCRIPT):
    """A job of ``script`` over ``files`` files in ``./data`` (an empty folder for 0), its
    processes' marks in ``./marks``: the job file and the marks folder."""
    if files:
        make_files(tmp_path / "data", files)
    else:
        (tmp_path / "data").mkdir()
    marks = tmp_path / "marks"
    marks.mkdir()
    path = write_job(
        tmp_path,
        script,
        input_yaml="type: uri_folder\npath: ./data",
        extra=f"environment_variables:\n  MARKS: {marks}",
    )
    return path, marks


def entry_script_processes() -> list:
    """This test's entry-script processes still running."""
    import psutil

    return [
        p
        for p in psutil.Process().children(recursive=True)
        if "daskprs.execute.child" in " ".join(p.cmdline())
    ]


@pytest.fixture
def job(tmp_path):
    return marked_job(tmp_path, 8)


@pytest.mark.slow
def test_the_embedded_clusters_processes_run_init_before_the_cluster_starts(
    job, tmp_path, monkeypatch
):
    """On the embedded cluster a step's processes are started once it is planned: both have
    run init() before the cluster is even opened, and they are the ones that run the tries."""
    import daskprs.pipeline as pipeline

    path, marks = job
    opened = pipeline.open_cluster
    seen_at_open: list[set[int]] = []

    @contextlib.contextmanager
    def open_after_init(**kwargs):
        # entered in the thread that starts the cluster: without the processes started
        # first this waits in vain, and finds none
        poll_for(lambda: len(marked(marks, "init")) == 2, timeout=60)
        seen_at_open.append(marked(marks, "init"))
        with opened(**kwargs) as handle:
            yield handle

    monkeypatch.setattr(pipeline, "open_cluster", open_after_init)
    result = run_job(path, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert result.ok, result.failure
    assert len(seen_at_open) == 1 and len(seen_at_open[0]) == 2
    ran = {int(line.split()[1]) for line in output_of(tmp_path / "run").read_text().splitlines()}
    assert ran <= seen_at_open[0]  # no other process was started for the tries
    assert marked(marks, "init") == marked(marks, "shutdown") == seen_at_open[0]


def test_slots_no_worker_took_are_stopped_with_their_shutdown(job, tmp_path, monkeypatch):
    path, marks = job
    monkeypatch.setenv("MARKS", str(marks))
    step = load_job(path).steps[0]
    ctx = step_context(
        step,
        RunDir(str(tmp_path / "run")),
        slots=2,
        local=True,
        tables=False,
        settings=EnvSettings(),
    )
    warm = WarmSlots(ctx, 2)
    taken = take(ctx.token, 1)
    assert taken is not None and take(ctx.token, 1) is None  # once
    try:
        assert poll_for(lambda: len(marked(marks, "init")) == 2, timeout=60)
        warm.close()
        assert marked(marks, "shutdown") == marked(marks, "init") - {taken.proc.pid}
        assert taken.alive  # a worker's now: not the warm slots' to stop
    finally:
        taken.close()
    assert marked(marks, "shutdown") == marked(marks, "init")


MISSING_IMPORT = """
import os
open(os.path.join(os.environ["MARKS"], f"started-{os.getpid()}"), "w").close()
import no_such_package_here

def run(mini_batch):
    return mini_batch
"""


def test_a_script_that_imports_what_is_missing_stops_the_processes_started_meanwhile(tmp_path):
    """The import check runs while the step's processes start: when it fails, the job stops
    with its message and the processes it started are gone."""
    from daskprs.errors import UserInputError

    path, _ = marked_job(tmp_path, 4, MISSING_IMPORT)
    with pytest.raises(UserInputError, match=r"no_such_package_here \(line 4\)"):
        run_job(path, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert entry_script_processes() == []  # the processes started for the step are all gone


def test_a_file_lists_processes_start_before_it_is_planned(job, tmp_path, monkeypatch):
    """A file list's mini-batches are files whatever its plan holds: its processes start
    (and run init()) before the step is planned, while its input is listed."""
    import daskprs.pipeline as pipeline

    path, marks = job
    planned = pipeline.plan_step
    seen_at_plan: list[set[int]] = []

    def plan_after_init(step):
        # without the processes started first this waits in vain
        poll_for(lambda: len(marked(marks, "init")) == 2, timeout=60)
        seen_at_plan.append(marked(marks, "init"))
        return planned(step)

    monkeypatch.setattr(pipeline, "plan_step", plan_after_init)
    result = run_job(path, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert result.ok, result.failure
    assert len(seen_at_plan) == 1 and len(seen_at_plan[0]) == 2
    ran = {int(line.split()[1]) for line in output_of(tmp_path / "run").read_text().splitlines()}
    assert ran <= seen_at_plan[0]
    assert marked(marks, "shutdown") == seen_at_plan[0]


LOUD_INIT = SCRIPT.replace(
    "def init():\n", "def init():\n    print('loading the model', flush=True)\n"
)


def test_a_plan_that_fails_ends_the_processes_started_before_it(tmp_path, monkeypatch):
    """An input that gives no mini-batches (an empty folder) fails the step as before. The
    processes started meanwhile ran init() (it printed) but never a try: they are killed (no
    shutdown()), their logs lose what they wrote, and the run stays one that never began
    (the same run directory takes the next run)."""
    import daskprs.pipeline as pipeline
    from daskprs.errors import PlanningError

    path, marks = marked_job(tmp_path, 0, LOUD_INIT)
    planned = pipeline.plan_step

    def plan_after_init(step):
        poll_for(lambda: len(marked(marks, "init")) == 2, timeout=60)
        return planned(step)

    monkeypatch.setattr(pipeline, "plan_step", plan_after_init)
    with pytest.raises(PlanningError, match="data"):
        run_job(path, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert entry_script_processes() == []
    assert len(marked(marks, "init")) == 2 and marked(marks, "shutdown") == set()
    logs = [p for p in (tmp_path / "run" / "logs").rglob("*") if p.is_file()]
    assert not any("loading the model" in p.read_text() for p in logs)
    make_files(tmp_path / "data", 2)
    result = run_job(path, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert result.ok, result.failure
    stdout = (tmp_path / "run" / "logs" / "user" / "stdout").rglob("*.txt")
    assert sum(p.read_text().count("loading the model") for p in stdout) == 2  # this run's
