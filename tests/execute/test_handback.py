"""Tries handed back by a worker that closes under them: markers, records, one taker."""

from __future__ import annotations

import os

import pytest

from daskprs.execute.child import ChildConfig
from daskprs.execute.context import StepContext
from daskprs.execute.handback import leave_marker, leave_record, take_over
from daskprs.execute.worker import run_try
from daskprs.inputs.batches import FileBatch
from daskprs.results.outcome import Status, TryRecord, TryRecords
from daskprs.rundir import RunDir


@pytest.fixture
def ctx(tmp_path) -> StepContext:
    context = StepContext(
        token="t",
        step="score",
        run=RunDir(str(tmp_path)),
        child=ChildConfig(code_dir="/c", entry_script="e.py"),
    )
    os.makedirs(context.where.claims)
    return context


def claim(ctx: StepContext, mb: int, key: str) -> None:
    open(ctx.where.claim(mb, key), "w").close()


def test_a_marker_is_taken_once(ctx):
    leave_marker(ctx.store, 3, "s0t1")
    assert take_over(ctx.store, 3, "s0t1", wait=0) is True
    # the second rerun of the same task finds nothing left
    assert take_over(ctx.store, 3, "s0t1", wait=0) is False


def test_a_record_left_behind_is_returned_once(ctx):
    record = TryRecord(mb=4, try_no=1, status=Status.RUN_DONE, succeeded=2, node="h", part="p")
    leave_record(ctx.store, 4, "s0t1", record)
    assert take_over(ctx.store, 4, "s0t1", wait=0) == record
    assert take_over(ctx.store, 4, "s0t1", wait=0) is False


class _RecordingSlot:
    """A slot whose tries all succeed at once, noting the mini-batches it ran."""

    config = ChildConfig(code_dir="/c", entry_script="e.py")
    closing = False

    def __init__(self):
        self.ran: list[int] = []

    def run(self, task, deadlines):
        self.ran.append(task.batch.index)
        return TryRecord(mb=task.batch.index, try_no=task.try_no, status=Status.RUN_DONE)


@pytest.fixture
def slot(ctx, monkeypatch) -> _RecordingSlot:
    """The one slot of this (Dask-less) worker's pool."""
    from daskprs.execute import worker

    one = _RecordingSlot()
    pool = _OnePool(one, ctx)
    monkeypatch.setattr(worker, "pool_of", lambda token, w: pool)
    return one


def test_a_claimed_try_without_a_hand_back_is_a_duplicate(ctx, slot):
    batch = FileBatch(index=5, files=("/x",))
    claim(ctx, 5, "s0t1")
    wait: list[float | None] = [0.0]
    record = run_try(ctx, batch, 1, "s0t1", wait)
    assert record.status == Status.DUPLICATE
    assert wait == [0.0]  # the other tries of a packed task do not wait either
    assert slot.ran == []


def test_a_claimed_try_with_its_record_left_returns_it(ctx, slot):
    batch = FileBatch(index=6, files=("/x",))
    claim(ctx, 6, "s0t1")
    left = TryRecord(mb=6, try_no=1, status=Status.RUN_DONE, succeeded=1)
    leave_record(ctx.store, 6, "s0t1", left)
    wait: list[float | None] = [0.0]
    assert run_try(ctx, batch, 1, "s0t1", wait) == left
    assert wait == [1.0]  # its neighbours were handed back together: wait a little for them
    assert slot.ran == []


def test_a_handed_back_try_runs_again(ctx, slot):
    batch = FileBatch(index=7, files=("/x",))
    claim(ctx, 7, "s0t1")
    leave_marker(ctx.store, 7, "s0t1")
    assert run_try(ctx, batch, 1, "s0t1", [0.0]).status == Status.RUN_DONE
    assert slot.ran == [7]
    assert take_over(ctx.store, 7, "s0t1", wait=0) is False  # the marker was taken


def test_a_worker_without_slots_claims_nothing(ctx):
    """A worker whose slot pool is gone (closing) raises before it claims the try: the rerun
    elsewhere claims it afresh (a claim taken here would count the try as a death)."""
    with pytest.raises(RuntimeError, match="no slots for step run t"):
        run_try(ctx, FileBatch(index=8, files=("/x",)), 1, "s0t1")
    assert not os.path.exists(ctx.where.claim(8, "s0t1"))


