"""The ledger: an append-only record of every try and every mini-batch's final state.

One JSON object a line in ``<run_dir>/steps/<step>/ledger.jsonl``. Replaying it gives each
mini-batch's state (docs/run-directory.md#the-ledger), so a crashed run resumes from it and a
finished one is rerun for its failed mini-batches only. A line cut short by a crash is
ignored. Lines are flushed as they are written: they survive the driver being killed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from daskprs.paths import redact_data
from daskprs.results.outcome import BatchState, TryRecord

__all__ = [
    "Ledger",
    "LedgerState",
    "MiniBatchEntry",
    "ledger_events",
    "ledger_tries",
    "read_ledger",
]


@dataclass
class MiniBatchEntry:
    """What the ledger knows of one mini-batch."""

    mb: int
    state: BatchState = BatchState.PENDING
    tries: int = 0
    part: str | None = None
    record: TryRecord | None = None


@dataclass
class LedgerState:
    """The replayed ledger: the run's header and one entry per mini-batch seen."""

    header: dict[str, Any] = field(default_factory=dict)
    sessions: int = 0
    entries: dict[int, MiniBatchEntry] = field(default_factory=dict)
    # lines that could not be read (cut short by a crash, or of the wrong shape)
    skipped: int = 0

    def entry(self, mb: int) -> MiniBatchEntry:
        if mb not in self.entries:
            self.entries[mb] = MiniBatchEntry(mb)
        return self.entries[mb]

    def state_of(self, mb: int) -> BatchState:
        e = self.entries.get(mb)
        return e.state if e is not None else BatchState.PENDING

    def add_try(self, record: TryRecord, final: BatchState | None) -> None:
        """A try ended; ``final`` is its mini-batch's state when the try ended it."""
        e = self.entry(record.mb)
        e.tries = max(e.tries, record.try_no)
        if final is not None:
            e.state = final
            e.record = record
            e.part = record.part if final == BatchState.DONE else None

    def add_final(self, mb: int, state: BatchState, record: TryRecord | None) -> None:
        """Mini-batch ``mb`` reached ``state`` without a try of its own (a cancel)."""
        e = self.entry(mb)
        e.state = state
        e.part = record.part if record is not None and state == BatchState.DONE else None
        if record is not None:
            e.record = record


def ledger_events(path: str) -> Iterator[dict[str, Any]]:
    """The events of a ledger file in the order they were written, as written (none for a
    missing file; a line cut short by a crash, or one that is no JSON object, is skipped)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(event, dict):
                yield event


_Event = tuple[str, Any, Any, Any]


def _decode(event: dict[str, Any]) -> _Event:
    """One event, checked and typed: ``("session", header, None, None)``, ``("try",
    record, final state or None, None)`` or ``("final", mb, state, record or None)``.
    Raise ``ValueError`` (or ``KeyError``, ``TypeError``) for one of the wrong shape."""
    kind = event["event"]
    if kind == "session":
        header = event.get("header") or {}
        if not isinstance(header, dict):
            raise TypeError("a session header is an object")
        return ("session", header, None, None)
    if kind == "try":
        final = event.get("final")
        return ("try", _record(event["record"]), BatchState(final) if final else None, None)
    if kind == "final":
        mb = event["mb"]
        if not isinstance(mb, int) or isinstance(mb, bool):
            raise TypeError("a mini-batch id is an integer")
        record = event.get("record")
        return (
            "final",
            mb,
            BatchState(event["state"]),
            _record(record) if record is not None else None,
        )
    raise ValueError(f"unknown event {kind!r}")


def _record(data: Any) -> TryRecord:
    if not isinstance(data, dict):
        raise TypeError("a try record is an object")
    record = TryRecord.from_dict(data)
    for name in ("mb", "try_no"):
        value = getattr(record, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"a try record's {name} is an integer")
    return record


def _events(path: str) -> Iterator[_Event | None]:
    """The ledger's events, typed; None for each line that is torn or of the wrong shape."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                event = json.loads(line)
                yield _decode(event) if isinstance(event, dict) else None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                yield None


