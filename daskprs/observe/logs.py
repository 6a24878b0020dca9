"""Azure-style logs and reports of a run: formatting (pure) apart from writing.

Files (docs/run-directory.md#logs): ``logs/sys/job_report/processed_mini-batches.csv`` (one
row a try), ``failed_mini_batches.jsonl``, ``logs/job_result.txt``, ``logs/job_error.txt`` and
``logs/job_progress_overview.<yyyymmddhh>.txt``.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from daskprs.observe.progress import figures
from daskprs.paths import redact, redact_data
from daskprs.results.outcome import TryRecord
from daskprs.rundir import replace_file, replacing

__all__ = [
    "REPORT_HEADER",
    "Report",
    "format_report_row",
    "write_text",
]

REPORT_HEADER = (
    "Mini-batch Id,Try,Node,Process,Start Time,Total,Succeeded,Failed,Elapsed Seconds,"
    "Run Method Seconds,Status,Error Category,Error Message"
)


def _timestamp(seconds: float) -> str:
    return _second(int(seconds)) if seconds else ""


@functools.lru_cache(maxsize=64)
def _second(second: int) -> str:
    """A second as the report writes it (tries end a few thousand a second: formatted once)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))


def format_report_row(rec: TryRecord) -> str:
    """One CSV line of ``processed_mini-batches.csv`` for one try."""
    if not rec.error and _csv_plain(rec.node, rec.process):
        # what the CSV writer gives a row with no field to quote (2.5 us a row, the writer
        # 3.7 us: the report takes one a try)
        total = "" if rec.total is None else rec.total
        return (
            f"{rec.mb},{rec.try_no},{rec.node},{rec.process},{_timestamp(rec.start_time)},"
            f"{total},{rec.succeeded},{rec.failed},{rec.elapsed:.3f},{rec.run_seconds:.3f},"
            f"{rec.status},{rec.error_category},\n"
        )
    return _written_row(rec)


def _written_row(rec: TryRecord) -> str:
    """The row as Python's CSV writer writes it (quotes where a field needs them)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        [
            rec.mb,
            rec.try_no,
            rec.node,
            rec.process,
            _timestamp(rec.start_time),
            "" if rec.total is None else rec.total,
            rec.succeeded,
            rec.failed,
            f"{rec.elapsed:.3f}",
            f"{rec.run_seconds:.3f}",
            rec.status,
            rec.error_category,
            rec.error.splitlines()[0] if rec.error else "",
        ]
    )
    return buf.getvalue()


@functools.lru_cache(maxsize=256)
def _csv_plain(*fields: str) -> bool:
    """Whether no field of ``fields`` needs quotes in a CSV row."""
    return not any(c in field for field in fields for c in ',"\r\n')


@functools.lru_cache(maxsize=256)
def _plain_place(node: str, process: str) -> bool:
    """Whether a report row naming ``node`` and ``process`` and no error text shows no
    secret: its other fields are numbers, times and a status."""
    text = f"{node},{process}"
    return redact(text) == text


class Report:
    """Appends try rows to ``processed_mini-batches.csv`` (header written once).

    Rows are kept until :meth:`flush` (the driver calls it once for each batch of records it
    gathers) and written in one call: one write and flush a try took a tenth of the driver's
    time at a million mini-batches (``python -m benchmarks scale``)."""

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        new = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        self._f = open(self.path, "a", encoding="utf-8")
        self._rows: list[str] = []
        if new:
            self._f.write(REPORT_HEADER + "\n")

    def add(self, rec: TryRecord) -> None:
        """Add the row of one try (written at the next :meth:`flush`)."""
        row = format_report_row(rec)
        # only a row with the script's error text, or an odd node name, can show a secret
        self._rows.append(
            row if not rec.error and _plain_place(rec.node, rec.process) else redact(row)
        )
        if len(self._rows) >= 4096:
            self.flush()

    def flush(self) -> None:
        """Write the rows added since the last flush."""
        if self._rows:
            self._f.write("".join(self._rows))
            self._rows.clear()
        self._f.flush()

    def close(self) -> None:
        self.flush()
        self._f.close()


def write_jsonl(path: str, objects: Iterable[Mapping[str, Any]]) -> None:
    """Write (replace) a JSON-lines file."""
    with replacing(path) as f:
        for obj in objects:
            f.write(json.dumps(redact_data(dict(obj)), default=str) + "\n")


def write_text(path: str, text: str) -> None:
    """Write (replace) a text file, creating its folder; secrets in it are masked."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = redact(text)
    replace_file(path, text if text.endswith("\n") else text + "\n")


