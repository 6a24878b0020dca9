"""The ledger: an append-only record of every try and every mini-batch's final state.

One JSON object a line in ``<run_dir>/steps/<step>/ledger.jsonl``. Replaying it gives each
mini-batch's state (docs/run-directory.md#the-ledger), so a crashed run resumes from it and a
finished one is rerun for its failed mini-batches only. A line cut short by a crash is
ignored. Lines are written and flushed once for each batch of tries the driver gathers
(:meth:`Ledger.flush`): they survive the driver being killed, but for the batch in hand.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import zlib
from array import array
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from daskprs.paths import redact_data
from daskprs.results.outcome import BatchState, Status, TryRecord
from daskprs.rundir import replacing

log = logging.getLogger(__name__)

__all__ = [
    "Ledger",
    "LedgerState",
    "MiniBatchEntry",
    "ledger_events",
    "ledger_sessions",
    "ledger_tries",
    "read_ledger",
    "snapshot_path",
    "write_snapshot",
]


@dataclass
class MiniBatchEntry:
    """What the ledger knows of one mini-batch."""

    mb: int
    state: BatchState = BatchState.PENDING
    tries: int = 0
    part: str | None = None
    record: TryRecord | None = None


_STATES = (None, *BatchState)  # a state's code in the columns is its index here
_CODE = {state: code for code, state in enumerate(_STATES) if state is not None}
_DONE = _CODE[BatchState.DONE]
_STATUSES = tuple(Status)
_STATUS_CODE = {status: code for code, status in enumerate(_STATUSES)}
_NONE = -(2**63)  # an item count that is not known
# Ids kept in the columns (indexed by id); any other (negative, or far past the others) in a
# dict of entries.
_DENSE_SLACK = 1 << 20


_PART, _REC_PART, _KEY = 0, 1, 2  # the text columns: a mini-batch's part, its record's, its key


class _Texts:
    """Columns of strings by position, packed in one buffer (a part path in about 30
    bytes, not 120); two columns may share one string's bytes.

    A string's folder (up to its last ``/``) is kept once in :attr:`dirs` and the string
    as ``\x01<folder's index>\x02<the rest>``: a million parts of one folder take their
    names' bytes, not their paths' (a string that starts with ``\x01`` or ``\x03`` itself
    is kept as ``\x03<string>``)."""

    _DIRS_FROM = 16  # shorter folders are kept in the string

    def __init__(self, columns: int):
        self._buf = bytearray()
        self._at = [array("q") for _ in range(columns)]
        self.dirs: list[str] = []
        self._dir_ids: dict[str, int] = {}

    def set_dirs(self, dirs: list[str]) -> None:
        """Take the folders of a snapshot."""
        self.dirs = list(dirs)
        self._dir_ids = {d: i for i, d in enumerate(self.dirs)}

    def _encode(self, text: str) -> bytes:
        cut = text.rfind("/") + 1
        if cut >= self._DIRS_FROM:
            folder = text[:cut]
            at = self._dir_ids.get(folder)
            if at is None:
                at = self._dir_ids[folder] = len(self.dirs)
                self.dirs.append(folder)
            return b"\x01%d\x02" % at + text[cut:].encode("utf-8", "surrogateescape")
        data = text.encode("utf-8", "surrogateescape")
        return b"\x03" + data if data[:1] in (b"\x01", b"\x03") else data

    def grow(self, n: int) -> None:
        for at in self._at:
            at.extend(array("q", [-1]) * (n - len(at)))

    def set(self, column: int, i: int, text: str | None) -> None:
        if text is None:
            self._at[column][i] = -1
            return
        self._at[column][i] = len(self._buf)
        self._buf += self._encode(text) + b"\0"

    def share(self, column: int, i: int, source: int) -> None:
        """Column ``column`` of ``i`` holds what column ``source`` holds."""
        self._at[column][i] = self._at[source][i]

    def get(self, column: int, i: int) -> str | None:
        at = self._at[column][i]
        if at < 0:
            return None
        data = self._buf[at : self._buf.index(0, at)]
        if data[:1] == b"\x01":
            mark = data.index(2)
            name = data[mark + 1 :].decode("utf-8", "surrogateescape")
            return self.dirs[int(data[1:mark])] + name
        if data[:1] == b"\x03":
            data = data[1:]
        return data.decode("utf-8", "surrogateescape")


class LedgerState:
    """The replayed ledger: the run's header and what it knows of each mini-batch seen.

    Kept in columns (arrays by mini-batch id) rather than an object a mini-batch: a million
    mini-batches replay in about 130 MB less (``python -m benchmarks scale``). A try record
    with no message and no failed item is kept field by field, exactly; any other one as it
    is. :attr:`entries` reads as a mapping of id to :class:`MiniBatchEntry`.
    """

    def __init__(self) -> None:
        self.header: dict[str, Any] = {}
        self.sessions = 0
        # lines that could not be read (cut short by a crash, or of the wrong shape)
        self.skipped = 0
        self._n = 0  # the ids the columns hold: 0.._n-1
        self._state = bytearray()  # 0: not seen
        self._tries = array("i")
        self._has_record = bytearray()  # 0: none; 1: in the columns; 2: in _records
        self._status = bytearray()
        self._rec_try = array("i")  # the try number of the record
        self._total = array("q")
        self._succeeded = array("q")
        self._times = array("d")  # start_time, elapsed, run_seconds: 3 a mini-batch
        self._place = array("i")  # index of (node, process) in _places
        self._places: list[tuple[str, str]] = []
        self._place_ids: dict[tuple[str, str], int] = {}
        self._texts = _Texts(3)
        self._records: dict[int, TryRecord] = {}  # records with a message or failed items
        self._other: dict[int, MiniBatchEntry] = {}  # ids outside the columns
        # the ledger bytes replayed into this state, and their CRC-32 (for its snapshot)
        self._covered = 0
        self._crc = 0

    # -- reading ---------------------------------------------------------------------------
    @property
    def entries(self) -> Mapping[int, MiniBatchEntry]:
        """The mini-batches seen, by id (in id order), each as a :class:`MiniBatchEntry`."""
        return _Entries(self)

    def state_of(self, mb: int) -> BatchState:
        if 0 <= mb < self._n and self._state[mb]:
            return _STATES[self._state[mb]]
        e = self._other.get(mb)
        return e.state if e is not None else BatchState.PENDING

    def count(self, state: BatchState) -> int:
        """How many mini-batches seen are in ``state``."""
        return self._state.count(_CODE[state]) + sum(
            1 for e in self._other.values() if e.state == state
        )

    def ids_in(self, *states: BatchState) -> Iterator[int]:
        """The ids of the mini-batches in one of ``states``, in id order (without making
        their entries)."""
        codes = {_CODE[s] for s in states}
        other = sorted(mb for mb, e in self._other.items() if e.state in states)
        low = [mb for mb in other if mb < 0]
        yield from low
        for code in codes if len(codes) == 1 else ():
            at = self._state.find(code)
            while at >= 0:
                yield at
                at = self._state.find(code, at + 1)
        if len(codes) > 1:
            state = self._state
            for mb in range(self._n):
                if state[mb] in codes:
                    yield mb
        yield from other[len(low) :]

    def parts(self) -> Mapping[int, str]:
        """The part of every DONE mini-batch that has one, by id in id order: a view, each
        path made when it is read (a million paths took 150 MB as a dict)."""
        return _Parts(self)

    def part_of(self, mb: int) -> str | None:
        """The committed part of ``mb`` (None: not DONE, or no part)."""
        if 0 <= mb < self._n and self._state[mb]:
            return self._texts.get(_PART, mb) if self._state[mb] == _DONE else None
        e = self._other.get(mb)
        return e.part if e is not None and e.state == BatchState.DONE else None

    def records_of(self, *states: BatchState) -> Iterator[tuple[int, TryRecord]]:
        """``(id, last record)`` of the mini-batches in ``states`` whose record is kept whole:
        every one with a message or failed items (and any of unusual types), in id order."""
        for mb in sorted(self._records):
            if _STATES[self._state[mb]] in states:
                yield mb, self._records[mb]
        # (ids outside the columns)
        for mb, e in sorted(self._other.items()):
            if e.state in states and e.record is not None and not _plain(e.record):
                yield mb, e.record

    def _get(self, mb: int) -> MiniBatchEntry | None:
        if not (0 <= mb < self._n and self._state[mb]):
            return self._other.get(mb)
        return MiniBatchEntry(
            mb,
            _STATES[self._state[mb]],
            self._tries[mb],
            self._texts.get(_PART, mb),
            self._record(mb),
        )

    def _record(self, mb: int) -> TryRecord | None:
        kind = self._has_record[mb]
        if kind == 2:
            return self._records[mb]
        if kind == 0:
            return None
        total = self._total[mb]
        place = self._places[self._place[mb]]
        return TryRecord(
            mb=mb,
            try_no=self._rec_try[mb],
            status=_STATUSES[self._status[mb]],
            total=None if total == _NONE else total,
            succeeded=self._succeeded[mb],
            node=place[0],
            process=place[1],
            start_time=self._times[3 * mb],
            elapsed=self._times[3 * mb + 1],
            run_seconds=self._times[3 * mb + 2],
            part=self._texts.get(_REC_PART, mb),
            key=self._texts.get(_KEY, mb) or "",
        )

    def _ids(self) -> Iterator[int]:
        other = sorted(self._other)
        low = [mb for mb in other if mb < 0]
        yield from low
        state = self._state
        for mb in range(self._n):
            if state[mb]:
                yield mb
        yield from other[len(low) :]

    # -- updating --------------------------------------------------------------------------
    def _slot(self, mb: int) -> bool:
        """Make room for ``mb`` in the columns; False when it is kept in ``_other``."""
        if 0 <= mb < self._n:
            return True
        if mb < 0 or mb >= self._n + _DENSE_SLACK or mb in self._other:
            return False
        n = max(mb + 1, self._n * 2, 1024)
        grow = n - self._n
        self._state += bytearray(grow)
        self._tries.extend(array("i", [0]) * grow)
        self._has_record += bytearray(grow)
        self._status += bytearray(grow)
        self._rec_try.extend(array("i", [0]) * grow)
        self._total.extend(array("q", [_NONE]) * grow)
        self._succeeded.extend(array("q", [0]) * grow)
        self._times.extend(array("d", [0.0]) * (3 * grow))
        self._place.extend(array("i", [0]) * grow)
        self._texts.grow(n)
        self._n = n
        return True

    def _add_plain_done(self, data: Any) -> bool:
        """Replay a try that ended its mini-batch DONE, from its record as written (a dict),
        when the record is plain (see :func:`_plain`); False (nothing done) otherwise. The
        same as ``add_try(TryRecord.from_dict(data), DONE)``, without making the record."""
        if type(data) is not dict:
            return False
        get = data.get
        mb, try_no, total, succeeded = get("mb"), get("try_no"), get("total"), get("succeeded", 0)
        node, process, key, part = get("node", ""), get("process", ""), get("key", ""), get("part")
        times = (get("start_time", 0.0), get("elapsed", 0.0), get("run_seconds", 0.0))
        status = _STATUS_CODE.get(get("status"))  # type: ignore[arg-type]
        if not (
            status is not None
            and type(mb) is int
            and type(try_no) is int
            and -(2**31) <= try_no < 2**31
            and type(succeeded) is int
            and _NONE < succeeded < 2**63
            and (total is None or (type(total) is int and _NONE < total < 2**63))
            and all(type(t) is float for t in times)
            and type(node) is str
            and type(process) is str
            and type(key) is str
            and (part is None or type(part) is str)
            and not (get("error") or get("traceback") or get("warning") or get("failed"))
            and get("failed", 0) == 0
            and type(get("failed", 0)) is int
            and all(type(get(k, "")) is str for k in _TEXT_FIELDS)
            and self._slot(mb)
        ):
            return False
        if not self._state[mb]:
            self._state[mb] = _CODE[BatchState.PENDING]
        self._tries[mb] = max(self._tries[mb], try_no)
        self._state[mb] = _CODE[BatchState.DONE]
        at = self._place_id(node, process)
        self._has_record[mb] = 1
        self._records.pop(mb, None)
        self._status[mb] = status
        self._rec_try[mb] = try_no
        self._total[mb] = _NONE if total is None else total
        self._succeeded[mb] = succeeded
        self._times[3 * mb : 3 * mb + 3] = array("d", times)
        self._place[mb] = at
        self._texts.set(_KEY, mb, key or None)
        self._texts.set(_REC_PART, mb, part)
        self._texts.share(_PART, mb, _REC_PART)
        return True

    def _place_id(self, node: str, process: str) -> int:
        """The index of (node, process) among the places kept (added when new)."""
        place = (node, process)
        at = self._place_ids.get(place)
        if at is None:
            at = self._place_ids[place] = len(self._places)
            self._places.append(place)
        return at

    def plain_done(self, mb: int) -> int | None:
        """The items ``mb`` succeeded with when it is DONE with a plain record (no message,
        no failed item), else None: what a resume needs of most mini-batches, read without
        making their records."""
        if 0 <= mb < self._n and self._has_record[mb] == 1 and self._state[mb] == _DONE:
            return self._succeeded[mb]
        return None

    def _keep_record(self, mb: int, record: TryRecord) -> None:
        """Keep ``record`` as the last record of ``mb`` (in the columns when it is plain)."""
        if _plain(record):
            at = self._place_id(record.node, record.process)
            self._has_record[mb] = 1
            self._records.pop(mb, None)
            self._status[mb] = _STATUS_CODE[record.status]
            self._rec_try[mb] = record.try_no
            self._total[mb] = _NONE if record.total is None else record.total
            self._succeeded[mb] = record.succeeded
            self._times[3 * mb : 3 * mb + 3] = array(
                "d", (record.start_time, record.elapsed, record.run_seconds)
            )
            self._place[mb] = at
            self._texts.set(_KEY, mb, record.key or None)
            self._texts.set(_REC_PART, mb, record.part)
        else:
            self._has_record[mb] = 2
            self._records[mb] = record

    def add_try(self, record: TryRecord, final: BatchState | None) -> None:
        """A try ended; ``final`` is its mini-batch's state when the try ended it."""
        mb = record.mb
        if not self._slot(mb):
            e = self._other.setdefault(mb, MiniBatchEntry(mb))
            e.tries = max(e.tries, record.try_no)
            if final is not None:
                e.state, e.record = final, record
                e.part = record.part if final == BatchState.DONE else None
            return
        if not self._state[mb]:
            self._state[mb] = _CODE[BatchState.PENDING]
        self._tries[mb] = max(self._tries[mb], min(record.try_no, 2**31 - 1))
        if final is not None:
            self._state[mb] = _CODE[final]
            self._keep_record(mb, record)
            self._set_part(mb, record.part if final == BatchState.DONE else None)

    def add_final(self, mb: int, state: BatchState, record: TryRecord | None) -> None:
        """Mini-batch ``mb`` reached ``state`` without a try of its own (a cancel)."""
        if not self._slot(mb):
            e = self._other.setdefault(mb, MiniBatchEntry(mb))
            e.state = state
            e.part = record.part if record is not None and state == BatchState.DONE else None
            if record is not None:
                e.record = record
            return
        self._state[mb] = _CODE[state]
        if record is not None:
            self._keep_record(mb, record)
        self._set_part(mb, record.part if record is not None and state == BatchState.DONE else None)

    def _set_part(self, mb: int, part: str | None) -> None:
        """``mb``'s committed part; the bytes of its record's part when it is that one."""
        if part is not None and self._has_record[mb] == 1:
            if self._texts.get(_REC_PART, mb) == part:
                self._texts.share(_PART, mb, _REC_PART)
                return
        self._texts.set(_PART, mb, part)