def ledger_tries(path: str) -> list[TryRecord]:
    """Every try a ledger recorded, in the order they ended (unreadable lines skipped)."""
    return [e[1] for e in _events(path) if e is not None and e[0] == "try"]


def read_ledger(path: str) -> LedgerState:
    """Replay a ledger file (missing file: an empty state). Lines cut short by a crash or of
    the wrong shape are skipped and counted (:attr:`LedgerState.skipped`)."""
    state = LedgerState()
    for event in _events(path):
        if event is None:
            state.skipped += 1
            continue
        kind, a, b, c = event
        if kind == "session":
            state.sessions += 1
            if not state.header:
                state.header = a
        elif kind == "try":
            state.add_try(a, b)
        else:
            state.add_final(a, b, c)
    return state


# The fields of a try's record that carry the entry script's messages, where it may have put
# a secret (masked when written); paths and counts are kept as they are.
_TEXT_FIELDS = ("error", "traceback", "warning")


def _redacted(record: TryRecord) -> TryRecord:
    """``record`` as the ledger keeps it: secrets masked in the script's messages (the paths
    and counts resume reads are kept as they are)."""
    texts = {k: getattr(record, k) for k in _TEXT_FIELDS if getattr(record, k)}
    if not texts:
        return record
    masked = redact_data(texts)
    return record if masked == texts else record.with_(**masked)


class Ledger:
    """Appends events to a ledger file, and keeps ``state`` (the replayed ledger) up to date
    with them, so the driver never reads back what it wrote.

    Parameters
    ----------
    path : str
        The ledger file; its folder is created.
    state : LedgerState, optional
        The file's state as read before this session (default: empty).
    """

    def __init__(self, path: str, state: LedgerState | None = None):
        self.path = path
        self.state = state if state is not None else LedgerState()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._f = open(path, "ab")
        own = os.fstat(self._f.fileno())
        self._inode = (own.st_dev, own.st_ino)
        self._size = own.st_size

    def _write(self, event: dict[str, Any]) -> None:
        line = (json.dumps(event, default=str) + "\n").encode("utf-8")
        self._f.write(line)
        self._f.flush()
        self._size += len(line)

    def damage(self) -> str | None:
        """What happened to the ledger file behind this writer's back, or None while the file
        on disk is the one it writes, holding exactly what it wrote (the run directory is the
        truth: a ledger deleted, replaced or written by someone else no longer is)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "was deleted"
        if (st.st_dev, st.st_ino) != self._inode:
            return "was replaced by another file"
        if st.st_size != self._size:
            return f"was changed by another writer ({st.st_size} bytes, {self._size} written)"
        return None

    def start_session(self, header: dict[str, Any]) -> None:
        self._write({"event": "session", "header": header})
        self.state.sessions += 1
        if not self.state.header:
            self.state.header = dict(header)

    def record_try(self, record: TryRecord, final: BatchState | None = None) -> None:
        """One try's outcome; ``final`` is the mini-batch's state when the try ended it."""
        record = _redacted(record)
        event: dict[str, Any] = {"event": "try", "record": record.to_dict()}
        if final is not None:
            event["final"] = final
        self._write(event)
        self.state.add_try(record, final)

    def record_final(self, mb: int, state: BatchState, record: TryRecord | None) -> None:
        """Mini-batch ``mb`` reached ``state`` outside a try (a cancel at a stop)."""
        record = _redacted(record) if record is not None else None
        self._write(
            {
                "event": "final",
                "mb": mb,
                "state": state,
                "part": record.part if record is not None and state == BatchState.DONE else None,
                "record": record.to_dict() if record is not None else None,
            }
        )
        self.state.add_final(mb, state, record)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
