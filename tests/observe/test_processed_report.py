"""The try report agrees with the ledgers after a driver was killed between the two writes:
the next session writes it again from the ledgers before it appends (no cluster needed)."""

from __future__ import annotations

import csv
import os

from daskprs.observe.processed import mark_report, open_report, session_header
from daskprs.results.ledger import Ledger
from daskprs.results.outcome import BatchState, Status, TryRecord
from daskprs.rundir import RunDir


def _try(mb: int, try_no: int = 1, status: Status = Status.RUN_DONE, at: float = 0.0):
    return TryRecord(
        mb=mb, try_no=try_no, status=status, total=1, succeeded=1, node="n", process="p",
        start_time=at or 1_800_000_000.0 + mb, error="" if status == Status.RUN_DONE else "bad",
    )  # fmt: skip


def _session(
    run: RunDir, step: str, tries: list[TryRecord], *, close: bool = True, at=None, mark_at=None
):
    """One driver session of ``step``: its report rows and ledger lines, written as the driver
    writes them; ``close=False`` leaves them as a killed driver does (the ledger written, the
    report's last rows not); ``mark_at``: the two written and marked after that many tries."""
    ledger = Ledger(run.step(step).ledger)
    report = open_report(run)
    header = session_header(step, 0, 10)
    if at is not None:
        header["started"] = at
    ledger.start_session(header)
    for i, record in enumerate(tries):
        if i == mark_at:
            ledger.flush()
            report.flush()
            mark_report(run)
        final = BatchState.DONE if record.status == Status.RUN_DONE else None
        ledger.record_try(record, final)
        report.add(record)
    ledger.flush()
    if close:
        report.close()
        ledger.close()
        mark_report(run)
    else:  # killed after the ledger's write: the report's rows of the batch are lost
        report._rows.clear()
        report.close()
        ledger._f.close()


def _rows(run: RunDir) -> list[tuple[str, str, str]]:
    with open(run.logs.processed_report, encoding="utf-8") as f:
        return [(r["Mini-batch Id"], r["Try"], r["Status"]) for r in csv.DictReader(f)]


def test_rows_lost_with_a_killed_driver_are_written_again_before_the_next_session(tmp_path):
    run = RunDir(str(tmp_path))
    _session(run, "score", [_try(0), _try(1, status=Status.RUN_EXCEPTION)], close=False)
    assert _rows(run) == []  # the ledger holds two tries the report lacks
    _session(run, "score", [_try(1, 2)])
    assert _rows(run) == [
        ("0", "1", "RUN_DONE"),
        ("1", "1", "RUN_EXCEPTION"),
        ("1", "2", "RUN_DONE"),
    ]


def test_a_row_cut_short_is_not_appended_to(tmp_path):
    run = RunDir(str(tmp_path))
    _session(run, "score", [_try(0), _try(1)])
    path = run.logs.processed_report
    with open(path, "rb+") as f:  # a crash in the middle of the report's write
        f.truncate(os.path.getsize(path) - 7)
    _session(run, "score", [_try(2)])
    assert _rows(run) == [("0", "1", "RUN_DONE"), ("1", "1", "RUN_DONE"), ("2", "1", "RUN_DONE")]


def test_a_report_as_the_last_session_left_it_is_appended_to_not_written_again(tmp_path):
    run = RunDir(str(tmp_path))
    _session(run, "score", [_try(0)])
    inode = os.stat(run.logs.processed_report).st_ino
    _session(run, "score", [_try(1)])
    assert os.stat(run.logs.processed_report).st_ino == inode
    assert _rows(run) == [("0", "1", "RUN_DONE"), ("1", "1", "RUN_DONE")]


def test_a_removed_report_is_written_again_from_the_ledgers(tmp_path):
    run = RunDir(str(tmp_path))
    _session(run, "score", [_try(0)])
    os.unlink(run.logs.processed_report)
    _session(run, "score", [_try(1)])
    assert _rows(run) == [("0", "1", "RUN_DONE"), ("1", "1", "RUN_DONE")]


def test_the_sessions_of_all_steps_are_written_in_the_order_they_started(tmp_path):
    run = RunDir(str(tmp_path))
    # step b's folder sorts before step a's: the order is the sessions' start, not the name
    _session(run, "b_prep", [_try(0), _try(1)], at=100.0)
    _session(run, "a_score", [_try(0)], at=200.0)
    _session(run, "b_prep", [_try(2)], at=300.0, close=False)  # a rerun of step b, killed
    _session(run, "a_score", [_try(1)], at=400.0)
    assert [mb for mb, _, _ in _rows(run)] == ["0", "1", "0", "2", "1"]


def test_a_ledger_of_an_older_daskprs_is_ordered_by_its_tries_start(tmp_path):
    run = RunDir(str(tmp_path))
    for step, mb, at in (("later", 7, 1_800_000_500.0), ("earlier", 3, 1_800_000_100.0)):
        ledger = Ledger(run.step(step).ledger)
        ledger.start_session({"step": step, "session": 0, "batches": 10})  # no start time
        ledger.record_try(_try(mb, at=at), BatchState.DONE)
        ledger.close()
    open_report(run).close()
    assert _rows(run) == [("3", "1", "RUN_DONE"), ("7", "1", "RUN_DONE")]


def test_a_driver_killed_after_a_mark_leaves_only_the_rows_past_it_to_add(tmp_path):
    run = RunDir(str(tmp_path))
    _session(run, "score", [_try(0), _try(1), _try(2)], mark_at=1, close=False)
    path = run.logs.processed_report
    inode = os.stat(path).st_ino
    with open(path, "a", encoding="utf-8") as f:  # a row cut short past the mark
        f.write("1,1,n,p,2027-01-15 08")
    _session(run, "score", [_try(3)])
    assert os.stat(path).st_ino == inode  # cut back and appended to, not written again
    assert [mb for mb, _, _ in _rows(run)] == ["0", "1", "2", "3"]


def test_a_ledger_set_aside_since_the_mark_has_the_report_written_again(tmp_path):
    run = RunDir(str(tmp_path))
    _session(run, "score", [_try(0), _try(1)])
    ledger = run.step("score").ledger
    os.replace(ledger, ledger + ".before-force-1")  # a --force that starts the step over
    _session(run, "score", [_try(0), _try(1), _try(2)])
    assert [mb for mb, _, _ in _rows(run)] == ["0", "1", "2"]


def test_a_report_shorter_than_its_mark_is_written_again(tmp_path):
    run = RunDir(str(tmp_path))
    _session(run, "score", [_try(0), _try(1)])
    path = run.logs.processed_report
    with open(path, "rb+") as f:
        f.truncate(os.path.getsize(path) // 2)
    _session(run, "score", [_try(2)])
    assert [mb for mb, _, _ in _rows(run)] == ["0", "1", "2"]


def test_a_new_runs_first_session_has_nothing_to_write_again_and_says_nothing(tmp_path, caplog):
    run = RunDir(str(tmp_path))
    with caplog.at_level("INFO", logger="daskprs.observe.processed"):
        _session(run, "score", [_try(0)])
    assert caplog.records == []
    assert _rows(run) == [("0", "1", "RUN_DONE")]
