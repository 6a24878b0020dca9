"""The command line: exit statuses, the embedded cluster, and a real external scheduler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_files, output_of, write_job

from daskprs.cli import cli

REPO = Path(__file__).resolve().parent.parent
OK_SCRIPT = """
import os

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""
FAIL_SCRIPT = """
def run(mini_batch):
    raise RuntimeError("always")
"""


def daskprs(
    *args: str, cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_validate_good_and_bad(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", str(REPO / "examples/iris/pipeline.yml")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output
    assert "environment.image" in result.output  # listed as not applied
    bad = tmp_path / "bad.yml"
    text = (REPO / "examples/iris/pipeline.yml").read_text()
    bad.write_text(text.replace("timeout: 60", "timout: 60").replace('"2kb"', '"1.5mb"'))
    for sub in ("script", "model", "data"):
        os.symlink(REPO / "examples/iris" / sub, tmp_path / sub)
    result = runner.invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "jobs.batch_prediction.retry_settings.timout" in result.output
    assert "timeout" in result.output
    assert "mini_batch_size" in result.output


@pytest.mark.slow
def test_run_example_in_a_subprocess_on_the_embedded_cluster(tmp_path):
    shutil.copytree(REPO / "examples/file-checksums", tmp_path / "ex")
    proc = daskprs("run", "ex/pipeline.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [run_dir] = (tmp_path / "daskprs-runs").iterdir()
    assert run_dir.name.startswith("pipeline-")
    out = run_dir / "outputs/checksum/checksums/parallel_run_step.txt"
    assert f"output checksum.checksums: {out}" in proc.stderr
    lines = out.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"doc-{i:03d}.txt" for i in range(40)]
    # the same run dir again is refused, with a hint
    again = daskprs("run", "ex/pipeline.yml", "--run-dir", str(run_dir), cwd=tmp_path)
    assert again.returncode == 2
    assert "--resume" in again.stderr


@pytest.mark.slow
def test_exit_42_when_the_job_fails_and_2_for_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_files(tmp_path / "data", 3)
    job = write_job(
        tmp_path,
        FAIL_SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        extra="retry_settings:\n  max_retries: 0",
    )
    runner = CliRunner()
    result = runner.invoke(cli, ["run", str(job), "--run-dir", "r1", "--workers", "1"])
    assert result.exit_code == 42, result.output
    assert "RuntimeError: always" in result.output
    missing = write_job(tmp_path / "m", OK_SCRIPT, input_yaml="type: uri_folder\npath: ./nope")
    result = runner.invoke(cli, ["run", str(missing), "--run-dir", "r2"])
    assert result.exit_code == 2
    assert "nope" in result.output
    result = runner.invoke(cli, ["run", "no-such.yml"])
    assert result.exit_code == 2
    result = runner.invoke(cli, ["run", str(job), "--run-dir", "s3://bucket/runs/r1"])
    assert result.exit_code == 2
    assert "object stores are for inputs and outputs" in result.output
    monkeypatch.setenv("DASKPRS_CONNECT_TIMEOUT", "1")
    result = runner.invoke(
        cli, ["run", str(job), "--run-dir", "r3", "--scheduler", "tcp://127.0.0.1:1"]
    )
    assert result.exit_code == 2
    assert "cannot reach the Dask scheduler" in result.output


@pytest.mark.slow
def test_run_against_an_external_scheduler(tmp_path, external_cluster):
    address, _ = external_cluster
    make_files(tmp_path / "data", 9)
    job = write_job(tmp_path, OK_SCRIPT, input_yaml="type: uri_folder\npath: ./data")
    proc = daskprs("run", str(job), "--run-dir", "run", "--scheduler", address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(9)
    ]
    assert ": 2 worker slots, connected in" in proc.stderr
    assert "Dask dashboard: http://127.0.0.1:" in proc.stderr  # the scheduler serves one


@pytest.mark.slow
def test_no_dashboard_link_for_a_scheduler_that_serves_no_dashboard(tmp_path):
    """`dask scheduler --no-dashboard` still has an HTTP server (/health, in its services as
    "dashboard"): a link to its /status would be a 404."""
    from conftest import external_cluster_at

    make_files(tmp_path / "data", 3)
    job = write_job(tmp_path, OK_SCRIPT, input_yaml="type: uri_folder\npath: ./data")
    with external_cluster_at(tmp_path, dashboard=False) as address:
        proc = daskprs("run", str(job), "--run-dir", "run", "--scheduler", address, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert ": 2 worker slots, connected in" in proc.stderr
    assert "Dask dashboard" not in proc.stderr


def test_a_scheduler_address_without_a_port_ends_with_the_message_alone(tmp_path):
    """The client made for `--scheduler foo` is closed at once: nothing printed after the
    message (its closing at exit printed a traceback, and took twice the connect timeout)."""
    make_files(tmp_path / "data", 2)
    job = write_job(tmp_path, OK_SCRIPT, input_yaml="type: uri_folder\npath: ./data")
    proc = daskprs(
        "run", str(job), "--run-dir", "run", "--scheduler", "foo",
        cwd=tmp_path,
        env={"DASKPRS_CONNECT_TIMEOUT": "1"},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: cannot reach the Dask scheduler at foo (missing port number")
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
