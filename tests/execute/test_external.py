"""Failure handling on a real `dask scheduler` + `dask worker --nworkers 2 --nthreads 1`.

There, unlike on the embedded cluster, the scheduler keeps Dask's default
``allowed-failures`` (3): a task whose worker died is run again by Dask itself. The try's
claim must make that second run do nothing, and the supervisor counts one failed try.
"""

from __future__ import annotations

import csv
import os

import pytest
from conftest import (
    can_hide_folders,
    external_cluster_at,
    kill_worker_script,
    make_files,
    output_of,
    run_killing_a_worker,
    write_job,
)

from daskprs.api import run_job
from daskprs.testing import flaky_script

pytestmark = pytest.mark.slow

# Run on a worker: the code folders it was sent (a lambda, so that it is pickled by value).
_code_dirs = lambda: __import__("daskprs.execute.codefolder", fromlist=["_"])._CODE_DIRS  # noqa: E731


def tries(run_dir, mb: str):
    """(try, status) of mini-batch ``mb``; an init() failure is not a try of its own."""
    path = run_dir / "logs/sys/job_report/processed_mini-batches.csv"
    return [
        (r["Try"], r["Status"])
        for r in csv.DictReader(path.open())
        if r["Mini-batch Id"] == mb and r["Status"] != "INIT_FAILED"
    ]


MIXED = """
import os, time

def init():
    if os.environ.get("INIT_FAILS_ONCE"):
        marker = os.path.join(os.environ["MARKS"], "init")
        try:
            open(marker, "x").close()  # only the first process to create it fails
        except FileExistsError:
            return
        raise RuntimeError("init fails once")

def run(mini_batch, context):
    i = context.minibatch_index
    marker = os.path.join(os.environ["MARKS"], str(i))
    first = not os.path.exists(marker)
    open(marker, "a").close()
    if i == 1:
        raise ValueError("always bad")
    if i == 2 and first:
        time.sleep(3600)
    if i == 3 and first:
        os._exit(5)
    if i == 4 and first:
        raise KeyError("first try only")
    return [os.path.basename(p) for p in mini_batch]
"""


def test_failures_on_an_external_cluster(tmp_path, external_cluster):
    address, _ = external_cluster
    make_files(tmp_path / "data", 12)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        MIXED,
        input_yaml="type: uri_folder\npath: ./data",
        extra=f"retry_settings:\n  max_retries: 1\n  timeout: 2\n"
        f"environment_variables:\n  MARKS: {marks}\n  INIT_FAILS_ONCE: '1'",
    )
    result = run_job(job, run_dir=tmp_path / "run", scheduler=address, echo=lambda s: None)
    assert result.ok, result.failure
    run_dir = tmp_path / "run"
    assert tries(run_dir, "1") == [("1", "RUN_EXCEPTION"), ("2", "RUN_EXCEPTION")]
    assert tries(run_dir, "2") == [("1", "RUN_TIMEOUT"), ("2", "RUN_DONE")]
    assert tries(run_dir, "3") == [("1", "PROCESS_DIED"), ("2", "RUN_DONE")]
    assert tries(run_dir, "4") == [("1", "RUN_EXCEPTION"), ("2", "RUN_DONE")]
    expected = [f"f{i:03d}.txt" for i in range(12) if i not in (2, 3)]
    assert output_of(run_dir).read_text().splitlines() == expected
    statuses = (run_dir / "logs/sys/job_report/processed_mini-batches.csv").read_text()
    assert statuses.count("INIT_FAILED") == 1


def test_a_worker_killed_on_an_external_cluster_runs_no_try_twice(tmp_path, external_cluster):
    address, _ = external_cluster
    make_files(tmp_path / "data", 20)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        kill_worker_script(4),
        input_yaml="type: uri_folder\npath: ./data",
        extra=f"retry_settings:\n  max_retries: 2\nenvironment_variables:\n  MARKS: {marks}",
    )
    result = run_killing_a_worker(job, marks, run_dir=tmp_path / "run", scheduler=address)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(20)
    ]
    [(try1, status1), *rest] = tries(tmp_path / "run", "4")
    assert (try1, status1) == ("1", "PROCESS_DIED")
    assert rest[-1][1] == "RUN_DONE"
    # the claim of try 1 exists once; no try of mini-batch 4 ran twice
    claims = sorted(p.name for p in (tmp_path / "run/steps/score/claims").glob("00004.*"))
    assert len(claims) == len(rest) + 1


def test_every_first_try_fails_on_an_external_cluster(tmp_path, external_cluster):
    address, _ = external_cluster
    make_files(tmp_path / "data", 10)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        flaky_script(),
        input_yaml="type: uri_folder\npath: ./data",
        extra=f"environment_variables:\n  MARKS: {marks}",
    )
    result = run_job(job, run_dir=tmp_path / "run", scheduler=address, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(10)
    ]
    for mb in range(5):
        assert tries(tmp_path / "run", str(mb)) == [("1", "RUN_EXCEPTION"), ("2", "RUN_DONE")]


