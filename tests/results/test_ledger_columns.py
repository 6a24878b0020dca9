"""The ledger's replayed state kept in columns (issue 23: a million mini-batches in one
driver): it reads exactly as the entry-per-mini-batch state did, its writer writes once per
batch of tries, and a resume reads the common line without making its record."""

from __future__ import annotations

import json
import os

import pytest

from daskprs.execute.resume import Mode, session_of
from daskprs.inputs.batches import FileBatch
from daskprs.results.ledger import (
    Ledger,
    LedgerState,
    MiniBatchEntry,
    read_ledger,
    snapshot_path,
)
from daskprs.results.outcome import BatchState, Status, TryRecord

DONE, FAILED, CANCELLED = BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED


class _Reference:
    """The replay as it was before the columns: one entry object per mini-batch."""

    def __init__(self) -> None:
        self.entries: dict[int, MiniBatchEntry] = {}

    def entry(self, mb: int) -> MiniBatchEntry:
        return self.entries.setdefault(mb, MiniBatchEntry(mb))

    def add_try(self, record: TryRecord, final: BatchState | None) -> None:
        e = self.entry(record.mb)
        e.tries = max(e.tries, record.try_no)
        if final is not None:
            e.state, e.record = final, record
            e.part = record.part if final == DONE else None

    def add_final(self, mb: int, state: BatchState, record: TryRecord | None) -> None:
        e = self.entry(mb)
        e.state = state
        e.part = record.part if record is not None and state == DONE else None
        if record is not None:
            e.record = record


def _plain(mb: int, try_no: int = 1, **kw) -> TryRecord:
    values = {
        "status": Status.RUN_DONE,
        "total": 1,
        "succeeded": 1,
        "node": "n1",
        "process": "n1:p0",
        "start_time": 1.7e9 + mb,
        "elapsed": 0.25,
        "run_seconds": 0.125,
        "part": f"/run/steps/s/parts/{mb:05d}.s0n{mb}.part",
        "key": f"minibatch-{mb:05d}-try{try_no}",
        **kw,
    }
    return TryRecord(mb=mb, try_no=try_no, **values)


EVENTS = [
    ("try", _plain(0), DONE),
    ("try", _plain(1, status=Status.RUN_EXCEPTION, error="boom", part=None), None),
    ("try", _plain(1, 2, status=Status.RUN_TIMEOUT, error="late", part=None), FAILED),
    ("try", _plain(2, failed=1, warning="run() returned 0 rows for 1 inputs"), DONE),
    ("try", _plain(3, total=None, status=Status.EMPTY, part=None, key=""), DONE),
    ("final", 4, CANCELLED, None),
    ("try", _plain(5), DONE),
    ("final", 5, CANCELLED, None),  # a cancel keeps the record, drops the part
    ("try", _plain(6, 3), None),  # a try that did not end its mini-batch
    ("try", _plain(6, 1, node="other"), DONE),  # the record's try number is its own
    ("try", _plain(10**7), DONE),  # far past the others
    ("try", _plain(-3), DONE),  # not an id a plan makes, still replayed
    ("try", _plain(7, start_time=3), DONE),  # an int where a float is: kept as it is
]


def _replay(target, events):
    for kind, *rest in events:
        if kind == "try":
            target.add_try(*rest)
        else:
            target.add_final(*rest)
    return target


def test_the_columns_read_as_the_entries_did():
    state = _replay(LedgerState(), EVENTS)
    ref = _replay(_Reference(), EVENTS)
    assert dict(state.entries) == ref.entries
    assert list(state.entries) == sorted(ref.entries)
    assert len(state.entries) == len(ref.entries)
    assert 99 not in state.entries and state.state_of(99) == BatchState.PENDING
    assert state.entries[6].record == _plain(6, 1, node="other") and state.entries[6].tries == 3
    assert state.count(DONE) == sum(1 for e in ref.entries.values() if e.state == DONE)
    assert dict(state.parts()) == {
        mb: e.part for mb, e in sorted(ref.entries.items()) if e.state == DONE and e.part
    }
    # every record with a message is among those kept whole
    assert [mb for mb, r in state.records_of(DONE) if r.warning] == [2]
    assert list(state.ids_in(FAILED, CANCELLED)) == [1, 4, 5]


