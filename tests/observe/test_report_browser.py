"""The report as a person sees it, in headless Chromium: the figures read from the page's DOM
equal the ledger's and the job's own summary (counts, items, failed items, the longest try),
no card is cut, the throughput legend covers no bar, the failure's list is there, the pause
between sessions is marked, and no resource chart is drawn from samples that measured
nothing. One run directory written by hand, and one real run: a tabular mini-batch of 20,000
rows that times out, in a run and its ``rerun-failed``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_job
from rundirs import SETTINGS
from sessionruns import done, perf_file, timed_out, write_run

from daskprs.observe.report import write_report
from daskprs.observe.runview import read_run
from daskprs.results.ledger import ledger_tries

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

# What the page shows, read from its DOM: the cards, the budgets, the slowest mini-batches,
# the failure's list, where the throughput legend and bars are, and what the figures hold.
READ_PAGE = """() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const rows = (table) => [...table.querySelectorAll('tbody tr')].map((tr) => {
    const heads = [...table.querySelectorAll('thead th')].map((th) => th.innerText.trim());
    const cells = [...tr.querySelectorAll('td')].map((td) => td.innerText.trim());
    return Object.fromEntries(heads.map((h, i) => [h, cells[i]]));
  });
  const tables = [...document.querySelectorAll('main > table')];
  return {
    facts: [...document.querySelectorAll('.fact')].map((f) => ({
      label: f.querySelector('span').innerText.trim(),
      value: f.querySelector('b').innerText.trim(),
      cut: f.scrollWidth > f.clientWidth || f.querySelector('b').scrollWidth
        > f.querySelector('b').clientWidth,
    })),
    budgets: rows(tables[0]),
    slowest: rows(tables[1]),
    failure: (document.querySelector('.failure') || {innerText: ''}).innerText,
    listed: [...document.querySelectorAll('.failure li')].map((li) => li.innerText.trim()),
    legend: document.querySelector('#throughput-legend')
      ? box(document.querySelector('#throughput-legend')) : null,
    bars: [...document.querySelectorAll('#throughput g[id^="bar-"]')].map(box)
      .filter((b) => b.h > 0.5),
    pauses: document.querySelectorAll('#timeline g[id^="pause-"]').length,
    resourceCharts: document.querySelectorAll('#resources svg').length,
    resources: document.querySelector('#resources').innerText,
    badge: document.querySelector('h1 .badge').innerText.toLowerCase(),
  };
}"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    pytest.importorskip("playwright.sync_api", reason="playwright is in the `test` extra")
    return path


def read_page(html: Path, screenshot: Path | None = None) -> dict:
    """Open ``html`` in headless Chromium and read the page's figures from its DOM."""
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile,
            executable_path=chromium,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1200, "height": 2400},
        )
        try:
            page = browser.new_page()
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(html.as_uri())
            page.wait_for_load_state("load")
            shown = page.evaluate(READ_PAGE)
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    return shown


def card(shown: dict, label: str) -> str:
    """The card named ``label`` (with or without a note in brackets)."""
    named = [
        f["value"]
        for f in shown["facts"]
        if re.fullmatch(rf"{re.escape(label)}( \(.*)?", f["label"])
    ]
    [value] = named
    return value


def number(text: str) -> float:
    return float(re.match(r"[\d,.]+", text).group(0).replace(",", ""))


