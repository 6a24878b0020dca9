"""daskprs.map_batches on the embedded cluster: a user's Dask DataFrame or bag, run through
the same slots, retries, timeouts, budgets and ledger as a job file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import dask.bag as db
import dask.dataframe as dd
import pandas as pd
import pytest

import daskprs
from daskprs.errors import JobFailed
from daskprs.results.ledger import read_ledger
from daskprs.testing import poll_for

pytestmark = pytest.mark.slow


def quiet(_line: str) -> None:
    pass


def frame(n: int = 60, npartitions: int = 6) -> dd.DataFrame:
    pdf = pd.DataFrame({"x": range(n), "name": [f"r{i}" for i in range(n)]})
    pdf.index = pdf.index + 1000  # an index of the user's own, kept through the run
    return dd.from_pandas(pdf, npartitions=npartitions, sort=True)


def tries(run_dir, mb: int) -> list[str]:
    path = os.path.join(run_dir, "steps", "map_batches", "ledger.jsonl")
    out = []
    for line in open(path, encoding="utf-8"):
        event = json.loads(line)
        if event.get("event") == "try" and event["record"]["mb"] == mb:
            out.append(event["record"]["status"])
    return out


def test_a_dataframe_comes_back_in_partition_order_with_init_and_context(tmp_path, client):
    ddf = frame()
    factor = {}

    def init():
        factor["value"] = 3  # set in the child process, read by run() there

    def run(df, context):
        return df.assign(
            y=df["x"] * factor["value"],
            partition=context.minibatch_index,
            first_row=context.global_row_index_lower_bound,
        )

    result = daskprs.map_batches(
        ddf, run, init=init, client=client, run_dir=tmp_path / "run", echo=quiet
    )
    assert result.ok and result.status == "succeeded", result.failure
    assert result.summary["done"] == 6 and result.summary["succeeded_items"] == 60
    assert result.failed == []
    out = result.output
    assert isinstance(out, dd.DataFrame) and out.npartitions == 6
    got = out.compute(scheduler="sync")
    expected = ddf.compute()
    assert list(got.index) == list(expected.index)  # partition order, the user's index kept
    assert list(got["y"]) == [3 * x for x in expected["x"]]
    assert list(got["partition"]) == [i // 10 for i in range(60)]
    assert list(got["first_row"]) == [10 * (i // 10) for i in range(60)]
    assert len(result.output_paths) == 6 and all(os.path.isfile(p) for p in result.output_paths)
    assert result.seconds > 0


def test_a_bag_comes_back_in_partition_order_on_the_current_client(tmp_path, client):
    import numpy as np

    bag = db.from_sequence(range(23), npartitions=5)

    marks = str(tmp_path / "marks")
    os.makedirs(marks)

    def run(items):
        assert isinstance(items, list)
        return [{"item": i, "square": i * i} for i in items]

    def shutdown():
        open(os.path.join(marks, f"shutdown-{os.getpid()}"), "w").close()

    with client.as_current():  # client=None: the current client's cluster, not a new one
        result = daskprs.map_batches(
            bag,
            run,
            shutdown=shutdown,
            max_retries=np.int64(1),
            run_dir=tmp_path / "run",
            echo=quiet,
        )
    assert os.listdir(marks)  # shutdown() ran in the entry-script processes before the return
    assert not (tmp_path / "run/logs/user/stdout/node000").exists()
    # a given client's workers are named by their host (this machine's, in memory)
    host = next(iter(client.scheduler_info()["workers"])).split("://")[1].split("/")[0]
    assert (tmp_path / "run/logs/user/stdout" / host.rsplit(":", 1)[0]).is_dir()
    assert result.ok, result.failure
    assert result.summary["total"] == 5
    out = result.output
    assert isinstance(out, db.Bag) and out.npartitions == 5
    assert out.compute(scheduler="sync") == [{"item": i, "square": i * i} for i in range(23)]


def test_failing_partitions_are_retried_then_listed_and_absent(tmp_path, client):
    marks = str(tmp_path / "marks")
    os.makedirs(marks)

    def run(df):
        first = int(df["x"].iloc[0])
        if first in (10, 30):
            raise ValueError(f"cannot score the rows from {first}")
        mark = os.path.join(marks, f"flaky-{first}")
        if first == 50 and not os.path.exists(mark):
            open(mark, "w").close()
            raise RuntimeError("a passing hiccup")
        return df[["x"]]

    result = daskprs.map_batches(
        frame(), run, max_retries=1, client=client, run_dir=tmp_path / "run", echo=quiet
    )
    assert result.ok and result.status == "succeeded with failures"
    assert [f.partition for f in result.failed] == [1, 3]
    assert all(f.tries == 2 and f.status == "RUN_EXCEPTION" for f in result.failed)
    assert "ValueError: cannot score the rows from 10" in result.failed[0].error
    assert "cannot score" in result.failed[0].traceback
    assert tries(result.run_dir, 1) == ["RUN_EXCEPTION", "RUN_EXCEPTION"]
    assert tries(result.run_dir, 5) == ["RUN_EXCEPTION", "RUN_DONE"]  # retried, then fine
    got = result.output.compute(scheduler="sync")
    assert list(got["x"]) == [x for x in range(60) if x // 10 not in (1, 3)]
    assert result.summary["failed_items"] == 20
    jsonl = os.path.join(result.run_dir, "failed_mini_batches.jsonl")
    failed = [json.loads(x) for x in open(jsonl, encoding="utf-8")]
    assert [f["id"] for f in failed] == [1, 3]
    assert failed[0]["inputs"]["partition"] == 1
    html = result._repr_html_()
    assert "succeeded with failures" in html and "cannot score the rows from 30" in html
    assert "ValueError" in (tmp_path / "run/logs/job_result.txt").read_text()
    # status and report read its run directory as a job's (docs/cli.md#status)
    shown = subprocess.run(
        [sys.executable, "-m", "daskprs", "status", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert "map_batches #3  RUN_EXCEPTION after 2 tries" in shown.stdout
    assert "next: map_batches(..., run_dir=<a new folder>)" in shown.stdout
    report = subprocess.run(
        [sys.executable, "-m", "daskprs", "report", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert report.returncode == 0, report.stderr
    assert "cannot score the rows from 30" in (tmp_path / "run/report.html").read_text()


def test_a_hung_run_is_killed_at_the_timeout_and_retried(tmp_path, client):
    marks = str(tmp_path / "marks")
    os.makedirs(marks)

    def run(items):
        mark = os.path.join(marks, "hung")
        if 4 in items and not os.path.exists(mark):
            open(mark, "w").close()
            import time

            time.sleep(3600)
        return [i + 1 for i in items]

    bag = db.from_sequence(range(8), npartitions=4)
    result = daskprs.map_batches(
        bag, run, timeout=2, max_retries=1, client=client, run_dir=tmp_path / "run", echo=quiet
    )
    assert result.ok and result.failed == [], result.failure
    assert tries(result.run_dir, 2) == ["RUN_TIMEOUT", "RUN_DONE"]
    assert result.output.compute(scheduler="sync") == list(range(1, 9))


def test_the_error_threshold_fails_the_run(tmp_path, client):
    def run(df):
        if int(df["x"].iloc[0]) == 20:
            raise ValueError("bad rows")
        return df

    result = daskprs.map_batches(
        frame(),
        run,
        max_retries=0,
        error_threshold=5,
        client=client,
        run_dir=tmp_path / "run",
        echo=quiet,
    )
    assert not result.ok and result.status == "failed"
    assert "over error_threshold (5)" in result.failure
    assert 2 in [f.partition for f in result.failed]
    with pytest.raises(JobFailed, match="error_threshold"):
        result.raise_for_status()
    assert "failed" in result._repr_html_() and "error_threshold" in result._repr_html_()


def test_an_entry_script_path_is_used_as_it_is(tmp_path, client):
    code = tmp_path / "code"
    code.mkdir()
    (code / "helpers.py").write_text("OFFSET = 100\n")
    (code / "score.py").write_text(
        "from helpers import OFFSET\n"
        "state = {}\n"
        "def init():\n"
        "    state['offset'] = OFFSET\n"
        "def run(mini_batch):\n"
        "    if 7 in mini_batch:\n"
        "        raise KeyError('seven')\n"
        "    return [x + state['offset'] for x in mini_batch]\n"
    )
    bag = db.from_sequence(range(9), npartitions=3)
    result = daskprs.map_batches(
        bag,
        entry_script=code / "score.py",
        max_retries=0,
        client=client,
        run_dir=tmp_path / "run",
        echo=quiet,
    )
    assert result.ok
    assert [f.partition for f in result.failed] == [2]
    assert "KeyError: 'seven' (at score.py:7)" in result.failed[0].error
    assert result.output.compute(scheduler="sync") == [100 + i for i in range(6)]


def test_functions_the_child_cannot_import_fail_with_a_clear_error(tmp_path, client, monkeypatch):
    (tmp_path / "only_here.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_here

    result = daskprs.map_batches(
        db.from_sequence(range(4), npartitions=2),
        only_here.run,
        client=client,
        run_dir=tmp_path / "run",
        echo=quiet,
    )
    assert not result.ok
    assert "cannot be loaded in the entry-script process" in result.failure
    assert "only_here" in result.failure


def test_a_second_call_with_the_same_run_dir_runs_only_what_is_not_done(tmp_path, client):
    marks = tmp_path / "marks"
    marks.mkdir()
    calls = str(marks)

    def run(df):
        first = int(df["x"].iloc[0])
        open(os.path.join(calls, f"call-{first}-{os.getpid()}-{id(df)}"), "w").close()
        return df

    ddf = frame()
    run_dir = tmp_path / "run"
    first = daskprs.map_batches(ddf, run, client=client, run_dir=run_dir, echo=quiet)
    assert first.ok
    # nothing left to do: the output is the same and run() is not called again
    before = sorted(os.listdir(marks))
    again = daskprs.map_batches(ddf, run, client=client, run_dir=run_dir, echo=quiet)
    assert sorted(os.listdir(marks)) == before
    assert again.ok and again.summary["done"] == 6
    assert again.output.compute(scheduler="sync").equals(ddf.compute())
    other = frame(npartitions=3)
    with pytest.raises(daskprs.UserInputError, match="Give a new run_dir"):
        daskprs.map_batches(other, run, client=client, run_dir=run_dir, echo=quiet)
    state = read_ledger(str(run_dir / "steps/map_batches/ledger.jsonl"))
    assert state.sessions == 1  # the second call found everything done and ran nothing


DRIVER = """
import os, sys, time
import dask.dataframe as dd
import pandas as pd
import daskprs