def _plain(record: TryRecord) -> bool:
    """Whether ``record`` is kept exactly by the columns: no message, no failed item, values
    of the types the columns hold."""
    return (
        not (record.error or record.traceback or record.warning or record.failed)
        and type(record.failed) is int
        and type(record.succeeded) is int
        and (record.total is None or (type(record.total) is int and _NONE < record.total < 2**63))
        and record.succeeded < 2**63
        and record.succeeded > _NONE
        and type(record.start_time) is float
        and type(record.elapsed) is float
        and type(record.run_seconds) is float
        and type(record.node) is str
        and type(record.process) is str
        and type(record.key) is str
        and (record.part is None or type(record.part) is str)
        and type(record.try_no) is int
        and -(2**31) <= record.try_no < 2**31
        and record.status in _STATUS_CODE
    )


class _Parts(Mapping[int, str]):
    """The committed parts of a :class:`LedgerState`, by id (see :meth:`LedgerState.parts`)."""

    def __init__(self, state: LedgerState):
        self._s = state
        self._ids: array | None = None

    def _all(self) -> array:
        if self._ids is None:  # 8 bytes an id
            s = self._s
            self._ids = array(
                "q", (mb for mb in s.ids_in(BatchState.DONE) if s.part_of(mb) is not None)
            )
        return self._ids

    def __getitem__(self, mb: int) -> str:
        part = self._s.part_of(mb) if isinstance(mb, int) else None
        if part is None:
            raise KeyError(mb)
        return part

    def __iter__(self) -> Iterator[int]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class _Entries(Mapping[int, MiniBatchEntry]):
    """The mini-batches a :class:`LedgerState` has seen, by id; each entry is made when it is
    read (changing it changes nothing)."""

    def __init__(self, state: LedgerState):
        self._s = state

    def __getitem__(self, mb: int) -> MiniBatchEntry:
        e = self._s._get(mb) if isinstance(mb, int) else None
        if e is None:
            raise KeyError(mb)
        return e

    def __contains__(self, mb: object) -> bool:
        return isinstance(mb, int) and self._s._get(mb) is not None

    def __iter__(self) -> Iterator[int]:
        return self._s._ids()

    def __len__(self) -> int:
        s = self._s
        return s._n - s._state.count(0) + len(s._other)


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


