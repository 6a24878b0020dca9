"""The try report's rows are written once for each batch of tries, secrets still masked
(issue 23: one write and flush a try was a tenth of the driver's time)."""

from __future__ import annotations

from daskprs.observe.logs import REPORT_HEADER, Report, format_report_row
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
