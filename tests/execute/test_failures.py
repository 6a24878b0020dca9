"""Timeouts, dying processes, killed workers and failing init(), end to end."""

from __future__ import annotations

import collections
import csv
import json

import pytest
from conftest import (
    kill_worker_script,
    make_files,
    output_of,
    pid_alive,
    poll_for,
    run_killing_a_worker,
    write_job,
)

from daskprs.api import run_job

pytestmark = pytest.mark.slow


def tries(run_dir):
    path = run_dir / "logs/sys/job_report/processed_mini-batches.csv"
    return list(csv.DictReader(path.open()))


HANG = """
import os, time

def init():
    with open(os.environ["INIT_LOG"], "a") as f:
        f.write(f"{os.getpid()}\\n")

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if "f002.txt" in names:
        time.sleep(3600)
    return names
"""


def test_a_hanging_run_is_killed_retried_then_failed(tmp_path, client):
    make_files(tmp_path / "data", 6)
    init_log = tmp_path / "init.log"
    job = write_job(
        tmp_path,
        HANG,
        input_yaml="type: uri_folder\npath: ./data",
        extra=f"retry_settings:\n  max_retries: 1\n  timeout: 2\n"
        f"environment_variables:\n  INIT_LOG: {init_log}",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok  # no budget set: the job goes on without the hanging mini-batch
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        "f000.txt",
        "f001.txt",
        "f004.txt",
        "f005.txt",
    ]
    rows = [r for r in tries(tmp_path / "run") if r["Mini-batch Id"] == "1"]
    assert [(r["Try"], r["Status"]) for r in rows] == [("1", "RUN_TIMEOUT"), ("2", "RUN_TIMEOUT")]
    # every killed process was replaced, and the replacement ran init() again
    pids = init_log.read_text().split()
    assert len(pids) >= 3 and len(set(pids)) == len(pids)
    for pid in pids:
        poll_for(lambda pid=pid: not pid_alive(int(pid)), timeout=30)
    [failed] = [json.loads(x) for x in (tmp_path / "run/failed_mini_batches.jsonl").open()]
    assert failed["id"] == 1 and failed["status"] == "RUN_TIMEOUT" and failed["tries"] == 2
    assert "timeout of 2 s" in failed["error"]


DIES = """
import os

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if "f003.txt" in names:
        os._exit(9)
    return names
"""


def test_a_process_that_dies_in_run_fails_only_its_mini_batch(tmp_path, client):
    make_files(tmp_path / "data", 6)
    job = write_job(
        tmp_path,
        DIES,
        input_yaml="type: uri_folder\npath: ./data",
        extra="retry_settings:\n  max_retries: 2",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok
    rows = [r for r in tries(tmp_path / "run") if r["Mini-batch Id"] == "1"]
    assert [r["Status"] for r in rows] == ["PROCESS_DIED"] * 3
    assert "exited with code 9" in rows[0]["Error Message"]
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        "f000.txt",
        "f001.txt",
        "f004.txt",
        "f005.txt",
    ]


INIT_FAILS = """
import os

def init():
    raise ImportError("model file missing: /models/m.pkl")

def run(mini_batch):
    return mini_batch
"""


def test_init_failing_everywhere_fails_the_job_with_its_traceback(tmp_path, client):
    make_files(tmp_path / "data", 4)
    job = write_job(tmp_path, INIT_FAILS, input_yaml="type: uri_folder\npath: ./data")
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert not result.ok
    assert "init() failed everywhere" in result.failure
    assert "ImportError: model file missing: /models/m.pkl" in result.failure
    assert "raise ImportError" in result.failure  # the traceback
    statuses = {r["Status"] for r in tries(tmp_path / "run")}
    assert statuses == {"INIT_FAILED"}


INIT_FLAKY = """
import os

def init():
    marker = os.path.join(os.environ["MARKS"], "init-failed-once")
    try:
        open(marker, "x").close()  # only the first process to create it fails
    except FileExistsError:
        return
    raise RuntimeError("transient")

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def test_init_failing_once_does_not_use_a_try(tmp_path, client):
    make_files(tmp_path / "data", 4)
    (tmp_path / "marks").mkdir()
    job = write_job(
        tmp_path,
        INIT_FLAKY,
        input_yaml="type: uri_folder\npath: ./data",
        extra=f"retry_settings:\n  max_retries: 0\nenvironment_variables:\n"
        f"  MARKS: {tmp_path / 'marks'}",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(4)
    ]
    rows = tries(tmp_path / "run")
    assert [r["Status"] for r in rows].count("INIT_FAILED") == 1
    assert all(r["Try"] == "1" for r in rows)


def test_a_worker_killed_mid_job_loses_no_row_and_duplicates_none(tmp_path):
    make_files(tmp_path / "data", 30)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        kill_worker_script(5),
        input_yaml="type: uri_folder\npath: ./data",
        extra=f"retry_settings:\n  max_retries: 1\nenvironment_variables:\n  MARKS: {marks}",
    )
    # a notebook's LocalCluster of worker processes (the embedded cluster's workers are
    # threads of the driver: there the entry-script process is what dies)
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        result = run_killing_a_worker(job, marks, run_dir=tmp_path / "run", client=client)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(30)
    ]
    rows = [r for r in tries(tmp_path / "run") if r["Mini-batch Id"] == "5"]
    assert [(r["Try"], r["Status"]) for r in rows] == [("1", "PROCESS_DIED"), ("2", "RUN_DONE")]
    assert "worker" in rows[0]["Error Message"]


STALL = """
import os, time

