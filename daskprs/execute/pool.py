"""The slots of one step on one Dask worker, as a worker plugin.

A :class:`SlotPool` is registered on the cluster for each step run
(``client.register_plugin``); every worker, present or joining later, sets one up: it starts
one slot per worker thread at once (the children import their libraries while the driver
submits), hands idle slots to tries and takes them back. Unregistering the plugin tears the
pool down: every child runs ``shutdown()`` and exits.

On a worker that sees GPUs (:func:`daskprs.execute.devices.visible_gpus`) each slot's process
gets its own ``CUDA_VISIBLE_DEVICES``, round-robin over the devices by the slot's process index
on its node, as Azure does. A worker started with ``--resources GPU=n`` starts at most ``n``
slots (the runner then asks one ``GPU`` per task, so Dask runs at most ``n`` at once there).

A worker that closes under running tries (``client.retire_workers``, an adaptive cluster
scaling down, ``dask worker`` stopped) hands them back: :meth:`SlotPool.teardown` leaves a
hand-back marker beside each running try's claim (and the record of each try its packed task
already finished) before it stops the children, so the task Dask reruns elsewhere runs the try
again (or returns its record) instead of counting it as a death (:mod:`daskprs.execute.worker`).
Tries queued on the worker never started and are simply run elsewhere.

The pool also holds a lease on the driver: the driver rewrites the step's lease file every
few seconds (:class:`LeaseKeeper`), and a pool that sees it unchanged for ``lease_seconds``
(the driver was killed; its plugin is still registered), or written by another session's
driver (a resume of the step), kills its children, so no entry-script process outlives its
run for the life of the worker.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from daskprs.execute.codefolder import code_dir_for
from daskprs.execute.context import StepContext
from daskprs.execute.devices import device_for, visible_gpus
from daskprs.execute.slot import Slot
from daskprs.execute.stagedlogs import StagedLogs
from daskprs.execute.store import StepStore
from daskprs.execute.warm import end_slots, local_identity, new_slot, take
from daskprs.rundir import RunDir

__all__ = ["LEASE", "LeaseKeeper", "SlotPool", "pool_of"]

# The lease, in the step's folder (see `LeaseKeeper`).
LEASE = "lease"
# The most seconds between two looks of a slot pool at its driver's lease.
_LEASE_LOOK_EVERY = 5.0

log = logging.getLogger(__name__)


def _identity(ctx: StepContext, index: int, worker: Any) -> tuple[str, str]:
    """The node and process names of slot ``index`` of ``worker``
    (docs/run-directory.md#node-and-process-names)."""
    if worker is None:
        return "node000", f"process{index:03d}"
    name = worker.name
    if ctx.local_concurrency and isinstance(name, int):
        return local_identity(ctx, name, index, worker.state.nthreads)
    suffix = f"-{index}" if worker.state.nthreads > 1 else ""
    # tcp://10.0.0.5:40123 -> 10.0.0.5; inproc://10.0.0.5/4711/3 (a notebook's
    # Client(processes=False)) -> 10.0.0.5: a node's name is one folder
    host = worker.address.split("://")[-1].split("/")[0].rsplit(":", 1)[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
    return host, f"process-{safe}{suffix}"


def _node_index(ctx: StepContext, index: int, worker: Any) -> int:
    """The index of slot ``index`` of ``worker`` among its node's entry-script processes: the
    worker's place on its node on the embedded cluster (one single-threaded worker a
    process), else the slot's place on its worker."""
    name = getattr(worker, "name", None)
    if ctx.local_concurrency and isinstance(name, int):
        return (name % ctx.local_concurrency) * max(1, worker.state.nthreads) + index
    return index


def gpu_slots(worker: Any) -> int | None:
    """The ``GPU`` resource a worker was started with (``--resources GPU=n``), if any."""
    resources = getattr(getattr(worker, "state", None), "total_resources", None) or {}
    value = resources.get("GPU")
    return None if value is None else int(value)


class SlotPool(WorkerPlugin):
    """The entry-script slots of one step run on one worker.

    Parameters
    ----------
    ctx : StepContext
        The step's settings (picklable; the pool's state is made in :meth:`setup`).
    """

    def __init__(self, ctx: StepContext):
        self.ctx = ctx
        self.name = pool_name(ctx.token)

    # -- plugin life cycle -------------------------------------------------------------------
    def setup(self, worker: Any = None) -> None:
        self.worker = worker
        # where this worker's processes write: the run directory, or with staging a scratch
        # folder of this worker's, whose logs are uploaded as they grow (see `StagedLogs`)
        self.local = self.ctx
        self._logs: StagedLogs | None = None
        if self.ctx.staging:
            scratch = tempfile.mkdtemp(prefix=f"daskprs-{self.ctx.token}-")
            self.local = replace(self.ctx, run=RunDir(scratch), staging="")
            os.makedirs(self.local.where.parts, exist_ok=True)
            self._logs = StagedLogs(self.local.run.logs.root, self.ctx).start()
        self._lock = threading.Lock()
        self._idle: list[Slot] = []
        self._all: list[Slot] = []
        # slot -> (mini-batch, try key) it runs now; thread -> tries its task finished
        # the tries each busy slot was handed (a packed task's next try rides behind one)
        self._running: dict[Slot, list[tuple[int, str]]] = {}
        self._finished: dict[int, list[tuple[int, str, Any]]] = {}
        # when a try last succeeded here (time.monotonic()), None before the first: the
        # driver asks before its progress timeout stops a step whose packed tasks still run
        self._succeeded_at: float | None = None
        # set by hand_back (and close): a slot taken from now on starts no try
        self._closing = False
        self._expired = threading.Event()
        self._closed = threading.Event()
        self._devices = visible_gpus()
        nthreads = worker.state.nthreads if worker is not None else 1
        gpus = gpu_slots(worker)
        if gpus is not None:
            nthreads = max(1, min(nthreads, gpus))
        # the embedded cluster's workers find their slot's process started by the driver
        # (`daskprs.execute.warm`); other workers start theirs now
        warm = take(self.ctx.token, getattr(worker, "name", None)) if nthreads == 1 else None
        if warm is not None:
            self._all.append(warm)
            self._idle.append(warm)
        for _ in range(nthreads - len(self._idle)):
            slot = self._new_slot()
            slot.start()
            self._idle.append(slot)
        if self.ctx.lease_seconds:
            threading.Thread(
                target=self._watch_lease,
                args=(self.ctx.store, self.ctx.lease_seconds),
                name=f"daskprs-lease-{self.ctx.token}",
                daemon=True,
            ).start()

    async def teardown(self, worker: Any = None) -> None:
        # off the event loop: the embedded cluster's workers share this process's loop, and
        # their pools wait for their children's shutdown() at once, not one after another
        import asyncio

        await asyncio.to_thread(self._teardown)

    def _teardown(self) -> None:
        self.hand_back()
        self.close()
        if self._logs is not None:  # the last of the logs, then the scratch folder goes
            self._logs.stop()
            shutil.rmtree(self.local.run.root, ignore_errors=True)

    # -- slots -------------------------------------------------------------------------------
    def _new_slot(self) -> Slot:
        ctx = self.local
        index = len(self._all)
        node, process = _identity(ctx, index, self.worker)
        slot = new_slot(
            ctx,
            node,
            process,
            code_dir_for(ctx.token, ctx.child.code_dir),
            device_for(_node_index(ctx, index, self.worker), self._devices),
        )
        self._all.append(slot)
        return slot

    def acquire(self, mb: int = -1, try_key: str = "") -> Slot:
        """An idle slot (a new one when all are busy), noted as running try ``try_key``; once
        the worker closes (:meth:`hand_back`), a slot that starts nothing (``closing``)."""
        self.check()
        with self._lock:
            slot = self._idle.pop() if self._idle else self._new_slot()
            if self._closing:
                slot.closing = True
            if try_key:
                self._running[slot] = [(mb, try_key)]
            return slot

    @property
    def expired(self) -> bool:
        """The driver's lease expired: its tries are no longer run here."""
        return self._expired.is_set()

    def check(self) -> None:
        """Raise when the driver's lease expired (see :meth:`acquire`)."""
        if self._expired.is_set():
            raise RuntimeError(
                f"the driver of step run {self.ctx.token} is gone (its lease expired); "
                "this worker no longer runs its tries"
            )

    def handed(self, slot: Slot, mb: int, try_key: str) -> None:
        """Note that ``slot`` was handed try ``try_key`` (it runs, or waits behind one)."""
        with self._lock:
            self._running.setdefault(slot, []).append((mb, try_key))

    def ended(self, slot: Slot, mb: int, try_key: str) -> None:
        """The try ``try_key`` that ``slot`` was handed has its record."""
        with self._lock:
            tries = self._running.get(slot)
            if tries and (mb, try_key) in tries:
                tries.remove((mb, try_key))

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._running.pop(slot, None)
            if not self._closed.is_set():
                self._idle.append(slot)

    def done(self, slot: Slot, mb: int, try_key: str, record: Any) -> None:
        """:meth:`ended` and :meth:`keep` at once: a worker that closes in between would
        leave neither a marker nor the record of that try."""
        with self._lock:
            tries = self._running.get(slot)
            if tries and (mb, try_key) in tries:
                tries.remove((mb, try_key))
            self._finished.setdefault(threading.get_ident(), []).append((mb, try_key, record))
            if record is None or record.ok:  # (None: its rows wait in a staged pack)
                self._succeeded_at = time.monotonic()

    def since_success(self) -> float | None:
        """Seconds since a try last succeeded on this worker (None: none has yet). A packed
        task returns its tries' records when its last try ends: until then the driver sees
        none of them, however many succeeded."""
        at = self._succeeded_at
        return None if at is None else time.monotonic() - at

    def keep(self, mb: int, try_key: str, record: Any) -> None:
        """Note a try this thread's (packed) task finished, until the task returns; None for
        ``record``: its rows are not where the driver reads them yet (a staged run's pack,
        uploaded when the task's tries end), so that a closing worker hands it back to run
        again."""
        with self._lock:
            self._finished.setdefault(threading.get_ident(), []).append((mb, try_key, record))

    def forget(self) -> None:
        """This thread's task returned its records: nothing of it to hand back."""
        with self._lock:
            self._finished.pop(threading.get_ident(), None)

    def hand_back(self) -> int:
        """Kill the busy children, then leave a hand-back marker for every try they ran and
        the record of every try a still-running task finished (a marker for one kept without
        its record, :meth:`keep`); return the markers left."""
        from daskprs.execute.handback import leave_marker, leave_record

        with self._lock:
            self._closing = True
            for slot in self._all:  # no try is started or handed over any more
                slot.closing = True
            running = [t for tries in self._running.values() for t in tries]
            finished = [item for items in self._finished.values() for item in items]
        if running:
            # first the children, so that a try never runs in two places at once
            self.kill_running()
            log.info(
                "this worker closes under %d running tries of step run %s; handed back",
                len(running),
                self.ctx.token,
            )
        store = self.ctx.store
        for mb, try_key in running:
            leave_marker(store, mb, try_key)
        for mb, try_key, record in finished:
            if record is None:
                leave_marker(store, mb, try_key)
            else:
                leave_record(store, mb, try_key, record)
        return len(running) + len(finished)

    def kill_running(self) -> int:
        """Kill the children that are running a try now (an abort); slots stay."""
        with self._lock:
            busy = [s for s in self._all if s not in self._idle]
        for slot in busy:
            slot.kill_child()
        return len(busy)

    def close(self, kill: bool = False) -> int:
        """Stop every slot (``shutdown()``, then exit; or kill) and drop the local caches."""
        with self._lock:
            self._closed.set()
            self._closing = True
            slots, self._all, self._idle = self._all, [], []
        end_slots(slots, kill)  # every child's shutdown() at once
        return len(slots)

    # -- the driver's lease ------------------------------------------------------------------
    def _watch_lease(self, store: StepStore, seconds: float) -> None:
        path = store.url(LEASE)
        mine = lease_owner(self.ctx.token)
        last, seen = None, time.monotonic()
        # looked at often enough to see a resuming driver's lease while its session runs
        every = min(seconds / 4, _LEASE_LOOK_EVERY)
        while not self._closed.wait(every):
            try:
                value = store.get(LEASE)
            except Exception:  # an unreachable store gives no sign either
                value = None
            if value is not None and not value.startswith(mine):
                # another driver holds the step's lease: it resumed the step, so this pool's
                # driver is gone (killed), whatever time is left of its lease
                why = "another driver resumed the step"
            elif value is not None and value != last:
                last, seen = value, time.monotonic()
                continue
            elif time.monotonic() - seen > seconds:
                why = f"its driver gave no sign for {seconds:.0f} s"
            else:
                continue
            log.warning(
                "step run %s: %s (lease %s); killing its entry-script processes",
                self.ctx.token,
                why,
                path,
            )
            self._expired.set()
            self.close(kill=True)
            return


def lease_owner(token: str) -> bytes:
    """How the lease of step run ``token`` starts: a lease that starts otherwise is another
    session's."""
    return f"{token} ".encode()


def pool_name(token: str) -> str:
    return f"daskprs-slots-{token}"


def pool_of(token: str, worker: Any) -> SlotPool:
    """The slot pool of step run ``token`` on ``worker``."""
    pool = worker.plugins.get(pool_name(token)) if worker is not None else None
    if pool is None:
        raise RuntimeError(
            f"this Dask worker has no slots for step run {token}: its plugin was not set up "
            "(the worker may be closing)"
        )
    return pool


class LeaseKeeper:
    """The driver's side of the lease: rewrites the lease every ``seconds / 4``.

    Parameters
    ----------
    store : StepStore
        The step's folder the workers see (the run directory's, or the staging store's).
    seconds : float
        The lease; workers kill their children after that long without a rewrite.
    token : str
        The step run (session) it is this driver's lease for: a pool of another session
        that sees it knows its own driver is gone.
    """

    def __init__(self, store: StepStore, seconds: float, token: str):
        self.store, self.seconds, self.token = store, seconds, token
        self.path = store.url(LEASE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daskprs-lease", daemon=True)
        self._beats = 0

    def start(self) -> LeaseKeeper:
        self._beat()
        self._thread.start()
        return self

    def _beat(self) -> None:
        self._beats += 1
        try:
            beat = f"{os.getpid()} {self._beats}\n".encode()
            self.store.put(LEASE, lease_owner(self.token) + beat)
        except Exception as err:  # a store that fails once may answer the next time
            log.warning("cannot renew the lease %s: %s", self.path, err)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 4):
            self._beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            if (self.store.get(LEASE) or b"").startswith(lease_owner(self.token)):
                self.store.remove(LEASE)  # (a later driver's lease is its own)
        except Exception as err:  # a lease left behind only expires
            log.warning("cannot remove the lease %s: %s", self.path, err)