def test_the_ledger_file_replays_to_the_same_state_by_the_fast_path_and_the_slow(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    with Ledger(path) as ledger:
        ledger.start_session({"step": "s"})
        for kind, *rest in EVENTS:
            if kind == "try":
                ledger.record_try(*rest)
            else:
                ledger.record_final(*rest)
        written = ledger.state
    state = read_ledger(path)
    ref = _replay(_Reference(), EVENTS)
    assert dict(state.entries) == dict(written.entries) == ref.entries
    assert state.skipped == 0 and state.sessions == 1


@pytest.mark.parametrize(
    "record",
    [
        {"mb": 0, "try_no": 1, "status": "RUN_DONE", "total": 1.5},
        {"mb": 0, "try_no": 1, "status": "RUN_DONE", "start_time": 7},
        {"mb": 0, "try_no": True, "status": "RUN_DONE"},
        {"mb": 0, "try_no": 1, "status": "RUN_DONE", "node": 3},
        {"mb": 0, "try_no": 1, "status": "RUN_DONE", "failed": 2, "warning": "short"},
        {"mb": 0, "try_no": 1, "status": "RUN_DONE", "succeeded": 2**70},
        {"mb": 0, "try_no": 2**40, "status": "RUN_DONE"},
    ],
)
def test_a_line_the_fast_path_cannot_keep_exactly_is_replayed_as_before(tmp_path, record):
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps({"event": "try", "record": record, "final": "DONE"}) + "\n")
    state = read_ledger(str(path))
    if record["try_no"] is True:  # not a try number: skipped, as before
        assert state.skipped == 1 and not state.entries
        return
    expected = TryRecord.from_dict(record)
    assert state.entries[0].record == expected
    assert type(state.entries[0].record.start_time) is type(expected.start_time)


