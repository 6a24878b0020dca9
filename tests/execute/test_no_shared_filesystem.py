"""``--staging URL``: workers that share no filesystem with the driver.

The store itself (claims by exclusive create, hand-backs taken once, logs pulled once), then
whole jobs: on the embedded cluster with staging on a moto S3 server on 127.0.0.1, and on real
``dask scheduler``/``dask worker`` processes whose workers run in their own mount namespace
with an empty tmpfs over the driver's folder (they cannot see the job, the code or the run
directory), inputs and staging on the moto server.
"""

from __future__ import annotations

import errno
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import fsspec
import pytest
from conftest import (
    can_hide_folders,
    external_cluster_at,
    kill_worker_script,
    make_files,
    output_of,
    poll_for,
    run_killing_a_worker,
)
from fsspec.implementations.memory import MemoryFileSystem

from daskprs.api import run_job
from daskprs.errors import UserInputError
from daskprs.execute import store as store_module
from daskprs.execute.child import ChildConfig
from daskprs.execute.stagedlogs import pull_logs
from daskprs.execute.store import StepStore, staging_root
from daskprs.results.ledger import read_ledger
from daskprs.results.packs import is_pack_ref
from daskprs.rundir import RunDir
from daskprs.testing import write_job

# -- the store ---------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return StepStore(str(tmp_path / "step"))
    request.getfixturevalue("s3")
    return StepStore("s3://out/staging/run-1/steps/score")


def test_a_claim_is_created_once(store):
    assert store.create("claims/00001.s0t1", b"me") is True
    assert store.create("claims/00001.s0t1", b"another") is False
    assert store.get("claims/00001.s0t1") == b"me"
    assert store.exists("claims/00001.s0t1")
    assert not store.exists("claims/00002.s0t1")
    assert store.check() is None


# -- local claims: hard links to a template of the process ------------------------------------

_ME = b"host-a 4242\n"


def _templates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".claimant-"))


def _failing_link(monkeypatch, code: int, times: int | None) -> list[str]:
    """``os.link`` raising OSError(``code``) ``times`` times (None: always), then linking; the
    sources it was called with."""
    real = os.link
    calls: list[str] = []

    def link(src, dst, *args, **kwargs):
        calls.append(src)
        if times is None or len(calls) <= times:
            raise OSError(code, os.strerror(code))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "link", link)
    return calls


def test_a_local_claim_is_a_hard_link_to_a_template_no_reader_takes_for_a_claim(tmp_path):
    store = StepStore(str(tmp_path / "step"))
    claims = tmp_path / "step" / "claims"
    assert store.create("claims/00001.s0t1", _ME) is True
    assert store.create("claims/00001.s0t1", _ME) is False
    assert store.get("claims/00001.s0t1") == _ME
    (template,) = _templates(claims)
    claim = claims / "00001.s0t1"
    assert claim.stat().st_nlink >= 2
    assert os.path.samestat(claim.stat(), template.stat())
    assert template.read_bytes() == _ME
    # no claim or part name, and what globs the claims of a mini-batch skips it
    assert not re.fullmatch(r"\d{5}\..*", template.name) and template.name.startswith(".")
    assert [p.name for p in claims.glob("00001.*")] == ["00001.s0t1"]
    assert [os.path.basename(p) for p in glob.glob(str(claims / "*"))] == ["00001.s0t1"]
    # other bytes: their own template, and the claim there stays as it was
    assert store.create("claims/00001.s0t1", b"host-b 7\n") is False
    assert store.get("claims/00001.s0t1") == _ME
    assert sorted(p.read_bytes() for p in _templates(claims)) == [b"host-a 4242\n", b"host-b 7\n"]


def test_the_claims_of_a_process_share_one_template_and_a_full_one_is_replaced(
    tmp_path, monkeypatch
):
    store = StepStore(str(tmp_path / "step"))
    claims = tmp_path / "step" / "claims"
    for mb in range(20):
        assert store.create(f"claims/{mb:05d}.s0t1", _ME) is True
    (template,) = _templates(claims)
    assert template.stat().st_nlink == 21
    calls = _failing_link(monkeypatch, errno.EMLINK, times=1)
    assert store.create("claims/00020.s0t1", _ME) is True
    assert len(calls) == 2 and calls[0] == str(template) and calls[1] != str(template)
    assert len(_templates(claims)) == 2
    claim = claims / "00020.s0t1"
    assert claim.read_bytes() == _ME and claim.stat().st_nlink == 2
    assert store.create("claims/00020.s0t1", _ME) is False
    assert store.create("claims/00021.s0t1", _ME) is True
    assert len(_templates(claims)) == 2  # the new template is kept


