"""The ledger: an append-only record of every try and every mini-batch's final state.

One JSON object a line in ``<run_dir>/steps/<step>/ledger.jsonl``. Replaying it gives each
mini-batch's state (SPEC section 7), so a crashed run resumes from it and a finished one is
rerun for its failed mini-batches only. A line cut short by a crash is ignored. Lines are
flushed as they are written: they survive the driver being killed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from daskprs.paths import redact_data
from daskprs.results.outcome import TryRecord

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
    state: str = "PENDING"
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

    def state_of(self, mb: int) -> str:
        e = self.entries.get(mb)
        return e.state if e is not None else "PENDING"


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
            rec = TryRecord.from_dict(event["record"])
            e = state.entry(rec.mb)
            e.tries = max(e.tries, rec.try_no)
            if event.get("final"):
                e.state = event["final"]
                e.record = rec
                e.part = rec.part if e.state == "DONE" else None
        elif kind == "final":
            e = state.entry(event["mb"])
            e.state = event["state"]
            e.part = event.get("part")
            if event.get("record") is not None:
                e.record = TryRecord.from_dict(event["record"])
    return state


# The fields of a try's record that carry the entry script's messages, where it may have put
# a secret (masked when written); paths and counts are kept as they are.
_TEXT_FIELDS = ("error", "traceback", "warning")


class Ledger:
    """Appends events to a ledger file.

    Parameters
    ----------
    path : str
        The ledger file; its folder is created.
    """

    def __init__(self, path: str):
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")

    def _write(self, event: dict[str, Any]) -> None:
        record = event.get("record")
        if isinstance(record, dict):  # the script's messages, not the paths resume reads
            texts = {k: record[k] for k in _TEXT_FIELDS if record.get(k)}
            event = {**event, "record": {**record, **redact_data(texts)}}
        self._f.write(json.dumps(event, default=str) + "\n")
        self._f.flush()

    def start_session(self, header: dict[str, Any]) -> None:
        self._write({"event": "session", "header": header})

    def record_try(self, record: TryRecord, final: str | None = None) -> None:
        """One try's outcome; ``final`` is the mini-batch's state when the try ended it."""
        event: dict[str, Any] = {"event": "try", "record": record.to_dict()}
        if final is not None:
            event["final"] = final
        self._write(event)

    def record_final(self, mb: int, state: str, record: TryRecord | None) -> None:
        self._write(
            {
                "event": "final",
                "mb": mb,
                "state": state,
                "part": record.part if record is not None and state == "DONE" else None,
                "record": record.to_dict() if record is not None else None,
            }
        )

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
