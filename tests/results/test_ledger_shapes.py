"""A ledger line that is JSON but of the wrong shape is skipped and reported like a torn line,
by every reader of the ledger: ``status``, ``report`` and ``--resume``."""

from __future__ import annotations

import json

import pytest
from conftest import make_files, output_of, write_job

from daskprs.api import resume_job, run_job
from daskprs.observe.report import build_report, render_html
from daskprs.observe.runview import read_run
from daskprs.observe.status import format_status
from daskprs.results.ledger import ledger_tries, read_ledger
from daskprs.rundir import RunDir

WRONG_SHAPES = [
    {"event": "final", "state": "DONE"},  # no mb
    {"event": "try", "record": {"status": "RUN_DONE"}},  # no mb, no try_no
    {"event": "try", "record": {"mb": "x", "try_no": 1, "status": "RUN_DONE"}},
    {"event": "final", "mb": 0, "state": "SOMEWHERE"},
    {"event": "try", "record": {"mb": 0, "try_no": 1, "status": "GREAT"}},
    {"event": "session", "header": [1, 2]},
    {"event": "party"},
    [1, 2, 3],
    "just a string",
]

ECHO = "import os\n\ndef run(mini_batch):\n    return [os.path.basename(p) for p in mini_batch]\n"


def test_wrong_shapes_are_skipped_and_counted(tmp_path):
    path = tmp_path / "ledger.jsonl"
    good = {"event": "try", "record": {"mb": 1, "try_no": 1, "status": "RUN_DONE"}, "final": "DONE"}
    lines = [json.dumps(good)] + [json.dumps(w) for w in WRONG_SHAPES] + ['{"event": "tr']
    path.write_text("\n".join(lines) + "\n")
    state = read_ledger(str(path))
    assert state.skipped == len(WRONG_SHAPES) + 1
    assert list(state.entries) == [1] and state.entries[1].state == "DONE"
    assert [r.mb for r in ledger_tries(str(path))] == [1]


@pytest.mark.slow
def test_status_report_and_resume_read_past_a_line_of_the_wrong_shape(tmp_path):
    make_files(tmp_path / "data", 4)
    job = write_job(tmp_path, ECHO, input_yaml="type: uri_folder\npath: ./data")
    run_dir = tmp_path / "run"
    assert run_job(job, run_dir=run_dir, workers=1, echo=lambda s: None).ok
    expected = output_of(run_dir).read_text()
    ledger = RunDir(str(run_dir)).step("score").ledger
    with open(ledger, "a", encoding="utf-8") as f:
        f.write(json.dumps({"event": "final", "state": "DONE"}) + "\n")
    view = read_run(run_dir)
    assert "1 unreadable line(s) of steps/score/ledger.jsonl skipped" in format_status(view)
    assert "score" in render_html(build_report(view))
    lines: list[str] = []
    result = resume_job(run_dir, echo=lines.append)
    assert result.ok, result.failure
    assert any("1 unreadable line(s)" in line for line in lines)
    assert output_of(run_dir).read_text() == expected


def test_a_line_cut_short_by_a_crash_does_not_take_the_next_sessions_header(tmp_path):
    """A driver killed mid-write leaves a last line without its end: the next session ends it
    before its own header, so the header is read back and the session after that gets a
    number (and try keys) of its own."""
    import os

    from daskprs.results.ledger import Ledger, snapshot_path
    from daskprs.results.outcome import BatchState, Status, TryRecord

    path = str(tmp_path / "ledger.jsonl")
    first = Ledger(path)
    first.start_session({"step": "score", "session": 0, "batches": 2})
    first.record_try(TryRecord(mb=0, try_no=1, status=Status.RUN_DONE), BatchState.DONE)
    first.flush()
    with open(path, "ab") as f:  # the crash: half of the next line
        f.write(b'{"event": "try", "record": {"mb": 1, "try')
    second = Ledger(path, read_ledger(path))
    second.start_session({"step": "score", "session": 1, "batches": 2})
    second.close()
    os.unlink(snapshot_path(path))  # read the lines themselves, not the close's snapshot
    state = read_ledger(path)
    assert state.sessions == 2
    assert state.skipped == 1  # the torn line alone
    assert ledger_tries(path)[0].mb == 0