def run(mini_batch):
    with open(os.path.join(os.environ["MARKS"], f"{os.getpid()}"), "w"):
        pass
    time.sleep(3600)
"""


def test_progress_timeout_fails_the_job_and_kills_what_runs(tmp_path, client):
    make_files(tmp_path / "data", 4)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        STALL,
        input_yaml="type: uri_folder\npath: ./data",
        # long enough for both children to reach run() on a busy machine before the stop
        program_arguments="--progress_update_timeout 4",
        extra=f"environment_variables:\n  MARKS: {marks}",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert not result.ok
    assert "progress_update_timeout (4 s)" in result.failure
    assert result.steps[0].summary["cancelled"] == 2
    pids = [int(p.name) for p in marks.iterdir()]
    assert pids
    for pid in pids:  # the hung entry-script processes were killed, not left behind
        poll_for(lambda pid=pid: not pid_alive(pid), timeout=30)
    failed = [json.loads(x) for x in (tmp_path / "run/failed_mini_batches.jsonl").open()]
    assert {f["state"] for f in failed} == {"CANCELLED"}


SLOW_TRIES = """
import os, time

def run(mini_batch):
    time.sleep(1.2)  # each try well within the progress timeout, a task of 4 beyond it
    return [os.path.basename(p) for p in mini_batch]
"""


def test_a_packed_task_whose_tries_succeed_is_progress(tmp_path, monkeypatch):
    # The records of a packed task's tries come back when its last try ends: 4 tries of
    # 1.2 s a task returned nothing for 4.8 s, and a 3 s progress timeout failed the job
    # ("no mini-batch finished for 3 s") while a try succeeded every 1.2 s
    from daskprs.execute import runner
    from daskprs.execute.cluster import open_cluster

    monkeypatch.setattr(runner._Packer, "size", property(lambda self: 4))
    monkeypatch.setattr(runner._Packer, "window", property(lambda self: 8))
    make_files(tmp_path / "data", 8)
    job = write_job(
        tmp_path,
        SLOW_TRIES,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        program_arguments="--progress_update_timeout 3",
        max_concurrency=1,
    )
    with open_cluster(n_workers=1) as handle:
        result = run_job(job, run_dir=tmp_path / "run", client=handle.client, echo=print)
    assert result.ok, result.failure
    rows = tries(tmp_path / "run")
    assert sorted(r["Mini-batch Id"] for r in rows) == [str(i) for i in range(8)]
    packs = collections.Counter(
        json.loads(line)["record"]["part"].split(".pack:")[0]
        for line in (tmp_path / "run/steps/score/ledger.jsonl").open()
        if '"try"' in line
    )
    # the first task ran 4 tries (4.8 s), their rows in one pack; then smaller ones (the end)
    assert max(packs.values()) == 4, packs


HOSTILE = """
import os, subprocess, sys, time

def run(mini_batch, context):
    i = context.minibatch_index
    if i == 1:
        for _ in range(4):
            print("x" * 2**19)
    if i == 2:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        open(os.path.join(os.environ["MARKS"], str(child.pid)), "w").close()
    if i == 3:
        sys.exit(3)
    if i == 4:
        raise KeyboardInterrupt
    if i == 5:
        hog = []
        for _ in range(60):
            hog.append(bytearray(10 * 2**20))
            hog[-1][::4096] = b"x" * len(hog[-1][::4096])
            time.sleep(0.02)
        time.sleep(3600)
    if i == 6:
        return list(range(100_000))
    return [os.path.basename(p) for p in mini_batch]
"""


def test_misbehaving_scripts_are_contained_to_their_mini_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("DASKPRS_USER_LOG_LIMIT", "256KiB")
    monkeypatch.setenv("DASKPRS_CHILD_MEMORY_LIMIT", "150MiB")
    make_files(tmp_path / "data", 8)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        HOSTILE,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"retry_settings:\n  max_retries: 0\nenvironment_variables:\n  MARKS: {marks}",
    )
    run_dir = tmp_path / "run"
    result = run_job(job, run_dir=run_dir, workers=2, echo=lambda s: None)
    assert result.ok, result.failure  # no budget set: the others go on
    status = {int(r["Mini-batch Id"]): r for r in tries(run_dir)}
    assert {i: status[i]["Status"] for i in status} == {
        0: "RUN_DONE",
        1: "RUN_DONE",
        2: "RUN_DONE",
        3: "RUN_EXCEPTION",
        4: "RUN_EXCEPTION",
        5: "PROCESS_DIED",
        6: "RUN_DONE",
        7: "RUN_DONE",
    }
    assert status[3]["Error Message"].startswith("SystemExit: 3")
    assert status[4]["Error Message"].startswith("KeyboardInterrupt")
    assert "memory limit of 150 MiB" in status[5]["Error Message"]
    assert status[6]["Succeeded"] == "100000"
    rows = output_of(run_dir).read_text().splitlines()
    assert rows[:3] == ["f000.txt", "f001.txt", "f002.txt"]
    assert rows[3:-1] == [str(i) for i in range(100_000)] and rows[-1] == "f007.txt"
    failed = [json.loads(x)["id"] for x in (run_dir / "failed_mini_batches.jsonl").open()]
    assert sorted(failed) == [3, 4, 5]
    stdout = [p.read_bytes() for p in (run_dir / "logs/user/stdout").rglob("*.txt")]
    assert any(b"reached its limit of 262144 bytes" in s for s in stdout)
    assert all(len(s) < 262144 + 1000 for s in stdout)
    [helper] = [int(p.name) for p in marks.iterdir()]
    poll_for(lambda: not pid_alive(helper), timeout=30)  # ended with its process