def test_lines_are_written_once_for_each_batch(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(str(path))
    ledger.start_session({"step": "s"})  # a session's header is written at once
    assert len(path.read_text().splitlines()) == 1
    ledger.record_try(_plain(0), DONE)
    ledger.record_try(_plain(1), DONE)
    assert len(path.read_text().splitlines()) == 1  # kept until the batch is flushed
    assert ledger.damage() is None
    ledger.flush()
    assert len(path.read_text().splitlines()) == 3
    assert ledger.damage() is None
    ledger.record_final(2, CANCELLED, None)
    ledger.close()  # closing writes what is left
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == [
        "session",
        "try",
        "try",
        "final",
    ]


def test_a_resume_keeps_every_done_mini_batch_and_runs_the_rest(tmp_path):
    state = _replay(LedgerState(), EVENTS)
    batches = [FileBatch(i, (f"/d/{i}",)) for i in range(9)]
    session = session_of(batches, state, Mode.RESUME)
    assert session.todo == (4, 5, 8) and list(session.todo) == [4, 5, 8]
    assert session.prior[6].state == DONE
    assert session.prior[0].state == DONE and session.prior[0].succeeded == 1
    assert session.prior[2].failed == 1 and session.prior[2].error.startswith("run() returned")
    assert session.prior[1].state == FAILED and session.prior[1].error == "late"
    assert session.prior[7].state == DONE


def _write_ledger(path, events, state=None):
    with Ledger(str(path), state if state is not None else read_ledger(str(path))) as ledger:
        ledger.start_session({"step": "s"})
        for kind, *rest in events:
            if kind == "try":
                ledger.record_try(*rest)
            else:
                ledger.record_final(*rest)


def test_a_snapshot_left_at_close_is_read_with_the_lines_after_it(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _write_ledger(path, EVENTS[:6])
    assert os.path.exists(snapshot_path(str(path)))
    _write_ledger(path, EVENTS[6:])  # a second session: its snapshot covers both
    with open(path, "a") as f:  # and a line written after it (a driver killed later on)
        f.write(json.dumps({"event": "try", "record": _plain(8).to_dict(), "final": "DONE"}) + "\n")
        f.write('{"event": "tr')  # and a torn one
    state = read_ledger(str(path))
    ref = _replay(_Reference(), [*EVENTS, ("try", _plain(8), DONE)])
    assert dict(state.entries) == ref.entries
    assert state.sessions == 2 and state.skipped == 1
    os.unlink(snapshot_path(str(path)))
    slow = read_ledger(str(path))
    assert dict(slow.entries) == ref.entries and (slow._crc, slow._covered) == (
        state._crc,
        state._covered,
    )


def test_a_snapshot_of_a_ledger_changed_since_is_ignored(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _write_ledger(path, EVENTS)
    text = path.read_text()
    changed = text.replace('"succeeded": 1', '"succeeded": 2', 1)  # the same length
    assert len(changed) == len(text) and changed != text
    path.write_text(changed)
    state = read_ledger(str(path))
    assert state.entries[0].record.succeeded == 2  # what the ledger says, not the snapshot
    path.write_text(text[:100])  # shorter than what the snapshot covers
    assert read_ledger(str(path)).skipped == 1
    snap = snapshot_path(str(path))
    path.write_text(text)
    whole = open(snap, "rb").read()
    with open(snap, "r+b") as f:  # a damaged snapshot: a byte of its columns changed
        f.seek(len(whole) - 3)
        f.write(bytes([whole[-3] ^ 0xFF]))
    assert dict(read_ledger(str(path)).entries) == _replay(_Reference(), EVENTS).entries
    with open(snap, "r+b") as f:  # cut short
        f.truncate(len(whole) // 2)
    assert dict(read_ledger(str(path)).entries) == _replay(_Reference(), EVENTS).entries


def test_no_snapshot_is_left_for_a_ledger_its_writer_did_not_read(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps({"event": "session", "header": {}}) + "\n")
    _write_ledger(path, EVENTS, state=LedgerState())  # a state that is not the file's
    assert not os.path.exists(snapshot_path(str(path)))


ODD_PARTS = [
    "/run/steps/score/parts/00000.s0n0.part",
    "/run/steps/score/parts/00000.s0n1.pack:0+12",
    "/run/steps/score/parts/00001.s0n1.pack:12+5",
    "/other/place/with/a/long/folder/x.part",
    "short/x.part",
    "\x01looks/like/a/marked/one/x.part",
    "\x03odd",
    "\x01",
    "no-folder.part",
    "s3://bucket/a/long/prefix/of/parts/00002.s0n2.part",
    "/run/steps/score/parts/caf\udce9.part",  # a name that is not UTF-8 (surrogateescape)
]


def test_part_paths_keep_their_folder_once_and_read_back_exactly(tmp_path):
    state = LedgerState()
    for mb, part in enumerate(ODD_PARTS):
        state.add_try(_plain(mb, part=part), DONE)
    assert [state.part_of(mb) for mb in range(len(ODD_PARTS))] == ODD_PARTS
    assert "/run/steps/score/parts/" in state._texts.dirs
    assert b"/run/steps/score/parts/" not in state._texts._buf  # kept once, in dirs
    # through the ledger and its snapshot too
    path = tmp_path / "ledger.jsonl"
    _write_ledger(path, [("try", _plain(mb, part=p), DONE) for mb, p in enumerate(ODD_PARTS)])
    assert os.path.exists(snapshot_path(str(path)))
    again = read_ledger(str(path))
    assert [again.part_of(mb) for mb in range(len(ODD_PARTS))] == ODD_PARTS
    os.unlink(snapshot_path(str(path)))
    slow = read_ledger(str(path))
    assert [slow.part_of(mb) for mb in range(len(ODD_PARTS))] == ODD_PARTS