def _events(path: str, start: int = 0) -> Iterator[_Event | None]:
    """The ledger's events from byte ``start`` (a line's start), typed; None for each line
    that is torn or of the wrong shape."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        f.seek(start)
        for line in f:
            try:
                event = json.loads(line)
                yield _decode(event) if isinstance(event, dict) else None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                yield None


def ledger_tries(path: str) -> list[TryRecord]:
    """Every try a ledger recorded, in the order they ended (unreadable lines skipped)."""
    return [e[1] for e in _events(path) if e is not None and e[0] == "try"]


def ledger_sessions(path: str, start: int = 0) -> list[tuple[dict[str, Any], list[TryRecord]]]:
    """Each session of a ledger (from byte ``start``, a line's start) with the tries it
    recorded, in the order they ended: its header (empty for tries before the first header)
    and its tries. Lines that are torn or of the wrong shape are skipped, as replaying the
    ledger skips them."""
    sessions: list[tuple[dict[str, Any], list[TryRecord]]] = []
    for event in _events(path, start):
        if event is None:
            continue
        if event[0] == "session":
            sessions.append((event[1], []))
        elif event[0] == "try":
            if not sessions:
                sessions.append(({}, []))
            sessions[-1][1].append(event[1])
    return sessions


def read_ledger(path: str) -> LedgerState:
    """Replay a ledger file (missing file: an empty state). Lines cut short by a crash or of
    the wrong shape are skipped and counted (:attr:`LedgerState.skipped`)."""
    if not os.path.exists(path):
        return LedgerState()
    with open(path, "rb") as f:
        state = _load_snapshot(path, f)  # the file up to where its snapshot was taken
        crc, size = state._crc, state._covered
        for line in f:
            crc = zlib.crc32(line, crc)
            size += len(line)
            try:
                raw = json.loads(line)
            except ValueError:  # not JSON, or not UTF-8
                state.skipped += 1
                continue
            # most lines are a try that ended its mini-batch DONE with nothing to say: kept
            # straight from the JSON (a million in a few seconds; TryRecord.from_dict took
            # as long again as the JSON)
            if (
                type(raw) is dict
                and raw.get("final") == "DONE"
                and raw.get("event") == "try"
                and state._add_plain_done(raw.get("record"))
            ):
                continue
            try:
                event = _decode(raw) if isinstance(raw, dict) else None
            except (KeyError, TypeError, ValueError):
                event = None
            _replay(state, event)
    state._crc, state._covered = crc, size
    return state


# -- snapshots ---------------------------------------------------------------------------------
# A writer leaves beside the ledger, when it closes, its replayed state in columns and the
# length and CRC-32 of the ledger bytes it covers (``ledger.jsonl.state``). Reading the ledger
# loads it, checks those bytes against it (a snapshot of another file, or of a ledger changed
# since, is ignored) and replays only the lines after them: a million-try ledger is read in a
# second or two instead of ten (``python -m benchmarks scale``). The ledger stays the truth; the
# snapshot is never needed and never read without its check.
_SNAPSHOT_FORMAT = 2  # 2: text folders kept once (text_dirs)
_ARRAYS = (
    "_state",
    "_tries",
    "_has_record",
    "_status",
    "_rec_try",
    "_total",
    "_succeeded",
    "_times",
    "_place",
)


def snapshot_path(ledger: str) -> str:
    """Where the snapshot of the ledger ``ledger`` is kept."""
    return f"{ledger}.state"


def _columns(state: LedgerState) -> list[tuple[str, Any]]:
    texts = state._texts
    return [(name, getattr(state, name)) for name in _ARRAYS] + [
        ("texts", texts._buf),
        *((f"texts{i}", at) for i, at in enumerate(texts._at)),
    ]


def write_snapshot(path: str, state: LedgerState) -> None:
    """Write the snapshot of ``state``, the replay of the ledger ``path`` (atomically)."""
    meta = {
        "format": _SNAPSHOT_FORMAT,
        "byteorder": sys.byteorder,
        "covers": state._covered,
        "crc32": state._crc,
        "header": state.header,
        "sessions": state.sessions,
        "skipped": state.skipped,
        "n": state._n,
        "places": state._places,
        "text_dirs": state._texts.dirs,
        "records": [[mb, r.to_dict()] for mb, r in state._records.items()],
        "other": [
            [mb, e.state, e.tries, e.part, e.record.to_dict() if e.record else None]
            for mb, e in state._other.items()
        ],
        "columns": [
            [name, getattr(col, "typecode", "B"), getattr(col, "itemsize", 1), len(col)]
            for name, col in _columns(state)
        ],
        "columns_crc32": _crc_of(col for _, col in _columns(state)),
    }
    with replacing(snapshot_path(path), "wb") as f:
        f.write(_ENCODER.encode(meta).encode("utf-8") + b"\n")
        for _, col in _columns(state):
            f.write(memoryview(col).cast("B"))


def _crc_of(columns: Iterator[Any]) -> int:
    crc = 0
    for col in columns:
        crc = zlib.crc32(memoryview(col).cast("B"), crc)
    return crc


def _load_snapshot(path: str, f: Any) -> LedgerState:
    """The state the snapshot of ledger ``path`` holds, with ``f`` (the ledger, open) moved
    past the bytes it covers; an empty state at the start of ``f`` when there is no snapshot
    or it does not match the ledger."""
    try:
        with open(snapshot_path(path), "rb") as s:
            meta = json.loads(s.readline())
            if meta.get("format") != _SNAPSHOT_FORMAT or meta.get("byteorder") != sys.byteorder:
                return LedgerState()
            state = _restore(meta, s)
        crc, left = 0, meta["covers"]
        while left:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            left -= len(chunk)
        if left or crc != meta["crc32"]:  # another ledger, or this one changed since
            f.seek(0)
            return LedgerState()
        return state
    except (OSError, ValueError, KeyError, TypeError, IndexError, EOFError):
        f.seek(0)
        return LedgerState()


def _restore(meta: dict[str, Any], s: Any) -> LedgerState:
    state = LedgerState()
    crc = 0
    for name, typecode, itemsize, length in meta["columns"]:
        data = s.read(itemsize * length)
        if len(data) != itemsize * length:
            raise EOFError(name)
        crc = zlib.crc32(data, crc)
        if typecode == "B":
            raw = bytearray(data)
            if name == "texts":
                state._texts._buf = raw
            elif name in _ARRAYS and isinstance(getattr(state, name), bytearray):
                setattr(state, name, raw)
            else:
                raise ValueError(f"column {name} is not of bytes")
        else:
            col = array(typecode, data)
            if name.startswith("texts"):
                at = state._texts._at
                at[int(name[5:])] = col
            elif name in _ARRAYS and getattr(state, name).typecode == typecode:
                setattr(state, name, col)
            else:
                raise ValueError(f"column {name} is not of type {typecode}")
    if crc != meta["columns_crc32"]:
        raise ValueError("the snapshot's columns are damaged")
    if any(at.typecode != "q" for at in state._texts._at):
        raise ValueError("a text column is not of offsets")
    state._n = meta["n"]
    lengths = [len(getattr(state, name)) for name in _ARRAYS if name != "_times"]
    lengths += [len(at) for at in state._texts._at] + [len(state._times) // 3]
    if any(n != state._n for n in lengths):
        raise ValueError("a column is of another length")
    state._texts.set_dirs(meta["text_dirs"])
    state._places = [tuple(p) for p in meta["places"]]
    state._place_ids = {p: i for i, p in enumerate(state._places)}
    state._records = {int(mb): _record(r) for mb, r in meta["records"]}
    for mb, st, tries, part, rec in meta["other"]:
        state._other[int(mb)] = MiniBatchEntry(
            int(mb), BatchState(st), tries, part, _record(rec) if rec is not None else None
        )
    state.header = meta["header"]
    state.sessions = meta["sessions"]
    state.skipped = meta["skipped"]
    state._crc, state._covered = meta["crc32"], meta["covers"]
    return state


def _replay(state: LedgerState, event: _Event | None) -> None:
    if event is None:
        state.skipped += 1
    else:
        kind, a, b, c = event
        if kind == "session":
            state.sessions += 1
            if not state.header:
                state.header = a
        elif kind == "try":
            state.add_try(a, b)
        else:
            state.add_final(a, b, c)


# The fields of a try's record that carry the entry script's messages, where it may have put
# a secret (masked when written); paths and counts are kept as they are.
_TEXT_FIELDS = ("error", "traceback", "warning")


# json.dumps(event, default=str), made once (dumps makes an encoder at every call when given
# an argument)
_ENCODER = json.JSONEncoder(default=str)


def _redacted(record: TryRecord) -> TryRecord:
    """``record`` as the ledger keeps it: secrets masked in the script's messages (the paths
    and counts resume reads are kept as they are)."""
    texts = {k: getattr(record, k) for k in _TEXT_FIELDS if getattr(record, k)}
    if not texts:
        return record
    masked = redact_data(texts)
    return record if masked == texts else record.with_(**masked)


def _ends_a_line(path: str) -> bool:
    """Whether the (non-empty) file at ``path`` ends with a newline."""
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


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
        self._lines: list[str] = []  # events not written yet (see :meth:`flush`)
        own = os.fstat(self._f.fileno())
        self._inode = (own.st_dev, own.st_ino)
        self._size = own.st_size
        # the state replays exactly the file's bytes: a snapshot of it can be left at close
        self._snapshot = self.state._covered == own.st_size
        if own.st_size and not _ends_a_line(path):
            # a crash cut the last line short: it is ended, so that it stays one unreadable
            # line and this session's header, written next, is not lost with it (its
            # sessions are counted by their headers: a lost one hands out its try keys again)
            self._append(b"\n")

    def _write(self, event: dict[str, Any]) -> None:
        self._lines.append(_ENCODER.encode(event))
        if len(self._lines) >= 4096:
            self.flush()

    def flush(self) -> None:
        """Write and flush the events kept since the last flush, in one write. The driver
        calls it once for each batch of records it gathers: one write and flush a try took
        more of its time than anything else of the ledger (``python -m benchmarks scale``)."""
        if not self._lines:
            return
        data = ("\n".join(self._lines) + "\n").encode("utf-8")
        self._lines.clear()
        self._append(data)

    def _append(self, data: bytes) -> None:
        try:
            self._f.write(data)
            self._f.flush()
        except OSError as err:
            if err.filename is None:  # a write's error names no file: the message names it
                err.filename = self.path
            raise
        self._size += len(data)
        if self._snapshot:
            self.state._crc = zlib.crc32(data, self.state._crc)
            self.state._covered += len(data)

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
        self.flush()
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
        """Write what is left, and a snapshot of the state for the next reader (see
        :func:`write_snapshot`) when the file holds exactly what this writer knows of."""
        if self._f.closed:
            return
        try:
            self.flush()
        finally:
            self._f.close()
        if self._snapshot and self.damage() is None:
            try:
                write_snapshot(self.path, self.state)
            except OSError as err:  # only a faster read is lost
                log.warning("could not write the snapshot of %s: %s", self.path, err)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