def test_a_slot_that_fails_is_a_failed_try_of_its_mini_batch_alone(ctx, monkeypatch):
    from daskprs.execute import worker

    class BrokenSlot:
        config = ChildConfig(code_dir="/c", entry_script="e.py")
        closing = False
        killed = 0

        def run(self, task, deadlines):
            raise ValueError("'junk' is not a valid Phase")

        def kill(self):
            BrokenSlot.killed += 1

    class Pool:
        released: list = []

        def acquire(self, mb, try_key):
            return BrokenSlot()

        def release(self, slot):
            self.released.append(slot)

    monkeypatch.setattr(worker, "pool_of", lambda token, w: Pool())
    record = run_try(ctx, FileBatch(9, ("/a", "/b")), 1, "s0t9")
    assert record.status == Status.PROCESS_DIED and record.failed == 2
    assert "ValueError: 'junk' is not a valid Phase" in record.error
    assert BrokenSlot.killed == 1 and len(Pool.released) == 1


class _OnePool:
    """A slot pool of one slot, as ``run_tries`` uses it (no Dask worker)."""

    expired = False

    def __init__(self, slot, ctx):
        self.slot, self.local, self.kept, self.kept_records = slot, ctx, [], []

    def acquire(self, mb=-1, try_key=""):
        return self.slot

    def release(self, slot):
        pass

    def check(self):
        pass

    def handed(self, slot, mb, try_key):
        pass

    def ended(self, slot, mb, try_key):
        pass

    def keep(self, mb, try_key, record):
        self.kept.append(try_key)
        self.kept_records.append(record)

    def done(self, slot, mb, try_key, record):
        self.keep(mb, try_key, record)

    def forget(self):
        pass


def test_a_packed_task_gives_its_records_in_the_order_of_its_tries(ctx, tmp_path, monkeypatch):
    """A try whose record was left behind comes back at once, before the tries handed over
    ahead of it end; the task still answers each try in its place (the driver pairs them)."""
    from dataclasses import replace

    import daskprs.execute.worker as worker
    from daskprs.execute.slot import Slot
    from daskprs.execute.worker import run_tries

    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(
        "import os, time\n\ndef run(mini_batch):\n    time.sleep(0.2)\n"
        "    return [os.path.basename(p) for p in mini_batch]\n"
    )
    for name in "abcd":
        (tmp_path / name).write_text("x\n")
    ctx = replace(ctx, child=ChildConfig(code_dir=str(code), entry_script="score.py"))
    slot = Slot(ctx.child)
    pool = _OnePool(slot, ctx)
    monkeypatch.setattr(worker, "pool_of", lambda token, w: pool)
    left = TryRecord(mb=2, try_no=1, status=Status.RUN_DONE, succeeded=1, node="elsewhere")
    claim(ctx, 2, "s0t2")
    leave_record(ctx.store, 2, "s0t2", left)
    items = [(FileBatch(i, (str(tmp_path / n),)), 1, f"s0t{i}") for i, n in enumerate("abcd")]
    try:
        records = run_tries(ctx, items)
    finally:
        slot.stop()
    assert [r.mb for r in records] == [0, 1, 2, 3]
    assert type(records) is TryRecords  # sent to the driver as one pickle
    assert records[2] == left
    assert [r.status for r in records] == ["RUN_DONE"] * 4
    assert sorted(pool.kept) == ["s0t0", "s0t1", "s0t2", "s0t3"]


def test_a_closing_worker_hands_back_a_try_whose_rows_are_not_staged_yet(ctx, tmp_path):
    """A staged run's packed task keeps its finished tries without their records until its
    pack is uploaded: a worker closing before then leaves markers, so that the tries run
    again where the task runs again (a record would name rows in this worker's scratch
    folder, which the driver cannot read)."""
    from dataclasses import replace

    from daskprs.execute.pool import SlotPool

    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text("def run(mini_batch):\n    return []\n")
    ctx = replace(ctx, child=ChildConfig(code_dir=str(code), entry_script="score.py"))
    pool = SlotPool(ctx)
    pool.setup(None)
    try:
        done = TryRecord(mb=4, try_no=1, status=Status.RUN_EXCEPTION, failed=1, node="here")
        pool.keep(3, "s0t3", None)  # rows in a pack not uploaded yet
        pool.keep(4, "s0t4", done)  # no rows: its record is all there is
        assert pool.hand_back() == 2
    finally:
        pool.close(kill=True)
    assert take_over(ctx.store, 3, "s0t3", wait=0) is True  # run it again
    assert take_over(ctx.store, 4, "s0t4", wait=0) == done


