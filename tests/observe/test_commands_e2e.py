"""``daskprs status`` and ``daskprs report`` through the command line on real runs: a finished
run with a failure, a timeout and retries (its report opened in headless Chromium), and a run
watched while it runs, then interrupted."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import make_files, poll_for, write_job

from daskprs.observe.runview import read_run

pytestmark = pytest.mark.slow

SCRIPT = """
import os, time

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if "f003.txt" in names:
        raise ValueError("bad row in f003")
    flag = os.path.join(os.environ["FLAGS"], "slow-once")
    if "f005.txt" in names and not os.path.exists(flag):
        open(flag, "w").close()
        time.sleep(60)  # killed by the timeout, then retried
    time.sleep(0.1)
    return names
"""

HANGS = """
import os, time

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if names[0] >= "f002.txt":
        time.sleep(600)
    return names
"""

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def daskprs(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of 10 one-file mini-batches: one always fails (3 tries), one times out once."""
    folder = tmp_path_factory.mktemp("job")
    make_files(folder / "data", 10)
    (folder / "flags").mkdir()
    job = write_job(
        folder,
        SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"retry_settings:\n  max_retries: 2\n  timeout: 1\n"
        f"environment_variables:\n  FLAGS: {folder / 'flags'}",
        program_arguments="--resource_monitor_interval 0.2",
    )
    # a dashboard asked for: its address is printed (none is served by default)
    done = daskprs("run", str(job), "--run-dir", "run", cwd=folder, env={"DASKPRS_DASHBOARD": ":0"})
    assert done.returncode == 0, done.stderr
    (folder / "stderr.txt").write_text(done.stderr)
    return folder / "run"


def test_plain_progress_lines_when_stderr_is_not_a_terminal(finished_run):
    err = (finished_run.parent / "stderr.txt").read_text()
    assert "[score] 10/10 mini-batches processed (9 done, 1 failed, 0 running)" in err
    assert "\x1b[" not in err  # no escape codes in a log file
    assert "━" not in err
    assert "Dask dashboard: http://127.0.0.1:" in err


def test_status_of_a_finished_run_with_a_failure(finished_run):
    done = daskprs("status", str(finished_run), cwd=finished_run.parent)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "run run: SUCCEEDED" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("score"))
    assert row.split()[1:8] == ["with", "failures", "9", "1", "0", "0", "10"]
    assert "score #3  RUN_EXCEPTION after 3 tries: ValueError: bad row in f003" in out
    assert f"inputs: {finished_run.parent / 'data' / 'f003.txt'}" in out
    assert f"next: daskprs rerun-failed {finished_run}" in out


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is in the `test` extra")
    return path


def test_report_renders_in_chromium_with_every_try(finished_run, tmp_path):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    target = tmp_path / "report.html"
    done = daskprs("report", str(finished_run), "-o", str(target), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with open(finished_run / "logs/sys/job_report/processed_mini-batches.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["Status"] for r in rows} >= {"RUN_DONE", "RUN_EXCEPTION", "RUN_TIMEOUT"}
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = browser.new_page()
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("request", lambda r: requests.append(r.url))
            page.goto(target.as_uri())
            page.wait_for_load_state("load")
            boxes = page.locator('#timeline g[id^="try-"]')
            assert boxes.count() == len(rows)  # every try of the CSV report is drawn
            # each box has a size on the screen and names its mini-batch and try
            for i in range(boxes.count()):
                box = boxes.nth(i).bounding_box()
                assert box is not None and box["width"] > 0 and box["height"] > 0
            titles = page.locator("#timeline g[id^='try-'] > title").all_text_contents()
            assert sum("RUN_TIMEOUT" in t for t in titles) == 1
            assert sum("RUN_EXCEPTION" in t for t in titles) == 3
            assert page.locator("#throughput svg").count() == 1
            assert page.locator("#resources svg").count() == 1
            assert page.locator("h1 .badge").inner_text().lower() == "succeeded"
            assert "bad row in f003" in page.locator("table").last.inner_text()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith("file:")] == []  # nothing from a network
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_status_and_report_while_running_then_interrupted(tmp_path):
    make_files(tmp_path / "data", 6)
    job = write_job(
        tmp_path, HANGS, input_yaml="type: uri_folder\npath: ./data", mini_batch_size='"1"'
    )
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", str(run_dir)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # SIGINT at its default even where pytest runs with it ignored (bash's background jobs)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        poll_for(
            lambda: (
                (run_dir / "run.json").exists()
                and any(s.count("DONE") == 2 for s in read_run(run_dir).steps)
            ),
            timeout=120,
        )
        done = daskprs("status", str(run_dir), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "RUNNING" in done.stdout and f"process {proc.pid}" in done.stdout
        assert "next: wait for it to end" in done.stdout
        done = daskprs("report", str(run_dir), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        page = (run_dir / "report.html").read_text()
        assert 'class="badge running"' in page
        assert page.count('<g id="try-') == 2
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    done = daskprs("status", str(run_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "INTERRUPTED" in done.stdout
    assert f"next: daskprs run --resume {run_dir}" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith("score"))
    assert row.split()[1:4] == ["interrupted", "2", "0"]  # two done and kept, none failed
    assert "score #2  CANCELLED" in done.stdout
    done = daskprs("report", str(run_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    page = (run_dir / "report.html").read_text()
    assert 'class="badge interrupted"' in page
    assert f"daskprs run --resume {run_dir}" in page
