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
    """The events of a ledger file in the order they were written (none for a missing file;
    a line cut short by a crash is skipped)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def ledger_tries(path: str) -> list[TryRecord]:
    """Every try a ledger recorded, in the order they ended."""
    return [
        TryRecord.from_dict(e["record"]) for e in ledger_events(path) if e.get("event") == "try"
    ]


def read_ledger(path: str) -> LedgerState:
    """Replay a ledger file (missing file: an empty state)."""
    state = LedgerState()
    for event in ledger_events(path):
        kind = event.get("event")
        if kind == "session":
            state.sessions += 1
            if not state.header:
                state.header = event.get("header", {})
        elif kind == "try":
            final = event.get("final")
            state.add_try(
                TryRecord.from_dict(event["record"]), BatchState(final) if final else None
            )
        elif kind == "final":
            record = event.get("record")
            state.add_final(
                event["mb"],
                BatchState(event["state"]),
                TryRecord.from_dict(record) if record is not None else None,
            )
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
        self._f = open(path, "a", encoding="utf-8")

    def _write(self, event: dict[str, Any]) -> None:
        self._f.write(json.dumps(event, default=str) + "\n")
        self._f.flush()

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