def run(df):
    time.sleep(0.2)
    return df.assign(y=df["x"] + 1)

if __name__ == "__main__":
    ddf = dd.from_pandas(pd.DataFrame({"x": range(40)}), npartitions=20)
    daskprs.map_batches(ddf, run, run_dir=sys.argv[1], echo=print)
"""


def done(run_dir) -> set[int]:
    state = read_ledger(str(run_dir / "steps/map_batches/ledger.jsonl"))
    return {mb for mb, e in state.entries.items() if e.state == "DONE"}


def test_after_an_interrupt_a_second_call_runs_only_the_rest(tmp_path, client):
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(run_dir)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # SIGINT at its default even where pytest runs with it ignored (bash's background jobs)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        poll_for(lambda: (run_dir / "steps/map_batches/ledger.jsonl").exists(), timeout=120)
        poll_for(lambda: len(done(run_dir)) >= 5, timeout=120)
        proc.send_signal(signal.SIGINT)  # Ctrl-C, to the driver only
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Interrupted: map_batches was interrupted" in err
    assert f"Continue with map_batches(..., run_dir='{run_dir}')" in err
    before = done(run_dir)
    assert 5 <= len(before) < 20
    calls = tmp_path / "calls"
    calls.mkdir()
    where = str(calls)

    def run(df):
        open(os.path.join(where, str(int(df["x"].iloc[0]) // 2)), "w").close()
        return df.assign(y=df["x"] + 1)

    ddf = dd.from_pandas(pd.DataFrame({"x": range(40)}), npartitions=20)
    result = daskprs.map_batches(ddf, run, client=client, run_dir=run_dir, echo=quiet)
    assert result.ok and result.summary["done"] == 20, result.failure
    assert {int(n) for n in os.listdir(calls)} == set(range(20)) - before
    got = result.output.compute(scheduler="sync")
    assert list(got["y"]) == list(range(1, 41))


def test_a_failure_names_the_users_function_and_file_not_daskprs(tmp_path, client):
    def score(df):
        raise ValueError("no score for these rows")

    result = daskprs.map_batches(
        frame(), score, max_retries=0, client=client, run_dir=tmp_path / "run", echo=quiet
    )
    failed = result.failed[0]
    assert "(at test_map_batches.py:" in failed.error
    assert failed.traceback.startswith("Traceback (most recent call last):")
    assert "in score" in failed.traceback
    assert "daskprs/execute" not in failed.traceback


def test_on_the_embedded_cluster_dask_and_daskprs_log_to_the_runs_log_file(tmp_path):
    from distributed import default_client

    with pytest.raises(ValueError):  # no current client: map_batches starts its own cluster
        default_client()
    result = daskprs.map_batches(
        db.from_sequence(range(6), npartitions=2),
        lambda items: [i + 1 for i in items],
        run_dir=tmp_path / "run",
        echo=quiet,
    )
    assert result.ok, result.failure
    assert result.output.compute(scheduler="sync") == [i + 1 for i in range(6)]
    log = tmp_path / "run/logs/sys/daskprs.log"
    assert log.is_file()  # the embedded workers' Dask warnings would go there too
    assert (tmp_path / "run/logs/user/stdout/node000").is_dir()  # the embedded cluster ran it