def overlaps(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def assert_page_whole(shown: dict) -> None:
    """No card cut, a legend clear of every bar."""
    assert [f["label"] for f in shown["facts"] if f["cut"]] == []
    assert shown["legend"] is not None and shown["bars"]
    assert [b for b in shown["bars"] if overlaps(shown["legend"], b)] == []


def test_the_page_in_chromium_shows_the_ledgers_figures(tmp_path):
    """Six mini-batches of 20,000 rows, most finished in the first second (tall bars where a
    legend inside the chart would sit); one timed out at 5 s without counting its rows (the
    plan counted them) and failed the job's budget; an interrupt, then a resume an hour
    later; the resource monitor's files hold only its first looks."""
    first = [(done(mb, 0.02 * mb, 0.05), "DONE") for mb in range(4)]
    first.append((timed_out(4, 0.0, 5.3), "FAILED"))
    details = ["  mini-batch 4: run() took longer than the timeout of 5 s"]
    root = write_run(
        tmp_path / "r",
        {"score": [first, [(done(5, 3600.0, 0.05), "DONE")]]},
        batches={"score": 6},
        settings={**SETTINGS, "resource_monitor_interval": 600.0},
        plan_rows={"score": [20_000] * 6},
        result=[
            "outcome: FAILED",
            "failure: step score: 1 mini-batch failed, over mini_batch_error_threshold (0) "
            "by 1. Failed mini-batches:",
            *details,
        ],
    )
    perf_file(root, "process000", [(-1, "0.0,5.8,1390.9,24.0,,,"), (3599, "0.0,5.9,1391,24.0,,,")])
    target = tmp_path / "report.html"
    write_report(read_run(root), str(target))
    shown = read_page(target)
    assert_page_whole(shown)

    tries = ledger_tries(str(root / "steps/score/ledger.jsonl"))
    assert card(shown, "mini-batches") == "5 of 6 done"
    assert card(shown, "failed") == "1"
    assert number(card(shown, "items ok")) == sum(t.succeeded for t in tries if t.ok)
    assert number(card(shown, "items failed")) == 20_000  # the plan's rows of mini-batch 4
    assert card(shown, "tries") == f"{len(tries)} (0 retries)"
    budgets = {b["setting"]: b["used"] for b in shown["budgets"]}
    assert number(budgets["timeout"]) == 5.3
    assert number(budgets["error_threshold"]) == 20_000
    slowest = shown["slowest"][0]
    assert (slowest["mini-batch"], slowest["run() seconds"]) == ("4", "5.30")
    assert card(shown, "busy span") == f"{5.3 + 0.05:.1f} s"  # the hour's pause cut out
    assert card(shown, "paused between sessions") == "60 min"
    assert shown["pauses"] == 1
    assert shown["listed"] == [d.strip() for d in details]
    assert shown["failure"].splitlines()[0].endswith("Failed mini-batches:")
    assert shown["resourceCharts"] == 0
    assert shown["resources"].startswith("not sampled")


SCRIPT = """
import time

def run(mini_batch):
    if int(mini_batch["id"].iloc[0]) == 20000:
        time.sleep(600)  # killed at the 3 s timeout
    return mini_batch[["id"]]
"""


def daskprs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_a_real_timed_out_table_reads_the_same_in_the_summary_status_and_page(tmp_path):
    _chromium()
    (tmp_path / "table").mkdir()
    for i in range(3):
        rows = range(i * 20_000, (i + 1) * 20_000)
        pd.DataFrame({"id": rows, "v": i}).to_csv(tmp_path / f"table/t{i}.csv", index=False)
    (tmp_path / "table/MLTable").write_text(
        "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited: {delimiter: ','}\n"
    )
    job = write_job(
        tmp_path,
        SCRIPT,
        input_yaml="type: mltable\npath: ./table",
        mini_batch_size='"20000rows"',
        extra="retry_settings:\n  max_retries: 0\n  timeout: 3\nerror_threshold: -1\n"
        "mini_batch_error_threshold: -1",
    )
    run_dir = tmp_path / "run"
    # the resource monitor at its default interval (600 s): one look per session
    first = daskprs("run", str(job), "--run-dir", str(run_dir), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = daskprs("rerun-failed", str(run_dir), cwd=tmp_path)  # a second session
    assert again.returncode == 0, again.stderr
    summary = (run_dir / "logs/job_result.txt").read_text()
    ok, failed = map(int, re.search(r"(\d+) items succeeded, (\d+) failed", summary).groups())
    assert (ok, failed) == (40_000, 20_000)
    status = daskprs("status", str(run_dir), cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines() if line.strip().startswith("score"))
    assert row.split()[-1] == f"{ok}/{failed}"
    target = tmp_path / "report.html"
    made = daskprs("report", str(run_dir), "-o", str(target), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    shown = read_page(target, screenshot=tmp_path / "report.png")
    assert_page_whole(shown)

    tries = ledger_tries(str(run_dir / "steps/score/ledger.jsonl"))
    killed = [t for t in tries if t.status == "RUN_TIMEOUT"]
    assert len(killed) == 2  # the run's try and the rerun's
    # the time each ran in run(): what the child measured, else its wall time in the worker
    # (the slot killed the child before it could report), at least the 3 s timeout
    ran = [t.run_seconds if t.run_seconds > 0 else max(t.elapsed, 3.0) for t in killed]
    assert card(shown, "mini-batches") == "2 of 3 done"
    assert card(shown, "failed") == "1"
    assert (number(card(shown, "items ok")), number(card(shown, "items failed"))) == (ok, failed)
    budgets = {b["setting"]: b["used"] for b in shown["budgets"]}
    assert budgets["timeout"].startswith(f"{max(ran):.2f}")
    assert number(budgets["timeout"]) >= 3.0
    assert number(budgets["error_threshold"]) == failed
    slowest = next(r for r in shown["slowest"] if r["state"] == "FAILED")
    assert slowest["run() seconds"] == f"{sum(ran):.2f}"
    assert shown["pauses"] == 1  # between the run and its rerun
    assert shown["resourceCharts"] == 0  # each perf file: two first looks, 0.0 and no child
    assert shown["resources"].startswith("not sampled")
    assert shown["badge"] == "succeeded"
