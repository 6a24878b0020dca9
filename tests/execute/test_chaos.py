"""A chaos run: a few hundred tiny mini-batches on a real `dask scheduler` / `dask worker`
pair while a seeded random killer SIGKILLs Dask worker processes and entry-script processes.
The output must equal the serial reference (the entry script called in this process, one
mini-batch after the other) byte for byte, with no mini-batch lost or written twice."""

from __future__ import annotations

import csv
import importlib.util
import os
import random
import signal
import threading

import psutil
import pytest
from conftest import make_files, output_of, poll_for, report_and_ledger, write_job

from daskprs.api import run_job
from daskprs.results.formatting import format_rows

pytestmark = pytest.mark.slow

SEED = 20261202
N_FILES = 300
KILLS = 10

SCRIPT = """
import os, time

def run(mini_batch, context):
    time.sleep(0.02)
    marks = os.environ.get("RAN_MARKS")  # not set: the serial reference, in the test
    if marks:  # one line a call, appended whole (O_APPEND): what the killer counts
        fd = os.open(marks, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"%d\\n" % context.minibatch_index)
        os.close(fd)
    if context.minibatch_index == LAST:  # the job lasts until the killer is done
        deadline = time.monotonic() + 120
        done = os.environ.get("KILLS_DONE")  # not set: the serial reference, in the test
        while done and not os.path.exists(done) and time.monotonic() < deadline:
            time.sleep(0.05)
    rows = []
    for path in mini_batch:
        with open(path) as f:
            rows.append(f"{context.minibatch_index} {os.path.basename(path)} {f.read().strip()}")
    return rows
""".replace("LAST", str(N_FILES - 1))


def serial_reference(job_dir, files) -> bytes:
    """The rows of every mini-batch (one file each), computed in this process in order."""
    spec = importlib.util.spec_from_file_location("chaos_score", job_dir / "code" / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    class Context:
        def __init__(self, index):
            self.minibatch_index = index

    return b"".join(format_rows(module.run([str(p)], Context(i))) for i, p in enumerate(files))


def ran_count(marks) -> int:
    """The ``run()`` calls the entry-script processes made so far. Not the ledger's DONE
    mini-batches: the records of a task of packed tries come back when the task ends, and
    the task holding the last mini-batch (which waits for the killer) would hold the records
    of the tries before it until that try's timeout."""
    try:
        return marks.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def worker_pids(client) -> list[int]:
    """The pids of the Dask workers that answer (a killed one does not)."""
    try:
        answers = client.run(os.getpid, on_error="return")
    except OSError:  # the scheduler is busy removing a dead worker: ask again
        return []
    return sorted(v for v in answers.values() if isinstance(v, int))


def both_workers(client) -> list[int] | None:
    pids = worker_pids(client)
    return pids if len(pids) == 2 else None


def entry_script_pids(worker: int) -> list[int]:
    try:
        children = psutil.Process(worker).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for child in children:
        try:
            if "daskprs.execute.child" in child.cmdline():
                out.append(child.pid)
        except psutil.Error:
            pass
    return sorted(out)


def test_chaos_run_equals_the_serial_reference(tmp_path, external_cluster):
    from distributed import Client

    address, _ = external_cluster
    files = make_files(tmp_path / "data", N_FILES)
    job = write_job(
        tmp_path,
        SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra="retry_settings:\n  max_retries: 6\n  timeout: 60\n"
        f"environment_variables:\n  KILLS_DONE: {tmp_path / 'kills-done'}\n"
        f"  RAN_MARKS: {tmp_path / 'ran'}",
    )
    run_dir, marks = tmp_path / "run", tmp_path / "ran"
    rng = random.Random(SEED)
    thresholds = sorted(rng.sample(range(10, N_FILES - 20), KILLS))
    box: dict = {}
    runner = threading.Thread(
        target=lambda: box.setdefault(
            "result", run_job(job, run_dir=run_dir, scheduler=address, echo=lambda s: None)
        )
    )
    kills = {"dask worker": 0, "entry-script process": 0}
    with Client(address, timeout="10s") as client:
        runner.start()
        try:
            for threshold in thresholds:
                poll_for(lambda t=threshold: ran_count(marks) >= t or not runner.is_alive(), 120)
                if not runner.is_alive():
                    break
                # both workers up (a killed one is back), so one is always left running
                pids = poll_for(lambda: both_workers(client), 120)
                worker = rng.choice(pids)
                if rng.random() < 0.5:
                    os.kill(worker, signal.SIGKILL)
                    kills["dask worker"] += 1
                else:
                    children = poll_for(lambda w=worker: entry_script_pids(w), 60)
                    os.kill(rng.choice(children), signal.SIGKILL)
                    kills["entry-script process"] += 1
        finally:
            (tmp_path / "kills-done").touch()
            runner.join(timeout=280)
    assert not runner.is_alive()
    result = box["result"]
    assert result.ok, result.failure
    output = output_of(run_dir).read_bytes()
    reference = serial_reference(tmp_path, files)
    assert output == reference
    rows = output.decode().splitlines()
    assert len(rows) == N_FILES
    report = run_dir / "logs/sys/job_report/processed_mini-batches.csv"
    tries = list(csv.DictReader(report.open()))
    died = [t for t in tries if t["Status"] == "PROCESS_DIED"]
    assert sum(kills.values()) == KILLS
    assert died, "no kill landed on a running mini-batch"
    done = [t for t in tries if t["Status"] == "RUN_DONE"]
    assert sorted(int(t["Mini-batch Id"]) for t in done) == list(range(N_FILES))
    report_rows, ledger_tries = report_and_ledger(run_dir)
    assert report_rows == ledger_tries
    print(
        f"\nchaos (seed {SEED}): {kills['dask worker']} Dask workers and "
        f"{kills['entry-script process']} entry-script processes killed, {len(died)} tries "
        f"lost with them and retried, {len(rows)} rows checked against the serial reference"
    )
