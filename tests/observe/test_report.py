"""The HTML report's content and page, from run directories written by hand."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess

import pytest
from click.testing import CliRunner
from conftest import tmpfs
from rundirs import T0, bad, make_run, ok

from daskprs.cli import cli
from daskprs.observe.report import build_report, render_html
from daskprs.observe.runview import read_run
from daskprs.results.outcome import TryRecord


def failing_run(tmp_path):
    tries = [(ok(0, 0), "DONE"), (bad(1, 0.2, 1, "RUN_TIMEOUT"), None)]
    tries += [(bad(1, 1.0, 2), None), (bad(1, 1.6, 3), "FAILED")]
    # a try lost with its worker: no start, no process
    tries += [(TryRecord(mb=2, try_no=1, status="PROCESS_DIED", error="worker lost"), None)]
    tries += [(ok(2, 2.5, "process001", try_no=2), "DONE"), (ok(3, 3.0), "DONE")]
    failed = [
        {
            "id": 1,
            "step": "score",
            "status": "RUN_EXCEPTION",
            "tries": 3,
            "inputs": {"file": "/data/big.csv", "start": 0, "end": 4096},
            "error": "ValueError: mini-batch 1 is bad",
            "traceback": "Traceback ...\nValueError: mini-batch 1 is bad",
        }
    ]
    return make_run(tmp_path / "r", tries=tries, failed_jsonl=failed), [t for t, _ in tries]


def test_report_data_has_every_try_on_its_process_lane(tmp_path):
    root, tries = failing_run(tmp_path)
    data = build_report(read_run(root), now=T0)
    assert len(data.bars) == len(tries)
    assert data.lanes == ["node000/process000", "node000/process001", "(lost with its worker)"]
    by_title = {b.title.split(":")[0]: b for b in data.bars}
    lost = by_title["score mini-batch 2, try 1"]
    assert lost.lane == "(lost with its worker)"
    assert lost.start == 2.5  # drawn where the mini-batch was tried next
    assert by_title["score mini-batch 1, try 1"].status == "RUN_TIMEOUT"
    assert [b.retry for b in data.bars].count(True) == 3
    assert data.span == 4.0  # first start T0, last end T0 + 3.0 + 1.0
    assert len(data.ends_ok) == 3 and len(data.ends_failed) == 4
    assert data.slowest[0]["mini-batch"] in {"1", "2"}
    [failure] = data.failures
    assert failure["error"] == "ValueError: mini-batch 1 is bad"
    assert failure["inputs"] == "/data/big.csv bytes 0-4096"
    budgets = {b["setting"]: b for b in data.budgets}
    assert budgets["mini_batch_error_threshold"]["used"] == "1"
    assert budgets["mini_batch_error_threshold"]["limit"] == "3"
    assert budgets["error_threshold"]["limit"] == "no limit"
    assert budgets["1 + max_retries"]["used"] == "3"
    assert budgets["progress_update_timeout"]["limit"] == "105"  # 3 x (5 + 30)
    assert data.next_command == f"daskprs rerun-failed {root}"


def test_the_page_is_self_contained_and_draws_every_try(tmp_path):
    root, tries = failing_run(tmp_path)
    page = render_html(build_report(read_run(root)))
    ids = re.findall(r'<g id="try-(\d+)"><title>([^<]*)</title>', page)
    assert sorted(int(i) for i, _ in ids) == list(range(len(tries)))
    titles = [t for _, t in ids]
    assert any("mini-batch 1, try 1: RUN_TIMEOUT" in t for t in titles)
    assert any("ValueError: mini-batch 1 is bad" in t for t in titles)
    # nothing to fetch: no script, no stylesheet or image link, only in-page references
    assert "<script" not in page
    assert re.findall(r'(?:src|href)="(?!#)', page) == []
    assert re.findall(r"url\((?!#)", page) == []
    for section in ("Budgets", "Timeline", "Throughput", "Slowest", "Failures", "Resources"):
        assert f"<h2>{section}" in page
    assert "/data/big.csv bytes 0-4096" in page
    assert 'class="badge succeeded"' in page


def test_a_run_that_has_not_finished_a_try_yet(tmp_path):
    root = make_run(tmp_path / "r", batches=3, outcome=None, lock_pid=os.getpid())
    page = render_html(build_report(read_run(root)))
    assert 'class="badge running"' in page
    assert "no try has ended yet" in page
    assert "the resource monitor took fewer than two samples" in page


def test_resource_monitor_curves_when_it_sampled(tmp_path):
    root, _ = failing_run(tmp_path)
    perf = root / "logs" / "perf" / "node000"
    perf.mkdir(parents=True)
    (perf / "process000.csv").write_text(
        "Time,Node CPU Percent,Node Memory Percent,Node Memory Used MB,Disk Used Percent,"
        "Process Id,Process CPU Percent,Process RSS MB\n"
        "2026-09-21 14:13:20,50.0,20.0,1000.0,30.0,123,99.0,150.5\n"
        "2026-09-21 14:13:21,60.0,20.0,1000.0,30.0,123,98.0,151.5\n"
        "2026-09-21 14:13:22,55.0,20.0,1000.0,30.0,,,\n"
    )
    view = read_run(root)
    [series] = view.perf
    assert (series.node, series.process) == ("node000", "process000")
    assert series.proc_rss_mb == [150.5, 151.5, None]
    page = render_html(build_report(view))
    assert "the resource monitor took fewer than two samples" not in page
    assert "resident memory of each process" in page
    assert "node000 (whole node)" in page


def test_report_command_writes_the_page(tmp_path):
    root, _ = failing_run(tmp_path)
    result = CliRunner().invoke(cli, ["report", str(root)])
    assert result.exit_code == 0, result.output
    assert (root / "report.html").read_text().startswith("<!DOCTYPE html>")
    target = tmp_path / "out" / "r.html"
    result = CliRunner().invoke(cli, ["report", str(root), "-o", str(target)])
    assert result.exit_code == 0, result.output
    assert f"report written to {target}" in result.output
    assert "Timeline of tries per process" in target.read_text()
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a daskprs run directory" in result.output


def test_a_single_resource_sample_draws_no_empty_chart(tmp_path):
    """A run shorter than the sampling interval has one sample: no curve can be drawn."""
    root, _ = failing_run(tmp_path)
    perf = root / "logs" / "perf" / "node000"
    perf.mkdir(parents=True)
    (perf / "process000.csv").write_text(
        "Time,Node CPU Percent,Node Memory Percent,Node Memory Used MB,Disk Used Percent,"
        "Process Id,Process CPU Percent,Process RSS MB\n"
        "2026-09-21 14:13:20,50.0,20.0,1000.0,30.0,,,\n"
    )
    page = render_html(build_report(read_run(root)))
    assert "the resource monitor took fewer than two samples" in page


@pytest.mark.parametrize("how", ["read-only", "full"])
def test_a_run_directory_that_cannot_hold_the_report_is_a_clear_error(tmp_path, how):
    """Exit 2 naming the file, why, and -o to write it elsewhere; no file left half-written."""
    with tmpfs(tmp_path / "fs", "size=1m") as fs:
        root, _ = failing_run(fs)
        if how == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
            why = "Read-only file system"
        else:
            with open(fs / "filler", "wb", buffering=0) as f:  # until the disk is full
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"x" * 4096)
            why = "No space left on device"
        result = CliRunner().invoke(cli, ["report", str(root)])
        target = root / "report.html"
        assert result.exit_code == 2, result.output
        assert f"cannot write the report {target}: {why}" in result.output
        assert f"-o FILE (daskprs report {root} -o FILE)" in result.output
        assert not target.exists() and not (root / "report.html.tmp").exists()
        elsewhere = tmp_path / "report.html"
        result = CliRunner().invoke(cli, ["report", str(root), "-o", str(elsewhere)])
        assert result.exit_code == 0, result.output
        assert elsewhere.read_text().startswith("<!DOCTYPE html>")
