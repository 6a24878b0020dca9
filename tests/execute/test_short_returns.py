"""Rows ``run()`` does not return count as failed items, and every record says which
mini-batch returned how few: the budget's message, job_result.txt, job_error.txt, status."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import write_job

from daskprs.api import run_job
from daskprs.observe.report import build_report, render_html
from daskprs.observe.runview import read_run
from daskprs.observe.status import format_status

pytestmark = pytest.mark.slow

RETURNS_NINE = """
def run(mini_batch):
    return mini_batch.head(9)
"""


def table(folder, rows):
    folder.mkdir()
    pd.DataFrame({"a": range(rows)}).to_csv(folder / "x.csv", index=False)
    (folder / "MLTable").write_text(
        "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {delimiter: ','}\n"
    )


@pytest.mark.parametrize("threshold", [10, -1])
def test_a_short_return_is_named_wherever_its_failed_items_are_counted(tmp_path, threshold):
    table(tmp_path / "t", 2000)
    job = write_job(
        tmp_path,
        RETURNS_NINE,
        input_yaml="type: mltable\npath: ./t\nmode: direct",
        mini_batch_size='"1mb"',
        extra=f"error_threshold: {threshold}",
    )
    run_dir = tmp_path / "run"
    lines: list[str] = []
    result = run_job(job, run_dir=run_dir, workers=1, echo=lines.append)
    why = "run() returned 9 rows for 2000 inputs"
    if threshold >= 0:
        assert not result.ok
        assert "1991 items failed, over error_threshold (10)" in (result.failure or "")
        assert f"mini-batch 0: {why}" in (result.failure or "")
    else:
        assert result.ok, result.failure
        assert result.steps[0].short_returns[0].startswith(why)
        assert "1 mini-batch done with failed items" in lines[-1]
    assert (
        f"mini-batch 0 done with failed items: {why}"
        in (run_dir / "logs" / "job_result.txt").read_text()
    )
    assert why in (run_dir / "logs" / "job_error.txt").read_text()
    view = read_run(run_dir)
    page = render_html(build_report(view))
    assert "Done with failed items" in page and why in page
    status = format_status(view)
    assert "mini-batches done with failed items (1):" in status
    assert f"score #0  1991 failed: {why}" in status


HANGS_ON_THE_FIRST = """
import time

def run(mini_batch, context):
    if context.minibatch_index == 0:
        time.sleep(600)  # killed at its timeout
    return mini_batch
"""


def test_a_table_killed_in_run_counts_the_rows_it_was_given_as_failed(tmp_path):
    """Byte ranges are planned without counting rows; the process says how many rows run()
    got, so a try killed at its timeout counts them as failed items."""
    table(tmp_path / "t", 3000)
    job = write_job(
        tmp_path,
        HANGS_ON_THE_FIRST,
        input_yaml="type: mltable\npath: ./t\nmode: direct",
        mini_batch_size='"4kb"',
        extra="retry_settings:\n  max_retries: 0\n  timeout: 2",
    )
    result = run_job(job, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    summary = result.steps[0].summary
    assert summary["failed"] == 1 and summary["done"] == summary["total"] - 1
    assert summary["failed_items"] > 0
    assert summary["succeeded_items"] + summary["failed_items"] == 3000