def format_progress_overview(
    step: str,
    summary: Mapping[str, int],
    elapsed: float,
    planned_seconds: float,
    before: int = 0,
    slots: int | None = None,
) -> str:
    """The progress overview file's text, with the live display's figures: processed is
    done and failed (a cancelled mini-batch did not run), tries in flight beyond the
    ``slots`` are queued, and the time left is from this session's rate (``before``
    mini-batches were processed in earlier sessions)."""
    f = figures(summary, elapsed, slots, before)
    lines = [
        f"step: {step}",
        f"mini-batches planned: {summary['total']} (planning took {planned_seconds:.2f} s)",
        f"mini-batches processed: {f['processed']}",
        f"mini-batches succeeded: {summary['done']}",
        f"mini-batches failed: {summary['failed']}",
        f"mini-batches cancelled: {summary['cancelled']}",
        f"mini-batches running: {f['running']}",
        f"mini-batches queued: {f['queued']}",
        f"items succeeded: {summary['succeeded_items']}",
        f"items failed: {summary['failed_items']}",
        f"elapsed seconds: {elapsed:.1f}",
    ]
    if f["eta"] is not None and f["finished"] < summary["total"]:
        lines.append(f"estimated seconds left: {f['eta']:.0f}")
    return "\n".join(lines)


_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """A log formatter that masks secrets (:func:`daskprs.paths.redact`) in what it writes."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _daskprs_or_warning(record: logging.LogRecord) -> bool:
    """daskprs's records at every level; Dask's from WARNING up (its INFO lines say what it
    does at every start and close, nothing about the job)."""
    return record.name.startswith("daskprs") or record.levelno >= logging.WARNING


# Dask's console handlers set aside by each driver_logging block running (the innermost last)
_aside: list[list[logging.Handler]] = []


@contextlib.contextmanager
def driver_logging(path: str, console_level: str = "INFO") -> Iterator[logging.Logger]:
    """Send daskprs's own loggers (``daskprs.*``) to ``path`` (everything) and to stderr (at
    ``console_level``, the job's ``logging_level``) while the block runs.

    Dask's own loggers (``distributed.*``: the client in this process, and the embedded
    cluster's scheduler and workers, which run here too) go to ``path`` only, from WARNING
    up: their messages (a comm closed under a request) are about Dask, not the job, and the
    console shows daskprs's account of what happened.
    """
    logger = logging.getLogger("daskprs")
    dask_logger = logging.getLogger("distributed")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(RedactingFormatter(_LOG_FORMAT))
    to_file.setLevel(logging.DEBUG)
    to_file.addFilter(_daskprs_or_warning)
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    to_console.setLevel(getattr(logging, console_level.upper(), logging.INFO))
    # Dask's console handlers (from its logging configuration), set aside for the block;
    # Dask first imported inside it adds its own then: keep_dask_off_console sets them aside
    dask_console = [h for h in dask_logger.handlers if _is_console(h)]
    _aside.append(dask_console)
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(to_file)
    logger.addHandler(to_console)
    for handler in dask_console:
        dask_logger.removeHandler(handler)
    dask_logger.addHandler(to_file)
    try:
        yield logger
    finally:
        _aside.remove(dask_console)
        dask_logger.removeHandler(to_file)
        for handler in dask_console:
            dask_logger.addHandler(handler)
        logger.removeHandler(to_file)
        logger.removeHandler(to_console)
        logger.setLevel(previous)
        to_file.close()


def keep_dask_off_console() -> None:
    """Set aside, for the :func:`driver_logging` block running now, the console handlers
    Dask gave its logger since the block began: Dask configures its logging as it is first
    imported, which the driver does inside the block (in the thread that starts the cluster,
    while the step plans)."""
    if not _aside:
        return
    dask_logger = logging.getLogger("distributed")
    for handler in [h for h in dask_logger.handlers if _is_console(h)]:
        dask_logger.removeHandler(handler)
        _aside[-1].append(handler)


def _is_console(handler: logging.Handler) -> bool:
    return type(handler) is logging.StreamHandler  # not a file: Dask's own to stderr


def to_stderr(line: str) -> None:
    """The default ``echo``: a line on stderr, flushed."""
    print(line, file=sys.stderr, flush=True)
