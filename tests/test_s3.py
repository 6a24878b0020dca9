"""s3:// inputs and outputs against a real S3-protocol server on 127.0.0.1 (moto server mode)."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_job

from daskprs.api import run_job
from daskprs.cli import cli
from daskprs.errors import PlanningError
from daskprs.results.output import assemble

pytestmark = pytest.mark.slow


FILES = """
import os

def run(mini_batch):
    out = []
    for p in mini_batch:
        assert os.path.isfile(p), p  # a local copy, not a URL
        with open(p) as f:
            out.append(f"{os.path.basename(p)} {f.read().strip()}")
    return out
"""


def _run_dir_text(run_dir) -> str:
    chunks = []
    for root, _, names in os.walk(run_dir):
        for n in names:
            with open(os.path.join(root, n), "rb") as f:
                chunks.append(f.read().decode("utf-8", "replace"))
    return "\n".join(chunks)


def test_file_list_from_s3_with_output_on_s3(tmp_path, s3):
    for i in range(7):
        s3.pipe(f"data/docs/sub/d{i}.txt", f"text {i}\n".encode())
    job = write_job(
        tmp_path,
        FILES,
        input_yaml="type: uri_folder\npath: s3://data/docs",
        mini_batch_size='"3"',
    )
    text = job.read_text().replace(
        "      result:\n        type: uri_file\n",
        "      result:\n        type: uri_file\n        path: s3://out/results/files.txt\n",
    )
    job.write_text(text)
    import glob
    import tempfile

    caches = os.path.join(tempfile.gettempdir(), "daskprs-cache-score-*")
    before = set(glob.glob(caches))
    result = run_job(job, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert result.ok, result.failure
    assert set(glob.glob(caches)) == before  # downloaded copies removed after the step
    assert s3.cat("out/results/files.txt").decode().splitlines() == [
        f"d{i}.txt text {i}" for i in range(7)
    ]
    assert result.outputs["score.result"] == "s3://out/results/files.txt"
    assert s3.find("out") == ["out/results/files.txt"]  # nor the check's object nor a temporary
    assert "daskprs-secret-never-logged" not in _run_dir_text(tmp_path / "run")


TABLE = """
def run(mini_batch):
    return mini_batch[["id"]].assign(twice=mini_batch["v"] * 2)
"""


def test_tabular_input_from_s3(tmp_path, s3):
    df = pd.DataFrame({"id": range(300), "v": range(300)})
    s3.pipe("data/table/a.csv", df.iloc[:150].to_csv(index=False).encode())
    s3.pipe("data/table/b.csv", df.iloc[150:].to_csv(index=False).encode())
    s3.pipe(
        "data/table/MLTable",
        b"paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n"
        b"      delimiter: ','\n",
    )
    job = write_job(
        tmp_path,
        TABLE,
        input_yaml="type: mltable\npath: s3://data/table\nmode: direct",
        mini_batch_size='"500"',
    )
    result = run_job(job, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert result.ok, result.failure
    assert result.steps[0].summary["total"] > 2
    out = tmp_path / "run/outputs/score/result/parallel_run_step.txt"
    assert out.read_text() == "".join(f"{i} {2 * i}\n" for i in range(300))


def test_a_failed_assembly_leaves_no_output_looking_complete(tmp_path, s3):
    parts = []
    for i in range(3):
        p = tmp_path / f"p{i}"
        p.write_text(f"row {i}\n")
        parts.append(str(p))

    def broken():
        yield parts[0]
        raise OSError("disk gone while assembling")

    dest = tmp_path / "out" / "result.txt"
    dest.parent.mkdir()
    dest.write_text("previous complete output\n")
    with pytest.raises(OSError):
        assemble(broken(), str(dest))
    assert dest.read_text() == "previous complete output\n"
    assert os.listdir(dest.parent) == ["result.txt"]  # no temporary left behind
    with pytest.raises(OSError):
        assemble(broken(), "s3://out/never.txt")
    assert not s3.exists("out/never.txt")
    assert assemble(iter(parts), "s3://out/whole.txt") == 18
    assert s3.cat("out/whole.txt") == b"row 0\nrow 1\nrow 2\n"


DIRECT = """
def run(mini_batch):
    return list(mini_batch)