@pytest.mark.parametrize("code", [errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EACCES])
def test_without_hard_links_a_claim_is_an_exclusive_create(tmp_path, monkeypatch, code):
    store = StepStore(str(tmp_path / "step"))
    claims = tmp_path / "step" / "claims"
    calls = _failing_link(monkeypatch, code, times=None)
    assert store.create("claims/00001.s0t1", _ME) is True
    assert store.create("claims/00001.s0t1", _ME) is False
    assert store.create("claims/00002.s0t1", _ME) is True
    assert len(calls) == 1  # refused once: no link tried in that folder again
    for name in ("00001.s0t1", "00002.s0t1"):
        assert (claims / name).read_bytes() == _ME
        assert (claims / name).stat().st_nlink == 1


def test_a_claim_is_made_when_its_template_or_folder_was_removed(tmp_path):
    store = StepStore(str(tmp_path / "step"))
    claims = tmp_path / "step" / "claims"
    assert store.create("claims/00001.s0t1", _ME) is True
    (template,) = _templates(claims)
    template.unlink()
    assert store.create("claims/00002.s0t1", _ME) is True
    assert store.create("claims/00002.s0t1", _ME) is False
    assert (claims / "00002.s0t1").read_bytes() == _ME
    (second,) = _templates(claims)
    assert second != template
    # the folder removed (a step started over) and made again, or not
    shutil.rmtree(claims)
    assert store.create("claims/00001.s0t1", _ME) is True
    assert store.create("claims/00001.s0t1", _ME) is False
    os.replace(claims, tmp_path / "step" / "claims.before")
    claims.mkdir()
    assert store.create("claims/00001.s0t1", _ME) is True
    assert (claims / "00001.s0t1").read_bytes() == _ME
    assert (claims / "00001.s0t1").stat().st_nlink == 2


