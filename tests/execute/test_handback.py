"""Tries handed back by a worker that closes under them: markers, records, one taker."""

from __future__ import annotations

import os

import pytest

from daskprs.execute.child import ChildConfig
from daskprs.execute.context import StepContext
from daskprs.execute.handback import leave_marker, leave_record, take_over
from daskprs.execute.worker import run_try
from daskprs.inputs.batches import FileBatch
from daskprs.results.outcome import Status, TryRecord
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


def test_a_claimed_try_without_a_hand_back_is_a_duplicate(ctx):
    batch = FileBatch(index=5, files=("/x",))
    claim(ctx, 5, "s0t1")
    wait: list[float | None] = [0.0]
    record = run_try(ctx, batch, 1, "s0t1", wait)
    assert record.status == Status.DUPLICATE
    assert wait == [0.0]  # the other tries of a packed task do not wait either


def test_a_claimed_try_with_its_record_left_returns_it(ctx):
    batch = FileBatch(index=6, files=("/x",))
    claim(ctx, 6, "s0t1")
    left = TryRecord(mb=6, try_no=1, status=Status.RUN_DONE, succeeded=1)
    leave_record(ctx.store, 6, "s0t1", left)
    wait: list[float | None] = [0.0]
    assert run_try(ctx, batch, 1, "s0t1", wait) == left
    assert wait == [1.0]  # its neighbours were handed back together: wait a little for them


def test_a_handed_back_try_runs_again(ctx):
    batch = FileBatch(index=7, files=("/x",))
    claim(ctx, 7, "s0t1")
    leave_marker(ctx.store, 7, "s0t1")
    # it goes on to run in this worker's slot pool: outside a worker, there is none
    with pytest.raises(RuntimeError, match="no slots for step run t"):
        run_try(ctx, batch, 1, "s0t1", [0.0])


def test_a_slot_that_fails_is_a_failed_try_of_its_mini_batch_alone(ctx, monkeypatch):
    from daskprs.execute import worker

    class BrokenSlot:
        config = ChildConfig(code_dir="/c", entry_script="e.py")
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
