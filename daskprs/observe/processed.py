"""The try report (``processed_mini-batches.csv``) kept in step with the ledgers.

Every try is recorded in its step's ledger and then in the report, the ledger first, each in
one write for each batch of tries the driver gathers. A driver killed between the two writes
leaves a report short of tries the ledger holds (or ending in a row cut short), and the next
session would append to it: the report would disagree with the ledger for good.

So the driver leaves a mark when the two agree (every few seconds after it wrote both, and
when a session closes): the size and file of the report and of every ledger of the run
(``logs/sys/processed_report.json``). The next session opens the report through
:func:`open_report`:

- the files as the mark says: it appends;
- the files grown since (a driver killed after the mark): the report is cut back to its
  marked size and the rows of the tries each ledger holds past its mark are appended, the
  sessions in the order they started;
- anything else (no mark, a report or ledger replaced, removed or shrunk since, a run of an
  older daskprs): the report is written again from the whole ledgers.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from daskprs.observe.logs import REPORT_HEADER, Report
from daskprs.results.ledger import ledger_sessions
from daskprs.results.outcome import TryRecord
from daskprs.rundir import RunDir, write_json

log = logging.getLogger(__name__)

__all__ = ["mark_report", "open_report", "rebuild_report", "session_header"]

_Files = dict[str, Any]  # the mark: the report's [size, inode] and each ledger's, by step


def session_header(step: str, session: int, batches: int) -> dict[str, Any]:
    """A ledger's session header: the step, the session's number, the step's mini-batches and
    when it started (a report written again orders the sessions of all steps by it)."""
    return {"step": step, "session": session, "batches": batches, "started": time.time()}


def open_report(run: RunDir) -> Report:
    """The run's try report, open to append this session's rows, once it holds a row for
    every try of the ledgers (see the module's text). Call it before the session writes its
    ledger header."""
    mark, now = _read_mark(run), _files(run)
    if mark != now:
        path = run.logs.processed_report
        if now["report"] is None and not any((at or [0])[0] for at in now["ledgers"].values()):
            pass  # a new run: no try on record yet, nothing to write again
        elif _grown(run, mark, now):
            rows = _append_past(run, mark)
            log.info("%d rows of tries missing from %s added from the ledgers", rows, path)
        else:
            rows = rebuild_report(run)
            log.info("the try report %s written again from the ledgers (%d rows)", path, rows)
        mark_report(run)
    return Report(run.logs.processed_report)


def mark_report(run: RunDir) -> None:
    """Leave the mark: call it when the report holds a row for every try of the ledgers (both
    written, nothing kept back). A mark that cannot be written costs the next session only
    the rows past the last one."""
    mark = run.logs.processed_mark
    try:
        os.makedirs(os.path.dirname(mark), exist_ok=True)
        write_json(mark, _files(run))
    except OSError as err:
        log.warning("could not write %s: %s", mark, err)


def rebuild_report(run: RunDir) -> int:
    """Write the try report again from the run's ledgers (atomically); return its rows."""
    path = run.logs.processed_report
    sessions = [s for ledger in _ledgers(run) for s in _sessions(ledger, 0)]
    tmp = f"{path}.tmp"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(tmp):
        os.unlink(tmp)
    rows = _write(tmp, sessions)
    os.replace(tmp, path)
    return rows


def _append_past(run: RunDir, mark: _Files) -> int:
    """Cut the report back to its marked size and append the rows of the tries the ledgers
    hold past their marks; return the rows appended."""
    path = run.logs.processed_report
    with open(path, "rb+") as f:
        f.truncate(mark["report"][0])
    sessions = [
        s
        for ledger in _ledgers(run)
        for s in _sessions(ledger, mark["ledgers"].get(_step_of(ledger), [0])[0])
    ]
    return _write(path, sessions)


def _sessions(ledger: str, start: int) -> list[tuple[float, list[TryRecord]]]:
    """The sessions of ``ledger`` from byte ``start``, each with when it started: a session
    already running at ``start`` (tries before any header) first."""
    out = []
    for header, tries in ledger_sessions(ledger, start):
        started = header.get("started")
        if not header:
            started = float("-inf")
        elif not isinstance(started, int | float):  # a ledger of an older daskprs
            started = min((t.start_time for t in tries if t.start_time), default=0.0)
        out.append((float(started), tries))
    return out


def _write(path: str, sessions: Iterable[tuple[float, list[TryRecord]]]) -> int:
    """Append the rows of ``sessions``' tries to the report ``path``, the sessions in the order
    they started (stable: one ledger's stay in their order)."""
    report = Report(path)
    rows = 0
    try:
        for _, tries in sorted(sessions, key=lambda s: s[0]):
            for record in tries:
                report.add(record)
            rows += len(tries)
    finally:
        report.close()
    return rows


def _grown(run: RunDir, mark: Any, now: _Files) -> bool:
    """Whether every file of ``mark`` is still there, the same file, at least as large (and the
    ledgers marked at a line's end): only rows past the mark are missing."""
    if not isinstance(mark, dict) or mark.get("header") != REPORT_HEADER:
        return False
    try:
        if not _same_or_grown(mark["report"], now["report"]):
            return False
        for step, at in mark["ledgers"].items():
            if not _same_or_grown(at, now["ledgers"].get(step)):
                return False
            if not _line_start(run.step(step).ledger, at[0]):
                return False
    except (KeyError, TypeError, AttributeError, OSError):
        return False
    return True


def _same_or_grown(then: Any, now: Any) -> bool:
    return (
        isinstance(then, list)
        and now is not None
        and len(then) == 2
        and then[1] == now[1]
        and isinstance(then[0], int)
        and 0 <= then[0] <= now[0]
    )


def _line_start(path: str, at: int) -> bool:
    """Whether byte ``at`` of ``path`` starts a line."""
    if at == 0:
        return True
    with open(path, "rb") as f:
        f.seek(at - 1)
        return f.read(1) == b"\n"


def _ledgers(run: RunDir) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(run.steps_root), "*", "ledger.jsonl")))


def _step_of(ledger: str) -> str:
    return os.path.basename(os.path.dirname(ledger))


def _files(run: RunDir) -> _Files:
    """The mark's view of the run now: the report's size and file, and each ledger's."""
    return {
        "header": REPORT_HEADER,
        "report": _stat(run.logs.processed_report),
        "ledgers": {_step_of(p): _stat(p) for p in _ledgers(run)},
    }


def _stat(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_ino]


def _read_mark(run: RunDir) -> Any:
    try:
        with open(run.logs.processed_mark, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