def test_one_of_threads_that_claim_one_try_at_once_gets_it(tmp_path):
    store = StepStore(str(tmp_path / "step"))
    threads, rounds = 8, 25
    start = threading.Barrier(threads)
    won: list[list[bool]] = [[] for _ in range(rounds)]

    def claim() -> None:
        for mb in range(rounds):
            start.wait()
            won[mb].append(store.create(f"claims/{mb:05d}.s0t1", _ME))

    workers = [threading.Thread(target=claim) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert [sorted(w) for w in won] == [[False] * (threads - 1) + [True]] * rounds
    assert len(_templates(tmp_path / "step" / "claims")) == 1


def test_a_left_marker_is_taken_by_one_taker_only(store):
    store.put("handback/00003.s0t1.back", b"123\n")
    assert store.take("handback/00003.s0t1.back") == b"123\n"
    assert store.take("handback/00003.s0t1.back") is None
    assert store.take("handback/00009.s0t1.back") is None


def test_logs_are_appended_home_once_and_continued(store, tmp_path):
    home = tmp_path / "home-logs"
    state = tmp_path / "staged-logs.json"
    store.put("logs/tok/pool1/user/stdout/node000/process000.stdout.txt", b"one\n")
    store.put("logs/tok/pool2/perf/node000/process001.csv", b"a,b\n")
    pull_logs(store, str(home), str(state))
    pull_logs(store, str(home), str(state))  # nothing new: nothing appended twice
    out = home / "user/stdout/node000/process000.stdout.txt"
    assert out.read_bytes() == b"one\n"
    store.put("logs/tok/pool1/user/stdout/node000/process000.stdout.txt", b"one\ntwo\n")
    assert pull_logs(store, str(home), str(state)) == 4
    assert out.read_bytes() == b"one\ntwo\n"
    assert (home / "perf/node000/process001.csv").read_bytes() == b"a,b\n"
    assert json.loads(state.read_text())  # how far each staged file was read


def test_the_staging_folder_is_per_run_directory():
    a = staging_root("s3://b/p/", "/runs/one/job-1", "score")
    b = staging_root("s3://b/p", "/other/job-1", "score")
    assert a.startswith("s3://b/p/job-1-") and a.endswith("/steps/score")
    assert a != b


class _NoConditionalCreate(MemoryFileSystem):
    """An fsspec store whose "exclusive" create overwrites, as stores without conditional
    writes (or drivers that do not send the condition) do."""

    protocol = "nocas"

    def _open(self, path, mode="rb", **kwargs):
        return super()._open(path, mode.replace("x", "w"), **kwargs)


SCRIPT = """
import os

def init():
    print("init in", os.getpid())

def run(mini_batch):
    print("run", len(mini_batch))
    return [f"{os.path.basename(p)} {open(p).read().strip()}" for p in mini_batch]
"""


# one row a file: its name
BASENAMES = """
import os

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def _file_job(folder: Path, data: str, output: str | None = None, args: str = "") -> Path:
    job = write_job(
        folder, SCRIPT, input_yaml=f"type: uri_folder\npath: {data}", program_arguments=args
    )
    if output is not None:
        text = job.read_text().replace(
            "      result:\n        type: uri_file\n",
            f"      result:\n        type: uri_file\n        path: {output}\n",
        )
        job.write_text(text)
    return job


def test_a_staging_that_is_not_a_url_or_folder_is_a_configuration_error(tmp_path):
    (tmp_path / "data").mkdir()
    job = _file_job(tmp_path, "./data")
    (tmp_path / "daskprs.yaml").write_text("staging: [s3://a, s3://b]\n")
    with pytest.raises(UserInputError) as err:
        run_job(job, run_dir=tmp_path / "run", workers=1, echo=lambda s: None)
    assert "staging" in str(err.value) and "s3://bucket/daskprs-staging" in str(err.value)


def test_a_store_without_conditional_create_is_refused_before_any_try(tmp_path):
    fsspec.register_implementation("nocas", _NoConditionalCreate, clobber=True)
    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"f{i}.txt").write_text(f"{i}\n")
    job = _file_job(tmp_path, "./data")
    with pytest.raises(UserInputError) as err:
        run_job(job, run_dir=tmp_path / "run", workers=1, echo=lambda s: None, staging="nocas://x")
    assert "exclusive create" in str(err.value) and "conditional" in str(err.value)
    ledger = tmp_path / "run/steps/score/ledger.jsonl"
    assert not ledger.exists() or "RUN_DONE" not in ledger.read_text()


# -- whole jobs --------------------------------------------------------------------------------


def _expected(n: int) -> str:
    return "".join(f"f{i:03d}.txt {i}\n" for i in range(n))


def _put_files(s3, n: int) -> None:
    for i in range(n):
        s3.pipe(f"data/files/f{i:03d}.txt", f"{i}\n".encode())


def test_embedded_cluster_with_staging_on_s3_from_daskprs_yaml(tmp_path, s3):
    _put_files(s3, 9)
    job = _file_job(tmp_path, "s3://data/files")
    (tmp_path / "daskprs.yaml").write_text("staging: s3://out/stage/\n")
    notes: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", workers=2, echo=notes.append)
    assert result.ok, result.failure
    assert any("embedded local cluster" in n for n in notes)
    assert not any("dashboard" in n for n in notes)  # none served, none printed
    out = tmp_path / "run/outputs/score/result/parallel_run_step.txt"
    assert out.read_text() == _expected(9)
    ledger = (tmp_path / "run/steps/score/ledger.jsonl").read_text()
    assert "s3://out/stage/" in ledger  # the parts were staged
    assert not (tmp_path / "run/steps/score/parts").exists()
    stdout = "".join(p.read_text() for p in (tmp_path / "run/logs/user/stdout").rglob("*.txt"))
    assert stdout.count("run ") == 5 and "init in" in stdout
    s3.invalidate_cache()
    assert not s3.find("out/stage")  # removed once the output was assembled
    assert json.loads((tmp_path / "run/run.json").read_text())["staging"] == "s3://out/stage"


TABLE = """
def run(mini_batch):
    print("rows", len(mini_batch))
    return mini_batch[["id"]].assign(twice=mini_batch["v"] * 2)
"""

hidden = pytest.mark.skipif(not can_hide_folders(), reason="needs mount namespaces (root)")


def _put_table(s3, n: int) -> str:
    import pandas as pd

    df = pd.DataFrame({"id": range(n), "v": range(n)})
    s3.pipe("data/table/a.csv", df.iloc[: n // 2].to_csv(index=False).encode())
    s3.pipe("data/table/b.csv", df.iloc[n // 2 :].to_csv(index=False).encode())
    s3.pipe(
        "data/table/MLTable",
        b"paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n"
        b"      delimiter: ','\n",
    )
    return "".join(f"{i} {2 * i}\n" for i in range(n))


def _daskprs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args], cwd=cwd, capture_output=True, text=True
    )


@hidden
def test_workers_that_cannot_see_the_driver_run_a_file_list_and_a_table(tmp_path, s3):
    driver = tmp_path / "driver"  # the job, its code and the run directories: hidden
    driver.mkdir()
    _put_files(s3, 11)
    table = _put_table(s3, 400)
    files_job = _file_job(driver / "files", "s3://data/files", args="--resource_monitor_interval 1")
    table_job = write_job(
        driver / "table",
        TABLE,
        input_yaml="type: mltable\npath: s3://data/table\nmode: direct",
        mini_batch_size='"1kb"',
    )
    text = table_job.read_text().replace(
        "      result:\n        type: uri_file\n",
        "      result:\n        type: uri_file\n        path: s3://out/results/table.txt\n",
    )
    table_job.write_text(text)
    notes: list[str] = []
    with external_cluster_at(tmp_path, hide=driver) as address:
        with pytest.raises(UserInputError) as err:  # without staging: the way out is named
            run_job(files_job, run_dir=driver / "refused", scheduler=address, echo=notes.append)
        assert "cannot see the run directory" in str(err.value) and "--staging" in str(err.value)
        local = _file_job(driver / "local", str(driver / "local-data"))
        (driver / "local-data").mkdir()
        (driver / "local-data" / "f.txt").write_text("1\n")
        with pytest.raises(UserInputError) as err:  # a local input they cannot see: named
            run_job(
                local, run_dir=driver / "refused-2", scheduler=address, staging="s3://out/stage"
            )
        assert f"cannot see {driver / 'local-data'}" in str(err.value)
        assert "object storage" in str(err.value)
        result = run_job(
            files_job,
            run_dir=driver / "run",
            scheduler=address,
            echo=notes.append,
            staging="s3://out/stage",
        )
        assert result.ok, result.failure
        tables = run_job(
            table_job,
            run_dir=driver / "run-table",
            scheduler=address,
            echo=notes.append,
            staging="s3://out/stage",
        )
        assert tables.ok, tables.failure
        # short tries: packed, each task's pack uploaded from the worker's own scratch folder
        for i in range(120):
            s3.pipe(f"data/short/s{i:03d}.txt", b"x\n")
        short_job = write_job(
            driver / "short",
            BASENAMES,
            input_yaml="type: uri_folder\npath: s3://data/short",
            mini_batch_size='"1"',
        )
        short = run_job(
            short_job, run_dir=driver / "run-short", scheduler=address, staging="s3://out/stage"
        )
        assert short.ok, short.failure
    shorts = driver / "run-short/outputs/score/result/parallel_run_step.txt"
    assert shorts.read_text() == "".join(f"s{i:03d}.txt\n" for i in range(120))
    state = read_ledger(str(driver / "run-short/steps/score/ledger.jsonl"))
    parts = [state.part_of(mb) or "" for mb in range(120)]
    assert sum(is_pack_ref(p) and p.startswith("s3://out/stage/") for p in parts) > 60
    out = driver / "run/outputs/score/result/parallel_run_step.txt"
    assert out.read_text() == _expected(11)
    assert s3.cat("out/results/table.txt").decode() == table
    assert tables.steps[0].summary["total"] > 2
    assert any("shipping it" in n for n in notes)  # the code folder went to the workers
    # the entry script's output came home, under the driver's logs/
    user = driver / "run/logs/user/stdout"
    printed = "".join(p.read_text() for p in user.rglob("*.stdout.txt"))
    assert printed.count("run ") == 6 and "init in" in printed
    samples = list((driver / "run/logs/perf").rglob("*.csv"))  # the resource monitor's too
    assert samples and all(p.read_text().count("\n") >= 2 for p in samples)
    rows = "".join(p.read_text() for p in (driver / "run-table/logs/user/stdout").rglob("*.txt"))
    assert rows.count("rows ") == tables.steps[0].summary["total"]
    s3.invalidate_cache()
    assert not s3.find("out/stage")  # nothing staged is left behind
    report = _daskprs("report", str(driver / "run"), "-o", str(tmp_path / "r.html"), cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    assert "RUN_DONE" in (tmp_path / "r.html").read_text() or report.stdout
    status = _daskprs("status", str(driver / "run"), cwd=tmp_path)
    assert status.returncode == 0 and "SUCCEEDED" in status.stdout


@hidden
def test_a_worker_killed_mid_run_with_staging(tmp_path, s3):
    driver, marks = tmp_path / "driver", tmp_path / "marks"
    driver.mkdir()
    marks.mkdir()
    _put_files(s3, 6)
    job = write_job(
        driver,
        kill_worker_script(2),
        input_yaml="type: uri_folder\npath: s3://data/files",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  MARKS: {marks}\n",
    )
    with external_cluster_at(tmp_path, hide=driver) as address:
        result = run_killing_a_worker(
            job, marks, run_dir=driver / "run", scheduler=address, staging="s3://out/stage"
        )
    assert result.ok, result.failure
    out = driver / "run/outputs/score/result/parallel_run_step.txt"
    assert out.read_text() == "".join(f"f{i:03d}.txt\n" for i in range(6))
    lines = [json.loads(x) for x in (driver / "run/steps/score/ledger.jsonl").open()]
    tries = [x["record"] for x in lines if x["event"] == "try" and x["record"]["mb"] == 2]
    assert [t["status"] for t in tries] == ["PROCESS_DIED", "RUN_DONE"]


SLOW = """
import os, time

def run(mini_batch):
    time.sleep(0.4)
    print("ran", [os.path.basename(p) for p in mini_batch])
    return [os.path.basename(p) for p in mini_batch]
"""


@hidden
def test_a_killed_driver_is_resumed_from_what_it_staged(tmp_path, s3):
    driver = tmp_path / "driver"
    driver.mkdir()
    n = 16
    _put_files(s3, n)
    job = write_job(
        driver,
        SLOW,
        input_yaml="type: uri_folder\npath: s3://data/files",
        mini_batch_size='"1"',
    )
    run_dir = driver / "run"
    ledger = run_dir / "steps/score/ledger.jsonl"
    with external_cluster_at(tmp_path, hide=driver) as address:
        args = ["run", str(job), "--run-dir", str(run_dir), "--scheduler", address]
        first = subprocess.Popen(
            [sys.executable, "-m", "daskprs", *args, "--staging", "s3://out/stage"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            poll_for(
                lambda: ledger.exists() and ledger.read_text().count('"RUN_DONE"') >= 4,
                timeout=120,
            )
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        done_before = ledger.read_text().count('"RUN_DONE"')
        assert done_before < n
        assert s3.find("out/stage")  # the killed driver's parts are there
        resumed = _daskprs("run", "--resume", str(run_dir), "--scheduler", address, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    out = run_dir / "outputs/score/result/parallel_run_step.txt"
    assert out.read_text() == "".join(f"f{i:03d}.txt\n" for i in range(n))
    lines = [json.loads(x) for x in ledger.open()]
    second = [x["record"] for x in lines if x["event"] == "try" and "-s1" in x["record"]["key"]]
    assert 0 < len(second) <= n - done_before  # what the killed driver committed ran once
    printed = "".join(p.read_text() for p in (run_dir / "logs/user/stdout").rglob("*.txt"))
    assert printed.count("ran ") >= n  # the killed session's logs came home too
    s3.invalidate_cache()
    assert not s3.find("out/stage")


@hidden
def test_map_batches_stages_its_partitions_for_workers_that_cannot_see_the_run(tmp_path, s3):
    import dask.bag as db
    from distributed import Client

    from daskprs import map_batches

    driver = tmp_path / "driver"
    driver.mkdir()

    def run(items):
        print("partition of", len(items))
        return [x * 10 for x in items]

    with external_cluster_at(tmp_path, hide=driver) as address, Client(address) as client:
        result = map_batches(
            db.from_sequence(range(20), npartitions=4),
            run=run,
            client=client,
            run_dir=driver / "map",
            echo=lambda s: None,
            staging="s3://out/stage",
        )
        assert result.ok, result.failure
        assert result.output.compute() == [x * 10 for x in range(20)]
    assert all(p.startswith("s3://out/stage/") for p in result.parts.values())
    assert not (driver / "map/staged").exists()  # the partitions went to the store
    printed = "".join(p.read_text() for p in (driver / "map/logs/user/stdout").rglob("*.txt"))
    assert printed.count("partition of 5") == 4


@hidden
def test_the_lease_on_the_staging_store_ends_a_killed_drivers_children(tmp_path, s3, monkeypatch):
    from conftest import pid_alive
    from test_external import LINGER

    monkeypatch.setenv("DASKPRS_LEASE_SECONDS", "2")  # for the workers and the driver
    driver, marks = tmp_path / "driver", tmp_path / "marks"
    driver.mkdir()
    marks.mkdir()
    _put_files(s3, 3)
    job = write_job(
        driver,
        LINGER,
        input_yaml="type: uri_folder\npath: s3://data/files",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  MARKS: {marks}\n",
    )
    with external_cluster_at(tmp_path, hide=driver) as address:
        args = ["run", str(job), "--run-dir", str(driver / "run"), "--scheduler", address]
        first = subprocess.Popen(
            [sys.executable, "-m", "daskprs", *args, "--staging", "s3://out/stage"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            pid_file = marks / "child.pid"
            child = int(poll_for(lambda: pid_file.exists() and pid_file.read_text(), timeout=120))
            s3.invalidate_cache()
            assert any(p.endswith("/steps/score/lease") for p in s3.find("out/stage"))
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        assert pid_alive(child)  # the child belongs to the worker, not to the driver
        poll_for(lambda: not pid_alive(child), timeout=60)


FLAKY = """
import os

def run(mini_batch):
    for p in mini_batch:
        if open(p).read().strip() == "3" and not os.path.exists(os.environ["FIXED"]):
            raise ValueError("not yet")
    return [os.path.basename(p) for p in mini_batch]
"""


def test_staged_parts_stay_while_a_mini_batch_failed_and_go_after_rerun_failed(tmp_path, s3):
    from daskprs.api import resume_job

    _put_files(s3, 6)
    fixed = tmp_path / "fixed"
    job = write_job(
        tmp_path,
        FLAKY,
        input_yaml="type: uri_folder\npath: s3://data/files",
        mini_batch_size='"1"',
        extra=f"retry_settings:\n  max_retries: 0\nmini_batch_error_threshold: 5\n"
        f"environment_variables:\n  FIXED: {fixed}\n",
    )
    notes: list[str] = []
    run_dir = tmp_path / "run"
    first = run_job(job, run_dir=run_dir, workers=2, echo=notes.append, staging="s3://out/stage")
    assert first.steps[0].summary["failed"] == 1
    assert any("staged files kept in s3://out/stage/" in n and "rerun-failed" in n for n in notes)
    s3.invalidate_cache()
    assert any("/parts/" in p for p in s3.find("out/stage"))
    fixed.touch()
    again = resume_job(run_dir, rerun_failed=True, workers=2, echo=notes.append)
    assert again.ok, again.failure
    out = run_dir / "outputs/score/result/parallel_run_step.txt"
    assert out.read_text() == "".join(f"f{i:03d}.txt\n" for i in range(6))
    s3.invalidate_cache()
    assert not s3.find("out/stage")  # every mini-batch done: what was staged is removed
    kept = run_job(
        job,
        run_dir=tmp_path / "kept",
        workers=2,
        echo=notes.append,
        staging="s3://out/stage",
        keep_staged=True,
        force_rerun=True,
    )
    assert kept.ok, kept.failure
    s3.invalidate_cache()
    assert any("/parts/" in p for p in s3.find("out/stage"))
    assert any("(--keep-staged)" in n for n in notes)


def test_inputs_and_staging_on_azure_blob_storage(tmp_path, azurite):
    azurite.mkdir("data")
    azurite.mkdir("stage")
    for i in range(5):
        azurite.pipe(f"data/files/f{i:03d}.txt", f"{i}\n".encode())
    assert StepStore("abfs://stage/probe/steps/score").check() is None  # If-None-Match: *
    job = _file_job(tmp_path, "abfs://data/files")
    result = run_job(
        job, run_dir=tmp_path / "run", workers=2, echo=lambda s: None, staging="abfs://stage"
    )
    assert result.ok, result.failure
    out = tmp_path / "run/outputs/score/result/parallel_run_step.txt"
    assert out.read_text() == _expected(5)
    assert "abfs://stage/" in (tmp_path / "run/steps/score/ledger.jsonl").read_text()
    azurite.invalidate_cache()
    assert not azurite.find("stage")


def _refused_store(tmp_path: Path):
    """A worker's step context whose staging store refuses every upload (no such bucket)."""
    from daskprs.execute.context import StepContext

    return StepContext(
        token="score-1",
        step="score",
        run=RunDir(str(tmp_path / "run")),
        child=ChildConfig(code_dir=str(tmp_path), entry_script="score.py"),
        staging="s3://no-such-bucket/stage/steps/score",
    )


def test_a_part_the_store_refuses_fails_its_try_and_commits_nothing(tmp_path, s3):
    from daskprs.execute.worker import _stage_part
    from daskprs.results.outcome import Status, TryRecord

    local = tmp_path / "00003.s0n1.part"
    local.write_text("rows\n")
    ctx = _refused_store(tmp_path)
    done = TryRecord(mb=3, try_no=1, status=Status.RUN_DONE, total=2, succeeded=2, part=str(local))
    record = _stage_part(ctx, done, "s0n1")
    assert record.status == Status.PROCESS_DIED and record.part is None
    assert record.failed == 2 and "could not be uploaded to the staging store" in record.error
    assert not local.exists()  # the worker's scratch copy is not left behind
    local.write_text("rows\n")  # the next try's part, to a store that takes it
    ok = _stage_part(replace(ctx, staging="s3://out/stage/steps/score"), done, "s0n1")
    url = ok.part or ""
    assert re.fullmatch(r"s3://out/stage/steps/score/parts/00003\.s0n1\.[0-9a-f]{12}\.part", url)
    assert s3.cat(url.removeprefix("s3://")) == b"rows\n"
    # the same try uploaded again (by a worker that closed under it, late: its rerun's part
    # was committed first) gets a name of its own: the committed part keeps its rows
    local.write_text("other rows\n")
    late = _stage_part(replace(ctx, staging="s3://out/stage/steps/score"), done, "s0n1")
    assert late.part != url
    assert s3.cat(url.removeprefix("s3://")) == b"rows\n"


def test_a_pack_the_store_refuses_fails_the_tries_with_rows_in_it(tmp_path, s3):
    from daskprs.execute.worker import _stage_pack
    from daskprs.results.outcome import Status, TryRecord
    from daskprs.results.packs import split_ref

    pack = tmp_path / "00003.s0n1.pack"
    rows = [b"a 1\n", b"b 2\nb 3\n", b"c 4\n"]

    def records() -> dict:
        pack.write_bytes(b"".join(rows))
        out, offset = {}, 0
        for i, r in enumerate(rows):
            part = f"{pack}:{offset}+{len(r)}"
            done = TryRecord(mb=3 + i, try_no=1, status=Status.RUN_DONE, succeeded=1, part=part)
            out[(3 + i, 1)] = done
            offset += len(r)
        out[(9, 1)] = TryRecord(mb=9, try_no=1, status=Status.RUN_EXCEPTION, total=1, failed=1)
        # run() returned no rows: an empty range, nothing to stage
        empty = TryRecord(mb=10, try_no=1, status=Status.RUN_DONE, part=f"{pack}:{offset}+0")
        out[(10, 1)] = empty
        return out

    ctx = _refused_store(tmp_path)
    untouched = records()[(9, 1)]
    refused = _stage_pack(ctx, str(pack), (3, "s0n1"), records())
    assert [refused[(mb, 1)].status for mb in (3, 4, 5)] == [Status.PROCESS_DIED] * 3
    assert all(refused[(mb, 1)].part is None for mb in (3, 4, 5))
    assert "could not be uploaded to the staging store" in (refused[(4, 1)].error or "")
    assert refused[(9, 1)] == untouched  # no rows there: as it was
    assert refused[(10, 1)].status == Status.RUN_DONE and refused[(10, 1)].part is None
    assert not pack.exists()  # the worker's scratch copy is not left behind
    staged = _stage_pack(
        replace(ctx, staging="s3://out/stage/steps/score"), str(pack), (3, "s0n1"), records()
    )
    ranges = [split_ref(staged[(mb, 1)].part or "") for mb in (3, 4, 5)]
    url = ranges[0][0]
    assert re.fullmatch(r"s3://out/stage/steps/score/parts/00003\.s0n1\.[0-9a-f]{12}\.pack", url)
    assert {r[0] for r in ranges} == {url}  # one object for the three
    data = s3.cat(url.removeprefix("s3://"))
    assert [data[offset : offset + (length or 0)] for _, offset, length in ranges] == rows
    assert [staged[(mb, 1)].status for mb in (3, 4, 5)] == [Status.RUN_DONE] * 3
    assert staged[(10, 1)].part is None
    assert not pack.exists()
    # a task run again gets a pack of its own: the first worker's late upload replaces nothing
    again = _stage_pack(
        replace(ctx, staging="s3://out/stage/steps/score"), str(pack), (3, "s0n1"), records()
    )
    assert again[(3, 1)].part != staged[(3, 1)].part


def test_short_staged_tries_are_packed_and_uploaded_a_pack_a_task(tmp_path, s3):
    """Staged, the tries of a packed task append to one pack in the worker's scratch folder,
    uploaded once: one object a task, where a part a try was one upload and one read back
    each; each try's rows a range of it, the output exact."""
    n = 120
    _put_files(s3, n)
    job = write_job(
        tmp_path,
        BASENAMES,
        input_yaml="type: uri_folder\npath: s3://data/files",
        mini_batch_size='"1"',
    )
    run_dir = tmp_path / "run"
    staging = {"staging": "s3://out/stage", "keep_staged": True}
    result = run_job(job, run_dir=run_dir, workers=2, echo=lambda s: None, **staging)
    assert result.ok, result.failure
    out = run_dir / "outputs/score/result/parallel_run_step.txt"
    assert out.read_text() == "".join(f"f{i:03d}.txt\n" for i in range(n))
    state = read_ledger(str(run_dir / "steps/score/ledger.jsonl"))
    parts = [state.part_of(mb) or "" for mb in range(n)]
    assert all(p.startswith("s3://out/stage/") for p in parts)
    packed = [p for p in parts if is_pack_ref(p)]
    assert len(packed) > n // 2  # most tries were packed (the first ones run one a task)
    s3.invalidate_cache()
    staged = [p for p in s3.find("out/stage") if "/parts/" in p]
    packs = [p for p in staged if p.endswith(".pack")]
    assert 0 < len(packs) < len(packed)
    assert len(staged) - len(packs) == n - len(packed)  # the unpacked tries: a part each
    assert not (run_dir / "steps/score/parts").exists()  # nothing was written beside the run


def test_a_later_session_keeps_a_done_steps_output_after_its_staged_parts_went(tmp_path):
    """A staged step whose mini-batches are all done removes what it staged; a later session
    (rerun-failed, or a resume after a crash in a later step) has nothing to run there and
    keeps its output as it is, instead of assembling it again from parts that are gone."""
    import fsspec

    from daskprs.api import resume_job

    make_files(tmp_path / "data", 4)
    job = write_job(tmp_path, BASENAMES, input_yaml="type: uri_folder\npath: ./data")
    run = tmp_path / "run"
    fsspec.filesystem("memory").store.clear()
    first = run_job(job, run_dir=run, workers=1, echo=lambda s: None, staging="memory://st")
    assert first.ok, first.failure
    assert not fsspec.filesystem("memory").find("/st")  # all done: the staged files went
    again = resume_job(run, rerun_failed=True, workers=1, echo=lambda s: None)
    assert again.ok, again.failure
    assert output_of(run).read_text() == "".join(f"f{i:03d}.txt\n" for i in range(4))


def test_a_new_run_ignores_what_an_earlier_run_at_its_path_staged(tmp_path, monkeypatch):
    """Claims left in the staging store by an earlier run at this run directory's path (its
    run directory removed, or restarted with --force) hold the try keys a new ledger hands out
    again: they are cleared before the first session, not taken as tries that ran."""
    import fsspec

    from daskprs.execute.store import StepStore, claim_name, staging_root

    monkeypatch.setenv("DASKPRS_HANDBACK_SECONDS", "0.1")
    make_files(tmp_path / "data", 4)
    job = write_job(
        tmp_path,
        BASENAMES,
        input_yaml="type: uri_folder\npath: ./data",
        extra="retry_settings:\n  max_retries: 0\n",
    )
    run = tmp_path / "run"
    fsspec.filesystem("memory").store.clear()
    stale = StepStore(staging_root("memory://st", str(run), "score"))
    for mb in range(4):
        for n in range(12):
            assert stale.create(claim_name(mb, f"s0n{n}"), b"an earlier run\n")
    result = run_job(job, run_dir=run, workers=1, echo=lambda s: None, staging="memory://st")
    assert result.ok, result.failure
    assert output_of(run).read_text() == "".join(f"f{i:03d}.txt\n" for i in range(4))


def test_staging_to_a_folder_every_worker_mounts(tmp_path):
    """``--staging`` may name a folder (a mount every worker shares): parts and packs are
    copied there, its folders made as they are needed."""
    make_files(tmp_path / "data", 6)
    job = write_job(tmp_path, BASENAMES, input_yaml="type: uri_folder\npath: ./data")
    run = tmp_path / "run"
    stage = tmp_path / "stage"
    result = run_job(job, run_dir=run, workers=2, echo=lambda s: None, staging=str(stage))
    assert result.ok, result.failure
    assert output_of(run).read_text() == "".join(f"f{i:03d}.txt\n" for i in range(6))


def test_a_later_session_keeps_an_output_on_s3_after_the_staged_parts_went(tmp_path, s3):
    """The same with the output an object of the store: a later session with nothing to run
    finds it as the step wrote it (same size, same time) and leaves it."""
    from daskprs.api import resume_job

    make_files(tmp_path / "data", 4)
    job = write_job(tmp_path, BASENAMES, input_yaml="type: uri_folder\npath: ./data")
    job.write_text(
        job.read_text().replace(
            "      result:\n        type: uri_file\n",
            "      result:\n        type: uri_file\n        path: s3://out/result.txt\n",
        )
    )
    run = tmp_path / "run"
    first = run_job(job, run_dir=run, workers=1, echo=lambda s: None, staging="s3://out/stage")
    assert first.ok, first.failure
    s3.invalidate_cache()
    written = s3.info("out/result.txt")["LastModified"]
    assert not s3.find("out/stage")  # all done: the staged files went
    again = resume_job(run, rerun_failed=True, workers=1, echo=lambda s: None)
    assert again.ok, again.failure
    s3.invalidate_cache()
    assert s3.info("out/result.txt")["LastModified"] == written  # not written again
    assert s3.cat("out/result.txt") == b"".join(f"f{i:03d}.txt\n".encode() for i in range(4))