SIBLING = """
import os

with open(os.path.join(os.path.dirname(__file__), "labels.txt")) as f:
    LABEL = f.read().strip()

def run(mini_batch):
    return [f"{os.path.basename(p)} {LABEL}" for p in mini_batch]
"""


@pytest.mark.skipif(not can_hide_folders(), reason="needs a mount namespace (unshare)")
def test_code_folder_is_shipped_to_workers_that_cannot_see_it(tmp_path):
    make_files(tmp_path / "data", 5)
    job = write_job(tmp_path, SIBLING, input_yaml="type: uri_folder\npath: ./data")
    (tmp_path / "code" / "labels.txt").write_text("shipped\n")
    with external_cluster_at(tmp_path, hide=tmp_path / "code") as address:
        lines: list[str] = []
        result = run_job(job, run_dir=tmp_path / "run", scheduler=address, echo=lines.append)
        from distributed import Client

        with Client(address, timeout="10s") as c:
            # the code folder really is invisible to the workers; the shipped copy is gone
            script = str(tmp_path / "code" / "score.py")
            assert set(c.run(os.path.exists, script).values()) == {False}
            assert not any(c.run(_code_dirs).values())
    assert result.ok, result.failure
    assert any("shipping it to them" in line for line in lines)
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt shipped" for i in range(5)
    ]


LINGER = """
import os, time

def run(mini_batch, context):
    if context.minibatch_index == 0:
        with open(os.path.join(os.environ["MARKS"], "child.pid.tmp"), "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.path.join(os.environ["MARKS"], "child.pid.tmp"),
                  os.path.join(os.environ["MARKS"], "child.pid"))
        time.sleep(3600)
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_killed_driver_leaves_no_entry_script_running_on_the_workers(tmp_path, monkeypatch):
    """The workers outlive the driver; its entry-script children must not (the lease)."""
    import signal
    import subprocess
    import sys

    from conftest import pid_alive

    from daskprs.testing import poll_for

    monkeypatch.setenv("DASKPRS_LEASE_SECONDS", "2")  # for the workers and the driver
    marks = tmp_path / "marks"
    marks.mkdir()
    make_files(tmp_path / "data", 4)
    job = write_job(
        tmp_path,
        LINGER,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  MARKS: {marks}\n",
    )
    with external_cluster_at(tmp_path) as address:
        args = ["run", str(job), "--run-dir", str(tmp_path / "run"), "--scheduler", address]
        driver = subprocess.Popen(
            [sys.executable, "-m", "daskprs", *args],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            pid_file = marks / "child.pid"
            child = int(poll_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=120))
            assert (tmp_path / "run/steps/score/lease").exists()
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        assert pid_alive(child)  # the child belongs to the worker, not to the driver
        poll_for(lambda: not pid_alive(child), timeout=60)


LINGER_ONCE = """
import os, time

def run(mini_batch, context):
    marks = os.environ["MARKS"]
    first = os.path.join(marks, "child.pid")
    if context.minibatch_index == 0 and not os.path.exists(first):
        with open(first + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(first + ".tmp", first)
        time.sleep(3600)  # until something ends this process
    if context.minibatch_index == 0:
        # the resumed session's try waits for the killed session's process to be gone (at
        # most two minutes, far less than the lease), and says whether it went
        old = int(open(first).read())
        deadline = time.monotonic() + 120
        while os.path.exists(f"/proc/{old}") and time.monotonic() < deadline:
            time.sleep(0.1)
        gone = not os.path.exists(f"/proc/{old}")
        open(os.path.join(marks, "gone" if gone else "still-there"), "w").close()
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_resumed_step_ends_the_killed_drivers_processes_before_its_lease_expires(
    tmp_path, monkeypatch
):
    """A resume writes the step's lease with its own session: the killed session's slot pools,
    still on the workers, see another driver's lease and end their children then, not a whole
    lease later."""
    import signal
    import subprocess
    import sys

    from daskprs.api import resume_job
    from daskprs.testing import poll_for

    monkeypatch.setenv("DASKPRS_LEASE_SECONDS", "600")  # expiry cannot be what ends them
    marks = tmp_path / "marks"
    marks.mkdir()
    make_files(tmp_path / "data", 2)
    job = write_job(
        tmp_path,
        LINGER_ONCE,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  MARKS: {marks}\n",
    )
    run = tmp_path / "run"
    with external_cluster_at(tmp_path) as address:
        driver = subprocess.Popen(
            [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", str(run),
             "--scheduler", address],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            poll_for(lambda: (marks / "child.pid").exists(), timeout=120)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        result = resume_job(run, scheduler=address, echo=lambda s: None)
    assert result.ok, result.failure
    assert (marks / "gone").exists() and not (marks / "still-there").exists()
    # ended by the resumed driver's lease (not by Dask forgetting the killed driver's tasks)
    assert "another driver resumed the step" in (tmp_path / "cluster.log").read_text()
