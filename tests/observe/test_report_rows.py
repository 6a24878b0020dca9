"""The try report's rows are written once for each batch of tries, secrets still masked
(issue 23: one write and flush a try was a tenth of the driver's time)."""

from __future__ import annotations

from daskprs.observe.logs import REPORT_HEADER, Report, _written_row, format_report_row
from daskprs.results.outcome import Status, TryRecord


def test_rows_are_written_at_a_flush_and_secrets_masked(tmp_path):
    path = tmp_path / "logs" / "processed.csv"
    report = Report(str(path))
    plain = TryRecord(mb=0, try_no=1, status=Status.RUN_DONE, node="n1", process="n1:p0")
    leaky = TryRecord(
        mb=1, try_no=1, status=Status.RUN_EXCEPTION, node="n1", error="failed: --token abc123"
    )
    odd = TryRecord(mb=2, try_no=1, status=Status.RUN_DONE, node="db?sig=s3cr3t", process="p")
    for rec in (plain, leaky, odd):
        report.add(rec)
    report._f.flush()
    assert path.read_text() == REPORT_HEADER + "\n"  # nothing but the header before a flush
    report.flush()
    text = path.read_text()
    assert text.startswith(REPORT_HEADER + "\n" + format_report_row(plain))
    assert "abc123" not in text and "s3cr3t" not in text and text.count("***") == 2
    report.add(plain)
    report.close()  # closing writes what is left
    assert path.read_text().count(format_report_row(plain)) == 2


def test_a_row_is_what_the_csv_writer_gives():
    """Rows with nothing to quote are formatted directly: the bytes the CSV writer gives."""
    base = dict(mb=7, try_no=2, status=Status.RUN_DONE, node="node0", process="process1")
    records = [
        TryRecord(**base),
        TryRecord(**base, total=100, succeeded=99, failed=1, start_time=1.7e9 + 0.75),
        TryRecord(**{**base, "start_time": 1.7e9 + 0.999}, elapsed=1.23456, run_seconds=9.8765),
        TryRecord(**{**base, "node": 'a,"b"'}, total=None),
        TryRecord(**{**base, "process": "p\nq"}),
        TryRecord(**{**base, "node": " spaced "}),
        TryRecord(**{**base, "status": Status.RUN_TIMEOUT}, error="took too long, killed"),
        TryRecord(**{**base, "status": Status.RUN_EXCEPTION}, error='bad "quote"\nsecond line'),
    ]
    for rec in records:
        assert format_report_row(rec) == _written_row(rec), rec
    # the start time to the second, whatever its fraction
    assert format_report_row(records[2]).split(",")[4] == "2023-11-14 22:13:20"
    assert format_report_row(records[0]).split(",")[4] == ""