"""


def test_direct_mode_passes_urls_and_a_missing_bucket_is_named(tmp_path, s3):
    for i in range(3):
        s3.pipe(f"data/raw/r{i}.bin", b"x")
    job = write_job(
        tmp_path, DIRECT, input_yaml="type: uri_folder\npath: s3://data/raw\nmode: direct"
    )
    result = run_job(job, run_dir=tmp_path / "run", workers=1, echo=lambda s: None)
    assert result.ok, result.failure
    out = tmp_path / "run/outputs/score/result/parallel_run_step.txt"
    assert out.read_text().splitlines() == [f"s3://data/raw/r{i}.bin" for i in range(3)]
    job.write_text(job.read_text().replace("s3://data/raw", "s3://no-such-bucket/raw"))
    with pytest.raises(PlanningError, match="s3://no-such-bucket/raw"):
        run_job(job, run_dir=tmp_path / "run2", workers=1, echo=lambda s: None)


def _closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daskprs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_an_endpoint_that_cannot_be_reached_is_exit_2_naming_the_input(tmp_path, s3):
    for i in range(2):
        s3.pipe(f"data/docs/d{i}.txt", b"x")
    job = write_job(tmp_path, DIRECT, input_yaml="type: uri_folder\npath: s3://data/docs")
    # one try for each request, not botocore's retries of a refused connection
    closed = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}", "AWS_MAX_ATTEMPTS": "1"}
    run_dir = tmp_path / "run"
    for args in (["validate", str(job)], ["run", str(job), "--run-dir", str(run_dir)]):
        proc = _daskprs(*args, env=closed)
        assert proc.returncode == 2, proc.stderr
        assert "s3://data/docs: cannot reach the object store (EndpointConnectionError" in (
            proc.stderr
        )
        assert "AWS_ENDPOINT_URL" in proc.stderr and "AWS_ACCESS_KEY_ID" in proc.stderr
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    result = (run_dir / "logs" / "job_result.txt").read_text()
    assert "outcome: FAILED" in result and "cannot reach the object store" in result
    # nothing of the refused start is in the way: with the store back, a run takes it over
    again = _daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir), env={})
    assert again.returncode == 0, again.stderr
    assert "stopped before any step began" in again.stderr


def test_a_bucket_alone_is_not_found_only_when_the_store_says_so(tmp_path, s3, monkeypatch):
    """s3fs says a bucket alone does not exist whatever went wrong: ``s3://bucket`` on a store
    that cannot be reached, or that refuses the keys, is named so, as ``s3://bucket/key`` is
    (it said "folder not found")."""
    import s3fs

    s3.pipe("data/d0.txt", b"x")
    job = write_job(tmp_path, DIRECT, input_yaml="type: uri_folder\npath: s3://data")

    def validate(bucket: str) -> str:
        s3fs.S3FileSystem.clear_instance_cache()  # (cached by arguments, not the environment)
        job.write_text(re.sub(r"s3://[\w-]+", bucket, job.read_text()))
        checked = CliRunner().invoke(cli, ["validate", str(job)])
        assert "Traceback" not in checked.output and "internal error" not in checked.output
        return checked.output if checked.exit_code else ""

    assert validate("s3://data") == ""
    assert "s3://no-such-bucket: folder not found; check the path" in validate(
        "s3://no-such-bucket"
    )
    with _moto_checks_credentials():
        said = validate("s3://data")
    assert "s3://data: the object store refused access (PermissionError" in said
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one try a request, not botocore's retries
    said = validate("s3://data")
    assert "s3://data: cannot reach the object store (EndpointConnectionError" in said
    assert "AWS_ENDPOINT_URL" in said


@contextlib.contextmanager
def _moto_checks_credentials():
    """The moto server of the test (in this process) refusing keys its IAM does not know, as
    S3 does (moto accepts any key otherwise)."""
    from moto import settings
    from moto.core.responses import ActionAuthenticatorMixin

    before = settings.INITIAL_NO_AUTH_ACTION_COUNT
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = before


def test_credentials_the_store_refuses_are_exit_2_naming_the_input(tmp_path, s3):
    s3.pipe("data/table/a.csv", b"id,v\n1,2\n")
    job = write_job(tmp_path, DIRECT, input_yaml="type: uri_folder\npath: s3://data/table")
    with _moto_checks_credentials():
        checked = CliRunner().invoke(cli, ["validate", str(job)])
        with pytest.raises(PlanningError, match=r"s3://data/table: the object store refused"):
            run_job(job, run_dir=tmp_path / "run", workers=1, echo=lambda s: None)
    assert checked.exit_code == 2, checked.output
    assert "s3://data/table: the object store refused access (PermissionError" in checked.output
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in checked.output
    assert "Traceback" not in checked.output and "internal error" not in checked.output


NAMES = """
import os

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def _job_writing_to(tmp_path, url: str):
    """A job over four local files whose ``score.result`` (the rows) is the file ``url``."""
    (tmp_path / "docs").mkdir()
    for i in range(4):
        (tmp_path / "docs" / f"d{i}.txt").write_text(f"text {i}\n")
    job = write_job(tmp_path, NAMES, input_yaml="type: uri_folder\npath: ./docs")
    job.write_text(
        job.read_text().replace(
            "      result:\n        type: uri_file\n",
            f"      result:\n        type: uri_file\n        path: {url}\n",
        )
    )
    return job