def _basename_code(tmp_path, names: str):
    """A code folder whose ``run()`` returns each file's name, and a one-line file in
    ``tmp_path`` for each letter of ``names``."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(
        "import os\n\ndef run(mini_batch):\n    return [os.path.basename(p) for p in mini_batch]\n"
    )
    for name in names:
        (tmp_path / name).write_text("x\n")
    return code


def test_a_staged_packed_task_uploads_its_pack_once_its_tries_end(ctx, tmp_path, s3, monkeypatch):
    """Staged, the tries of a packed task append to a pack in the worker's scratch folder;
    until it is uploaded they are kept without their records (a closing worker hands them
    back), then each names its range of the one staged pack."""
    from dataclasses import replace

    import daskprs.execute.worker as worker
    from daskprs.execute.slot import Slot
    from daskprs.execute.worker import run_tries
    from daskprs.results.packs import split_ref

    code = _basename_code(tmp_path, "abc")
    ctx = replace(
        ctx,
        child=ChildConfig(code_dir=str(code), entry_script="score.py"),
        writes_parts=True,
        staging="s3://out/stage/steps/score",
    )
    scratch = replace(ctx, run=RunDir(str(tmp_path / "scratch")), staging="")
    os.makedirs(scratch.where.parts)
    slot = Slot(scratch.child)
    pool = _OnePool(slot, scratch)
    monkeypatch.setattr(worker, "pool_of", lambda token, w: pool)
    items = [(FileBatch(i, (str(tmp_path / n),)), 1, f"s0t{i}") for i, n in enumerate("abc")]
    try:
        records = run_tries(ctx, items)
    finally:
        slot.stop()
    assert [r.status for r in records] == ["RUN_DONE"] * 3
    assert pool.kept_records == [None] * 3  # rows in the scratch pack: handed back if closing
    ranges = [split_ref(r.part or "") for r in records]
    assert len({url for url, _, _ in ranges}) == 1  # one upload for the three
    url = ranges[0][0]
    assert url.startswith("s3://out/stage/steps/score/parts/00000.s0t0.") and url.endswith(".pack")
    data = s3.cat(url.removeprefix("s3://"))
    rows = [data[offset : offset + (length or 0)] for _, offset, length in ranges]
    assert rows == [b"a\n", b"b\n", b"c\n"]
    assert not os.listdir(scratch.where.parts)  # the scratch copy is gone


# -- a worker that closes at any moment of a task -------------------------------------------


@pytest.fixture
def real_pool(ctx, tmp_path, monkeypatch):
    """A real slot pool of one slot (no Dask worker) whose tries write one row a file; with
    ``staged``, staged to an in-memory fsspec store (``memory://``)."""
    from dataclasses import replace

    import fsspec

    import daskprs.execute.worker as worker
    from daskprs.execute.pool import SlotPool

    code = _basename_code(tmp_path, "abcd")
    items = [(FileBatch(i, (str(tmp_path / n),)), 1, f"s0t{i}") for i, n in enumerate("abcd")]
    pools = []

    def make(staged: bool) -> tuple[StepContext, SlotPool]:
        fsspec.filesystem("memory").store.clear()
        step = replace(
            ctx,
            child=ChildConfig(code_dir=str(code), entry_script="score.py"),
            writes_parts=True,
            staging="memory://stage/steps/score" if staged else "",
        )
        os.makedirs(step.where.parts, exist_ok=True)  # (the driver makes it in a run)
        pool = SlotPool(step)
        pool.setup(None)
        pools.append(pool)
        monkeypatch.setattr(worker, "pool_of", lambda token, w: pool)
        return step, pool

    yield make, items
    for pool in pools:
        pool.close(kill=True)
    fsspec.filesystem("memory").store.clear()


def _rerun_finds(ctx: StepContext, items: list) -> dict[str, object]:
    """What the rerun of the task finds for each try claimed here: True (a marker: run it
    again), a record, or False (nothing: it would count as a death)."""
    from daskprs.execute.store import claim_name

    return {
        key: take_over(ctx.store, b.index, key, wait=0)
        for b, _, key in items
        if ctx.store.exists(claim_name(b.index, key))
    }


@pytest.mark.parametrize("staged", [False, True])
def test_a_worker_closing_while_a_packed_try_is_claimed_hands_that_try_back(
    real_pool, monkeypatch, staged
):
    """The worker closes while the third try's claim is being taken (a request to the store,
    tens of milliseconds on S3): that try was noted as running before its claim, so it gets
    a marker; the tries before it leave their records or markers, the last one is not claimed
    here at all (the rerun claims it)."""
    import daskprs.execute.worker as worker

    make, items = real_pool
    ctx, pool = make(staged)
    claim_ = worker._claim

    def claim_as_the_worker_closes(c, mb, key):
        taken = claim_(c, mb, key)
        if key == "s0t2":
            pool.hand_back()  # (its worker's teardown, on another thread in a real worker)
        return taken

    monkeypatch.setattr(worker, "_claim", claim_as_the_worker_closes)
    records = worker.run_tries(ctx, items)
    assert [r.status for r in records][2:] == ["NOT_STARTED", "NOT_STARTED"]
    found = _rerun_finds(ctx, items)
    assert sorted(found) == ["s0t0", "s0t1", "s0t2"]  # s0t3 was never claimed
    assert found["s0t2"] is True
    assert all(v is not False for v in found.values()), found


@pytest.mark.parametrize("staged", [False, True])
def test_a_worker_closing_as_a_packed_try_ends_leaves_its_record_or_a_marker(
    real_pool, monkeypatch, staged
):
    """The worker closes the moment the first try's record comes out of its slot: the try
    is no longer running but already kept, so its record is left (staged: a marker, its rows
    being in the pack not uploaded yet)."""
    import daskprs.execute.worker as worker

    make, items = real_pool
    ctx, pool = make(staged)
    in_turn = worker._run_in_turn

    def closing_after_the_first(*args):
        for n, record in enumerate(in_turn(*args)):
            if n == 0:
                pool.hand_back()
            yield record

    monkeypatch.setattr(worker, "_run_in_turn", closing_after_the_first)
    worker.run_tries(ctx, items)
    found = _rerun_finds(ctx, items)
    if staged:
        assert found["s0t0"] is True
    else:
        assert isinstance(found["s0t0"], TryRecord) and found["s0t0"].status == "RUN_DONE"
    assert all(v is not False for v in found.values()), found


def test_a_single_try_claimed_as_its_worker_closes_is_handed_back(real_pool, monkeypatch):
    import daskprs.execute.worker as worker

    make, items = real_pool
    ctx, pool = make(False)
    claim_ = worker._claim

    def claim_as_the_worker_closes(c, mb, key):
        taken = claim_(c, mb, key)
        pool.hand_back()
        return taken

    monkeypatch.setattr(worker, "_claim", claim_as_the_worker_closes)
    batch, try_no, key = items[0]
    record = run_try(ctx, batch, try_no, key)
    assert record.status == Status.NOT_STARTED, record
    assert _rerun_finds(ctx, items[:1]) == {key: True}


def test_a_try_given_to_a_closed_worker_starts_no_process_and_takes_no_claim(real_pool):
    """A task thread still running after its worker's teardown: no new entry-script process
    is started for it (teardown stopped them all), and its try is left to the rerun."""
    make, items = real_pool
    ctx, pool = make(False)
    pool.hand_back()
    pool.close()
    batch, try_no, key = items[0]
    record = run_try(ctx, batch, try_no, key)
    assert record.status == Status.NOT_STARTED
    assert _rerun_finds(ctx, items[:1]) == {}  # not claimed: the rerun claims it
    assert all(slot.proc is None for slot in pool._all)


def test_an_entry_script_process_closes_its_pack_after_its_tasks_last_try(real_pool):
    """A staged run's pack is removed once uploaded: the process that appended to it has
    closed it after the task's last try, so that its disk space goes with it."""
    import daskprs.execute.worker as worker

    make, items = real_pool
    ctx, pool = make(True)
    worker.run_tries(ctx, items)
    (slot,) = pool._all
    fds = f"/proc/{slot.proc.pid}/fd"
    held = [os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds)]
    assert not [path for path in held if ".pack" in path], held


def test_a_staged_packed_task_that_fails_leaves_no_scratch_pack(real_pool, monkeypatch):
    """A packed task cut short (the driver's lease expired: the task raises) removes the pack
    its tries appended to in the worker's scratch folder; nothing will upload it."""
    import daskprs.execute.worker as worker

    make, items = real_pool
    ctx, pool = make(True)
    packs = []

    def cut_short(ctx_, pool_, items_, wait, pack, unstaged):
        packs.append(pack)
        with open(pack, "ab") as f:
            f.write(b"a\n")
        raise RuntimeError("the driver of step run t is gone (its lease expired)")
        yield  # (a generator, as the real one)

    monkeypatch.setattr(worker, "_run_in_turn", cut_short)
    with pytest.raises(RuntimeError, match="lease expired"):
        worker.run_tries(ctx, items)
    assert packs and packs[0].startswith(pool.local.where.parts)
    assert not os.path.exists(packs[0])
