"""What runs inside a Dask worker: one try of one mini-batch, through the worker's slot.

``run_try`` is the function the driver submits for one try (Dask key
``minibatch-00042-try1``, ``-s1`` added in the first resumed session and so on);
``run_tries`` runs several short tries one after the other in one task (key
``minibatch-00042-try1-x16``: the first try's key and the count). Each try claims itself
atomically first, so a task that Dask runs a second time by itself (a retried task of a dead
worker, a recomputed result) does nothing (docs/design.md#exactly-once-claims-and-the-ledger).
Then it hands the mini-batch to an idle slot of the step's pool on this worker
(:mod:`daskprs.execute.pool`), whose child process runs the entry script, and returns a small
:class:`TryRecord`.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

from daskprs.execute.context import StepContext
from daskprs.execute.handback import take_over
from daskprs.execute.pool import pool_name, pool_of
from daskprs.execute.slot import not_started
from daskprs.execute.store import claim_name, pack_name, part_name
from daskprs.execute.wire import RunTask
from daskprs.inputs.batches import MiniBatch
from daskprs.results.outcome import Status, TryRecord, TryRecords
from daskprs.results.packs import pack_ref, split_ref
from daskprs.results.storage import storage_error, storage_problem

__all__ = ["check_worker", "claimed", "kill_running", "run_tries", "run_try"]

log = logging.getLogger(__name__)


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _claim(ctx: StepContext, mb: int, try_key: str) -> bool:
    """Atomically mark this try as started; False when it already was."""
    return ctx.store.create(claim_name(mb, try_key), _CLAIMANT)


def _take_claim(
    ctx: StepContext, pool: Any, slot: Any, batch: MiniBatch, try_no: int, try_key: str
) -> bool | TryRecord:
    """:func:`_claim`, or the record that stops the step when the claim's disk refuses it
    (full, read-only...; the try, noted as running, is noted as ended unclaimed)."""
    try:
        return _claim(ctx, batch.index, try_key)
    except OSError as err:
        if not storage_error(err):
            raise
        pool.ended(slot, batch.index, try_key)
        return _refused(batch, try_no, err, "the worker claimed", ctx.store.url(""))


# What a claim holds: who took it (never empty: some stores skip the condition on empty
# objects).
_CLAIMANT = f"{socket.gethostname()} {os.getpid()}\n".encode()


def run_try(
    ctx: StepContext,
    batch: MiniBatch,
    try_no: int,
    try_key: str,
    handback_wait: list[float | None] | None = None,
    pack: str | None = None,
) -> TryRecord:
    """Run one try of one mini-batch in this worker's slot and return its record.

    Parameters
    ----------
    ctx : StepContext
        The step's settings.
    batch : MiniBatch
        The mini-batch descriptor.
    try_no : int
        The try number (1 for the first try).
    try_key : str
        Unique among all submissions of the run (``s0t1``); names the claim and the part.
    handback_wait : list, optional
        ``[seconds]`` to wait for a hand-back when the claim is taken (None: the default),
        shared by the tries of one packed task: after the first wait the others wait 0 s
        (the worker died: nothing comes) or 1 s (it handed its tries back together).
    pack : str, optional
        The file the tries of this task append their rows to (:mod:`daskprs.results.packs`);
        None: a part of its own.
    """
    start = time.time()
    pool = pool_of(ctx.token, _current_worker())
    # noted as running before it is claimed: a worker that closes from here on hands it back
    slot = pool.acquire(batch.index, try_key)
    try:
        if slot.closing:  # its worker closes: not claimed here, it runs elsewhere
            return not_started(batch.index, try_no)
        taken = _take_claim(ctx, pool, slot, batch, try_no, try_key)
        if isinstance(taken, TryRecord):  # its disk refused the claim
            return taken
        if not taken:
            instead = _claimed_before(ctx, batch, try_no, try_key, handback_wait, start)
            if instead is not None:
                return instead
        # staged: the child writes its part in the worker's scratch folder, uploaded below
        try:
            record = slot.run(_task(ctx, pool, batch, try_no, try_key, pack), ctx.deadlines)
            if ctx.staging and record.part:
                record = _stage_part(ctx, record, try_key)
        except Exception as err:  # the slot itself failed: this try failed, nothing else did
            log.warning("the slot running mini-batch %d failed: %r", batch.index, err)
            slot.kill()  # its child's state is unknown: the next try starts a new one
            record = _slot_failed(batch, try_no, err)
    finally:
        pool.release(slot)
    return record.with_(
        node=slot.config.node,
        process=slot.config.process,
        start_time=start,
        elapsed=time.time() - start,
    )


def _task(
    ctx: StepContext,
    pool: Any,
    batch: MiniBatch,
    try_no: int,
    try_key: str,
    pack: str | None,
    last: bool = False,
) -> RunTask:
    """What the slot is handed for a try: its rows to the task's pack, to a part of its own
    (staged: in the worker's scratch folder, uploaded after), or nowhere; ``last``: the last
    try of its packed task (the pack is closed after it)."""
    part = pack or (pool.local.where.part(batch.index, try_key) if ctx.writes_parts else None)
    return RunTask(batch, try_no, part, pack is not None, last=last)


def _claimed_before(
    ctx: StepContext,
    batch: MiniBatch,
    try_no: int,
    try_key: str,
    handback_wait: list[float | None] | None,
    start: float,
) -> TryRecord | None:
    """What a try whose claim was taken gives: the record a worker that closed under it left,
    None to run it (that worker handed it back), or a duplicate (Dask ran its task twice)."""
    wait = handback_wait[0] if handback_wait else None
    taken = take_over(
        ctx.store, batch.index, try_key, ctx.handback_seconds if wait is None else wait
    )
    if handback_wait is not None:
        handback_wait[:] = [1.0 if taken is not False else 0.0]
    if isinstance(taken, TryRecord):
        return taken
    if taken:
        return None
    return TryRecord(
        mb=batch.index,
        try_no=try_no,
        status=Status.DUPLICATE,
        start_time=start,
        error="this try was already started elsewhere; Dask ran its task a second time",
    )


def _refused(batch: MiniBatch, try_no: int, err: OSError, doing: str, path: str) -> TryRecord:
    """The record of a try whose claim or rows a disk refused (full, read-only...): no
    try's fault; the step stops there and the mini-batch runs again on --resume."""
    problem, fix = storage_problem(err, path)
    return TryRecord(
        mb=batch.index,
        try_no=try_no,
        status=Status.STORAGE_ERROR,
        total=batch.n_items,
        error=f"{problem} while {doing} mini-batch {batch.index}\n{fix}",
    )


def _slot_failed(batch: MiniBatch, try_no: int, err: Exception) -> TryRecord:
    """The record of a try whose slot itself failed (not its process: the slot's code)."""
    if isinstance(err, OSError) and storage_error(err):  # (a disk it wrote to, not the slot)
        return _refused(batch, try_no, err, "the worker ran", err.filename or "")
    return TryRecord(
        mb=batch.index,
        try_no=try_no,
        status=Status.PROCESS_DIED,
        total=batch.n_items,
        failed=batch.n_items or 0,
        error=f"the worker slot running this try failed: {type(err).__name__}: {err}; "
        "its process was replaced",
    )


def _stage_part(ctx: StepContext, record: TryRecord, try_key: str) -> TryRecord:
    """Upload a try's part from the worker's scratch folder to the staging store; the
    record then names the staged copy (or, when the upload failed, the try failed)."""
    local = record.part or ""
    try:
        staged = ctx.store.upload(local, part_name(record.mb, try_key))
    except Exception as err:  # the store refused or is unreachable: this try failed
        # (a disk's refusal stops the step, its message saying it: not a warning besides)
        log.log(logging.DEBUG if storage_error(err) else logging.WARNING,
                "cannot stage the part of mini-batch %d: %r", record.mb, err)  # fmt: skip
        return _not_staged(ctx, record, err)
    finally:
        _unlink(local)
    return record.with_(part=staged)


def _stage_pack(
    ctx: StepContext, pack: str, first: tuple[int, str], records: dict[Any, TryRecord]
) -> dict[Any, TryRecord]:
    """Upload a packed task's pack from the worker's scratch folder once its tries ended (one
    object for all their rows); each try's range then names the staged copy, at the same
    offset. When the upload fails, every try with rows in the pack failed, as a try whose
    part the store refused (:func:`_stage_part`); a try that returned no rows has nothing to
    stage (no part). ``first``: the task's first mini-batch and try key, which name the
    pack."""
    ranged = set()
    for k, r in records.items():
        if r.part:
            file, _, length = split_ref(r.part)
            if file == pack and length == 0:
                records = {**records, k: r.with_(part=None)}
            elif file == pack:
                ranged.add(k)
    if not ranged:
        _unlink(pack)
        return records
    try:
        staged = ctx.store.upload(pack, pack_name(*first))
    except Exception as err:  # the store refused or is unreachable: these tries failed
        log.log(logging.DEBUG if storage_error(err) else logging.WARNING,
                "cannot stage the rows of %d tries: %r", len(ranged), err)  # fmt: skip
        return {k: _not_staged(ctx, r, err) if k in ranged else r for k, r in records.items()}
    finally:
        _unlink(pack)
    out = dict(records)
    for k in ranged:
        _, offset, length = split_ref(out[k].part or "")
        out[k] = out[k].with_(part=pack_ref(staged, offset, length or 0))
    return out


def _not_staged(ctx: StepContext, record: TryRecord, err: BaseException) -> TryRecord:
    """A try whose rows the staging store did not take: failed, with nothing to commit; or,
    when a disk refused them (a full or read-only staging folder), a stop for the step."""
    if isinstance(err, OSError) and storage_error(err):
        problem, fix = storage_problem(err, ctx.staging)
        return record.with_(
            status=Status.STORAGE_ERROR,
            part=None,
            succeeded=0,
            failed=0,
            error=f"{problem} while the rows of mini-batch {record.mb} were staged\n{fix}",
        )
    return record.with_(
        status=Status.PROCESS_DIED,
        part=None,
        succeeded=0,
        failed=record.total or 0,
        error=f"the rows of this try could not be uploaded to the staging store "
        f"{ctx.staging}: {type(err).__name__}: {err}",
    )


def _unlink(path: str) -> None:
    """Remove the worker's scratch copy of what was staged (or could not be)."""
    try:
        os.unlink(path)
    except OSError:
        pass


def run_tries(ctx: StepContext, items: list[tuple[MiniBatch, int, str]]) -> TryRecords:
    """Run several tries, one after the other, in this worker's slot (one Dask task for many
    small mini-batches). Each keeps its own claim, deadline and record; their rows go to one
    pack, each try's a range of it (:mod:`daskprs.results.packs`)."""
    pool = pool_of(ctx.token, _current_worker())
    records = TryRecords()
    wait: list[float | None] = [None]
    pack = None
    first, _, key = items[0]
    if ctx.packs_parts and len(items) > 1:
        pack = pool.local.where.pack(first.index, key)
    # staged, the pack is in this worker's scratch folder until the tries end: a try with
    # rows there is handed back to run again (None kept), not as a record the driver could
    # not read
    unstaged = pack if ctx.staging else None
    try:
        if len(items) == 1:
            batch, try_no, try_key = items[0]
            record = run_try(ctx, batch, try_no, try_key, wait, pack)
            pool.keep(batch.index, try_key, record)
            records.append(record)
        else:
            got: dict[tuple[int, int], TryRecord] = {}
            for record in _run_in_turn(ctx, pool, items, wait, pack, unstaged):
                got[(record.mb, record.try_no)] = record
            if unstaged:
                got = _stage_pack(ctx, unstaged, (first.index, key), got)
            # in the order of the items (the driver pairs them): a record that needed no run
            # comes back as soon as its claim is looked at, before those running ahead of it
            for batch, try_no, _ in items:
                records.append(got.get((batch.index, try_no)) or not_started(batch.index, try_no))
    finally:
        pool.forget()
        if unstaged:  # (uploaded and removed, or the task failed: its rows go nowhere)
            _unlink(unstaged)
    return records


def _run_in_turn(
    ctx: StepContext,
    pool: Any,
    items: list[tuple[MiniBatch, int, str]],
    wait: list[float | None],
    pack: str | None,
    unstaged: str | None,
) -> Iterator[TryRecord]:
    """The tries of a packed task in one slot, each claimed just before it is handed over
    and the next handed over while one runs (:meth:`Slot.run_many`); each try's record as it
    ends.

    A try is noted as running (:meth:`SlotPool.handed`) before its claim is taken, and as
    finished with its record (:meth:`SlotPool.done`) as it ends, so that a worker closing at
    any moment leaves a marker or a record for every try it claimed. A try with rows in
    ``unstaged`` (a staged run's pack, not uploaded yet) is kept without its record: it is
    handed back to run again."""
    left = iter(items)
    slot = pool.acquire()
    # the tries taken from ``items``, by (mini-batch, try number): key, batch, when claimed,
    # and whether the slot runs it (else its record came from its claim)
    given: dict[tuple[int, int], tuple[str, MiniBatch, float, bool]] = {}

    def tries() -> Iterator[RunTask | TryRecord]:
        for n, (batch, try_no, try_key) in enumerate(left, 1):
            pool.check()
            pool.handed(slot, batch.index, try_key)
            if slot.closing:  # its worker closes: the rest runs elsewhere (not claimed here)
                pool.ended(slot, batch.index, try_key)
                return
            start = time.time()
            given[(batch.index, try_no)] = (try_key, batch, start, False)
            taken = _take_claim(ctx, pool, slot, batch, try_no, try_key)
            if isinstance(taken, TryRecord):  # its disk refused the claim
                yield taken
                continue
            if not taken:
                instead = _claimed_before(ctx, batch, try_no, try_key, wait, start)
                if instead is not None:
                    pool.done(slot, batch.index, try_key, instead)
                    yield instead
                    continue
            given[(batch.index, try_no)] = (try_key, batch, start, True)
            yield _task(ctx, pool, batch, try_no, try_key, pack, last=n == len(items))

    def finished(try_key: str, mb: int, record: TryRecord) -> TryRecord:
        # its worker closed, or its rows found no room: its marker is left (it runs again)
        if record.status in (Status.NOT_STARTED, Status.STORAGE_ERROR):
            pool.ended(slot, mb, try_key)
            return record
        in_pack = unstaged and record.part and split_ref(record.part)[0] == unstaged
        pool.done(slot, mb, try_key, None if in_pack else record)
        return record

    try:
        while True:
            try:
                for record in slot.run_many(tries(), ctx.deadlines):
                    try_key, batch, start, ran = given.pop((record.mb, record.try_no))
                    if ran:  # timed from when it began to run, not from its claim
                        began = max(start, slot.began)
                        record = _ran(ctx, record, try_key, slot, began, stage=pack is None)
                        record = finished(try_key, batch.index, record)
                    yield record
                return
            except Exception as err:  # the slot itself failed: the tries it was given did
                if pool.expired:  # the driver is gone: so is this task
                    raise
                log.warning("the slot running a packed task failed: %r", err)
                slot.kill()  # its child's state is unknown: the next try starts a new one
                for (_, try_no), (try_key, batch, _, _) in list(given.items()):
                    yield finished(try_key, batch.index, _slot_failed(batch, try_no, err))
                given.clear()
    finally:
        pool.release(slot)


def _ran(
    ctx: StepContext, record: TryRecord, try_key: str, slot: Any, start: float, stage: bool
) -> TryRecord:
    """A record from the slot, with where and when it ran; with ``stage``, its part staged
    (``--staging``; a pack's ranges are staged with the pack, :func:`_stage_pack`)."""
    if stage and ctx.staging and record.part:
        record = _stage_part(ctx, record, try_key)
    return record.with_(
        node=slot.config.node,
        process=slot.config.process,
        start_time=start,
        elapsed=time.time() - start,
    )


def claimed(ctx: StepContext, mb: int, try_key: str) -> bool:
    """Whether try ``try_key`` of ``mb`` was started (its claim exists)."""
    return ctx.store.exists(claim_name(mb, try_key))


def kill_running(token: str, dask_worker: Any = None) -> int:
    """Kill the children of step run ``token`` that are running a try on this worker (an
    abort; ``Client.run`` passes ``dask_worker``)."""
    pool = dask_worker.plugins.get(pool_name(token)) if dask_worker is not None else None
    return pool.kill_running() if pool is not None else 0


def since_success(token: str, dask_worker: Any = None) -> float | None:
    """Seconds since a try of step run ``token`` last succeeded on this worker, None when
    none has (``Client.run`` passes ``dask_worker``)."""
    pool = dask_worker.plugins.get(pool_name(token)) if dask_worker is not None else None
    return pool.since_success() if pool is not None else None


def check_worker(paths: tuple[str, ...], staging: str = "") -> dict[str, Any]:
    """Run on each worker before a job on an external cluster: version, visible paths and,
    given a staging folder, what stops this worker from using it (None: nothing)."""
    import daskprs
    from daskprs.execute.store import StepStore

    return {
        "version": daskprs.__version__,
        "missing": [p for p in paths if "://" not in p and not os.path.exists(p)],
        "staging": StepStore(staging).check() if staging else None,
    }