@pytest.mark.parametrize("case", ["missing bucket", "refused keys", "closed port"])
def test_an_output_store_that_cannot_be_written_is_exit_2_before_anything_runs(
    tmp_path, s3, monkeypatch, case
):
    """validate and run check that each output on an object store takes a write before any
    mini-batch runs: the output, its URL, the error and what to check, exit 2 (run ran the
    whole step, then failed writing the output: exit 1, an internal error)."""
    url = "s3://no-such-bucket/r/rows.txt" if case == "missing bucket" else "s3://out/r/rows.txt"
    job = _job_writing_to(tmp_path, url)
    run_dir = tmp_path / "run"
    if case == "closed port":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # one try a request, not botocore's retries
    checks = contextlib.nullcontext() if case != "refused keys" else _moto_checks_credentials()
    with checks:
        checked = CliRunner().invoke(cli, ["validate", str(job)])
        ran = CliRunner().invoke(cli, ["run", str(job), "--run-dir", str(run_dir)])
    said = {
        "missing bucket": f"{url}: the bucket no-such-bucket does not exist (FileNotFoundError: ",
        "refused keys": f"{url}: the object store refused access (PermissionError: ",
        "closed port": f"{url}: cannot reach the object store (EndpointConnectionError: ",
    }[case]
    for proc in (checked, ran):
        assert proc.exit_code == 2, proc.output
        assert f"cannot write the output score.result: {said}" in proc.output
        assert "Traceback" not in proc.output and "internal error" not in proc.output
        assert "daskprs-secret-never-logged" not in proc.output
    if case != "missing bucket":
        assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in checked.output
    if case == "closed port":
        assert "AWS_ENDPOINT_URL" in checked.output
    assert not list(run_dir.glob("steps/*/ledger.jsonl"))  # no mini-batch ran


@contextlib.contextmanager
def _closed_endpoint():
    """The store's endpoint, in the environment, a port nothing listens on (one try a
    request, not botocore's retries)."""
    before = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS")}
    os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    os.environ["AWS_MAX_ATTEMPTS"] = "1"
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.mark.parametrize("case", ["refused keys", "closed port"])
def test_an_output_store_failing_after_the_work_is_exit_42_and_resume_writes_it(
    tmp_path, s3, monkeypatch, case
):
    """Credentials that expire while the job runs (or a store no longer reached): the store
    fails the output once every mini-batch is done. The run stops naming the output, the
    error and the resume (exit 42, was exit 1, an internal error), keeps the work, and
    --resume writes the output without running a mini-batch again."""
    from daskprs.execute import step as step_module

    job = _job_writing_to(tmp_path, "s3://out/r/rows.txt")
    run_dir = tmp_path / "run"
    real = step_module.assemble
    failing = _moto_checks_credentials if case == "refused keys" else _closed_endpoint

    def expired(*args, **kwargs):
        with failing():  # from here on, until the output is given up
            return real(*args, **kwargs)

    monkeypatch.setattr(step_module, "assemble", expired)
    ran = CliRunner().invoke(cli, ["run", str(job), "--run-dir", str(run_dir), "--workers", "1"])
    assert ran.exit_code == 42, ran.output
    said = {
        "refused keys": "the object store refused access (PermissionError: ",
        "closed port": "cannot reach the object store (EndpointConnectionError: ",
    }[case]
    assert f"the output s3://out/r/rows.txt could not be written: s3://out/r/rows.txt: {said}" in (
        ran.output
    )
    assert "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in ran.output
    assert f"daskprs run --resume {run_dir}" in ran.output
    assert "Traceback" not in ran.output and "internal error" not in ran.output
    assert s3.find("out") == []  # nothing of the output
    result = (run_dir / "logs" / "job_result.txt").read_text()
    assert "stopped by: storage" in result
    status = CliRunner().invoke(cli, ["status", str(run_dir)])
    assert f"daskprs run --resume {run_dir}" in status.output
    monkeypatch.setattr(step_module, "assemble", real)
    again = CliRunner().invoke(cli, ["run", "--resume", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert "0 of 2 mini-batches to run" in again.output
    assert sorted(s3.cat("out/r/rows.txt").decode().split()) == [f"d{i}.txt" for i in range(4)]
