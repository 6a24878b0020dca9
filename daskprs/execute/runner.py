"""The driver loop of one session of a step: submit tries, carry out the supervisor's
instructions, record what comes back.

Tries are submitted in a bounded window and streamed back as they finish
(docs/design.md#exactly-once-claims-and-the-ledger); short tries are packed several to a Dask
task (:class:`_Packer`), each keeping its own claim, deadline and record. Each result is a
small :class:`TryRecord`; rows never travel through the client. The ledger, the report, the
progress file and the growing output are written as records arrive. :func:`drive` is called
by :func:`daskprs.execute.step.run_parallel_step`, which prepares the session and finishes the
step.

"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from daskprs.execute.cluster import ClusterHandle
from daskprs.execute.codefolder import CodeFolder
from daskprs.execute.context import StepContext
from daskprs.execute.pool import LeaseKeeper, SlotPool
from daskprs.execute.resume import Session
from daskprs.execute.supervisor import Finalize, Instruction, Policy, Stop, Submit, Supervisor
from daskprs.execute.worker import claimed, kill_running, run_tries, run_try, since_success
from daskprs.inputs.batches import MiniBatch
from daskprs.observe import logs
from daskprs.observe.processed import mark_report, open_report, session_header
from daskprs.observe.progress import Progress
from daskprs.results.ledger import Ledger
from daskprs.results.outcome import BatchState, Status, TryRecord
from daskprs.results.output import PartialOutput
from daskprs.rundir import RunDir

__all__ = ["Launch", "Ran", "drive", "on_workers", "submission_window"]

log = logging.getLogger(__name__)

# Seconds between updates of the progress overview file (the display throttles itself).
_PROGRESS_EVERY = 5.0
# Seconds between updates of the live display, at most.
_LIVE_EVERY = 0.25
# How often the driver wakes with nothing finished, to check the progress timeout.
_TICK = 0.5
# How often the driver counts the cluster's worker threads, so that the submission window
# follows workers that join or leave (an adaptive cluster).
_RESIZE_EVERY = 5.0
# How often the driver marks its ledger and try report as agreeing (daskprs.observe.processed).
_MARK_EVERY = 5.0


def _duplicate_as_death(rec: TryRecord) -> TryRecord:
    """A try Dask ran a second time found its claim taken: the first run was lost with its
    worker. Count it as a dead process, never run it twice."""
    if rec.status != Status.DUPLICATE:
        return rec
    return rec.with_(
        status=Status.PROCESS_DIED,
        error="the Dask worker running this try was lost, and Dask started the try "
        "again elsewhere; daskprs counts it as a failed try instead of running it twice",
    )


def _lost(fut: Any, sub: Submit, ctx: StepContext) -> TryRecord:
    """The record of a try whose Dask task failed or vanished (its worker died)."""
    from distributed import KilledWorker

    if not claimed(ctx, sub.mb, sub.try_key):
        return TryRecord(mb=sub.mb, try_no=sub.try_no, status=Status.NOT_STARTED)
    if fut.status == "error":
        exc = fut.exception()
        name = type(exc).__name__
        if isinstance(exc, KilledWorker):
            error = (
                "the Dask worker running this mini-batch died (its process was killed or ran "
                "out of memory)"
            )
        else:
            error = f"the Dask task of this try failed: {name}: {exc}"
    else:
        error = f"the Dask task of this try was {fut.status} (its worker was lost)"
    return TryRecord(mb=sub.mb, try_no=sub.try_no, status=Status.PROCESS_DIED, error=error)


class _Packer:
    """Packs consecutive submissions into Dask tasks of several tries when tries are short.

    A Dask task costs the scheduler and the driver about a millisecond or two whatever it
    does; mini-batches much shorter than that would spend most of their time on it. Tries are
    packed so that a task lasts about ``TARGET_SECONDS`` (measured from the tries so far),
    never more than ``MAX_PACK`` tries, and never so many that the last tasks leave workers
    idle. Each try keeps its own claim, deadline and record.
    """

    # Chosen with `python -m benchmarks overhead`, `cpu` and `images`: Dask's per-task cost
    # (the scheduler and the client, in the driver process: 4-5 ms of CPU a task on this
    # 2-core machine) takes CPU from the entry scripts on a small machine. 1 s tasks took about
    # a third less driver CPU than 250 ms ones over 200 x 100 ms tries (0.05 s gave the same
    # overhead figure but a lower cpu efficiency), and 2 s ones half the tasks of 1 s ones
    # over 200 image tries of 0.1 s (24-30 against 40-60); tasks shrink again at the tail (see
    # ``groups``), so no worker idles long while another finishes. ``MAX_PACK`` bounds a task
    # of tries of a few milliseconds: 256 no-op tries a task took a million mini-batches
    # through one driver with a quarter of the Dask tasks of 64 (``python -m benchmarks
    # scale``).
    TARGET_SECONDS = 2.0
    MAX_PACK = 256
    # Tries queued a worker: about this many seconds of them, two to four tasks. A retry (or
    # a try a killed process leaves) goes behind what is queued: with four 2 s tasks a
    # worker, a hung try's retry in `python -m benchmarks timeout` ran last and the job ended
    # 1 s later (8.4 s against 7.4 s).
    AHEAD_SECONDS = 4.0

    def __init__(self, n_workers: int):
        self.n_workers = max(1, n_workers)
        self.mean: float | None = None
        self.seen = 0
        self._met: set[tuple[str, str]] = set()

    def observe(self, rec: TryRecord) -> None:
        if rec.status in (Status.RUN_DONE, Status.EMPTY) and rec.elapsed > 0:
            # a process's first try waited for its init() (and paid run()'s first call):
            # counted, it kept the tasks of a 70 ms image model's tries small for a hundred
            # tries (the mean is of every try until the twentieth)
            who = (rec.node, rec.process)
            if who not in self._met:
                self._met.add(who)
                return
            self.seen += 1
            alpha = max(0.05, 1.0 / self.seen)
            self.mean = (
                rec.elapsed
                if self.mean is None
                else ((1 - alpha) * self.mean + alpha * rec.elapsed)
            )

    @property
    def size(self) -> int:
        """Tries a task: about ``TARGET_SECONDS`` of them, and no more than the tries measured
        so far, so that tasks grow as the measure does (the first tries of a job whose tries
        are mostly short and now and then long said nothing of the long ones: 98 tries a task
        took 13 s instead of 2)."""
        if self.mean is None or self.seen < self.n_workers:
            return 1
        size = min(self.MAX_PACK, self.seen, int(self.TARGET_SECONDS / max(self.mean, 1e-4)))
        return max(1, size)

    @property
    def window(self) -> int:
        """Tries kept in flight: two to four tasks a worker, about ``AHEAD_SECONDS`` of them;
        before a try's length is known, two single-try tasks a worker (one running, one
        queued: more would each be a task of one try)."""
        if self.mean is None or self.seen < self.n_workers:
            return 2 * self.n_workers
        size = self.size
        ahead = int(self.AHEAD_SECONDS / max(self.mean, 1e-4))
        return self.n_workers * min(4 * size, max(2 * size, ahead))

    def groups(self, subs: list[Submit], pending: int) -> list[list[Submit]]:
        """``subs`` in tasks: of ``size`` tries while many are left (``pending`` wait behind
        them), smaller and smaller towards the end (a task a worker of the tries left
        each time, halved), down to an eighth of ``size``. The tasks of a whole job given
        at once (its window holds every try) end in small ones too: the last tasks were as
        long as the first, and a slow try held the tries packed behind it while the other
        workers had nothing left to run."""
        if not subs:
            return []
        share = 2 * self.n_workers
        left = len(subs) + pending
        least = max(1, min(self.size // 8, left // share))
        out: list[list[Submit]] = []
        i = 0
        while i < len(subs):
            size = max(least, min(self.size, left // share))
            out.append(subs[i : i + size])
            i += size
            left -= size
        return out


def _item_counts(batches: Mapping[int, MiniBatch]) -> Mapping[int, int | None]:
    """Each mini-batch's planned item count by id (a compact plan answers without making a
    million descriptors)."""
    counts = getattr(batches, "item_counts", None)
    return counts() if callable(counts) else {mb: b.n_items for mb, b in batches.items()}


def submission_window(slots: int) -> int:
    """Tries kept in flight for a cluster of ``slots`` worker threads (times the packing):
    enough to keep every worker busy while results stream back; bounded, so that a budget
    stop cancels little and driver memory stays flat."""
    return max(8, 4 * slots)


def task_resources(client: Any) -> dict[str, float] | None:
    """``{"GPU": 1}`` when a worker of the cluster was started with ``--resources GPU=n``: each
    task then holds one GPU, so Dask runs at most ``n`` tries at once on that worker and none
    on workers without GPUs; else None (one try per worker thread)."""
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except (OSError, TimeoutError):
        return None
    if any((w.get("resources") or {}).get("GPU") for w in workers.values()):
        return {"GPU": 1}
    return None


class _StepRun:
    """The loop of one step: carries out the supervisor's instructions on the cluster and
    feeds it the outcomes, writing the ledger and the report as they come."""

    def __init__(
        self,
        client: Any,
        launch: Launch,
        sup: Supervisor,
        ledger: Ledger,
        packer: _Packer,
        output: PartialOutput | None = None,
    ):
        self.client, self.ctx, self.sup, self.packer = client, launch.ctx, sup, packer
        self.batches = launch.batches
        self.resources = task_resources(client)
        self.output = output
        self._sized = time.monotonic()
        self.ledger = ledger
        # (the report is checked against the ledgers before this session's header is written)
        self.report = open_report(self.ctx.run)
        self._marked = time.monotonic()
        self.ledger.start_session(session_header(self.ctx.step, sup.session, len(self.batches)))
        self.done: queue.Queue = queue.Queue()
        # Dask key -> (future, the tries it carries)
        self.futures: dict[str, tuple[Any, list[Submit]]] = {}
        # tries given by the supervisor, waiting for the others of their task
        # (:meth:`_submit_held`)
        self.held: list[Submit] = []

    def submit(self, group: list[Submit]) -> None:
        if len(group) == 1:
            sub = group[0]
            args: tuple = (run_try, self.ctx, self.batches[sub.mb], sub.try_no, sub.try_key)
            key = sub.key
        else:
            items = [(self.batches[g.mb], g.try_no, g.try_key) for g in group]
            args = (run_tries, self.ctx, items)
            key = f"{group[0].key}-x{len(group)}"
        fut = self.client.submit(*args, key=key, pure=False, retries=0, resources=self.resources)
        self.futures[fut.key] = (fut, group)
        fut.add_done_callback(lambda f: self.done.put(f.key))

    def carry_out(self, instructions: list[Instruction]) -> None:
        while instructions:
            self.held += [i for i in instructions if isinstance(i, Submit)]
            for ins in instructions:
                if isinstance(ins, Finalize):
                    self.ledger.record_final(ins.mb, ins.state, ins.record)
                    self._ended(ins.mb, ins.state, ins.record)
            # packing more tries a task wants more of them in flight
            window = self.packer.window
            instructions = self.sup.on_window(window) if window != self.sup.window else []
        self._submit_held()

    def _submit_held(self) -> None:
        """Submit the tries the supervisor gave, packed: full tasks at once; the tries short
        of a full task wait for more (tries come back a few at a time, and each task costs
        Dask the same) while enough tasks are queued to keep every worker busy."""
        if not self.held:
            return
        groups = self.packer.groups(self.held, self.sup.backlog)
        if len(groups[-1]) < len(groups[0]) and len(self.futures) + len(groups) - 1 >= (
            2 * self.packer.n_workers
        ):
            self.held = groups.pop()
        else:
            self.held = []
        for group in groups:
            self.submit(group)

    def handle(self, rec: TryRecord, sub: Submit) -> list[Instruction]:
        """Feed one outcome to the supervisor; return the instructions left to carry out."""
        rec = rec.with_(key=sub.key)
        self.packer.observe(rec)
        instructions = self.sup.on_outcome(sub.try_key, rec, time.monotonic())
        if rec.status in (Status.NOT_STARTED, Status.STORAGE_ERROR):  # not a try: no record
            return instructions
        # a try that ended its mini-batch is written once, with its final state
        final = next((i for i in instructions if isinstance(i, Finalize) and i.record is rec), None)
        self.ledger.record_try(rec, final.state if final is not None else None)
        self.report.add(rec)
        if final is not None:
            self._ended(rec.mb, final.state, rec)
        return [i for i in instructions if i is not final]

    def _ended(self, mb: int, state: BatchState, record: TryRecord | None) -> None:
        """Mini-batch ``mb`` reached its final state: its part (if DONE) joins the output."""
        if self.output is not None:
            part = record.part if state == BatchState.DONE and record is not None else None
            self.output.ended(mb, part)

    def _records(self, ready: list[tuple[Any, list[Submit]]]) -> list[tuple[TryRecord, Submit]]:
        """The records of finished futures, fetched in one round trip."""
        finished = [f for f, _ in ready if f.status == "finished"]
        try:
            values = self.client.gather(finished)
        except Exception as err:  # a result lost with its worker: fall back to one at a time
            log.debug(
                "gathering %d results failed (%s); fetching one at a time", len(finished), err
            )
            values = [_result_or_none(f) for f in finished]
        results = dict(zip((f.key for f in finished), values, strict=True))
        out: list[tuple[TryRecord, Submit]] = []
        for fut, group in ready:
            value = results.get(fut.key)
            if value is not None:
                records = value if isinstance(value, list) else [value]
                records = [_duplicate_as_death(r) for r in records]
            else:
                records = [_lost(fut, g, self.ctx) for g in group]
            fut.release()
            out += zip(records, group, strict=True)
        return out

    def _flush(self) -> None:
        """Write the ledger lines and report rows of the batch in hand, in one write each;
        every few seconds, mark the two as agreeing (a driver killed later leaves the next
        session only the report's rows past the mark to add)."""
        self.ledger.flush()
        self.report.flush()
        now = time.monotonic()
        if now - self._marked >= _MARK_EVERY:
            self._marked = now
            mark_report(self.ctx.run)

    def loop(self, progress: Callable[[], None]) -> Stop:
        """Run until the supervisor stops; return its verdict."""
        self.carry_out(self.sup.start())
        self._flush()
        while not self.sup.finished:
            progress()
            self._follow_cluster()
            try:
                keys = [self.done.get(timeout=_TICK)]
            except queue.Empty:
                self._look_for_progress()
                self.carry_out(self.sup.on_tick(time.monotonic()))
                self._flush()
                continue
            while True:  # everything else already finished: one gather for all of them
                try:
                    keys.append(self.done.get_nowait())
                except queue.Empty:
                    break
            ready = [self.futures.pop(k) for k in keys if k in self.futures]
            instructions: list[Instruction] = []
            for rec, sub in self._records(ready):
                instructions += self.handle(rec, sub)
            # the whole batch's submissions together, so that short tries can be packed
            self.carry_out(instructions)
            self._flush()
        stop = self.sup.stopped
        if stop is None:  # the loop ends only when the supervisor stopped
            raise RuntimeError("the driver loop ended before the supervisor stopped")
        self.held = []  # (stopped early: never run, as the tasks cancelled below)
        if self.futures:
            _cancel(self.client, self.futures, self.ctx.token)
        return stop

    def _look_for_progress(self) -> None:
        """Before the progress timeout stops the step: a packed task returns the records of
        its tries when its last try ends, so tries may have succeeded on the workers since
        the last record came back. Ask the workers when one last did (only then: a round
        trip to every worker)."""
        limit, sup = self.sup.policy.progress_timeout, self.sup
        now = time.monotonic()
        if limit is None or sup.stopped is not None or now - sup.last_progress <= limit:
            return
        try:
            answers = self.client.run(since_success, self.ctx.token, on_error="return")
        except Exception as err:  # the timeout decides without them
            log.debug("could not ask the workers when a try last succeeded: %s", err)
            return
        ages = [a for a in answers.values() if isinstance(a, int | float)]
        if ages:
            sup.on_success_seen(now - max(0.0, min(ages)))

    def _follow_cluster(self) -> None:
        """Every few seconds: size the window to the worker threads there are now."""
        now = time.monotonic()
        if now - self._sized < _RESIZE_EVERY:
            return
        self._sized = now
        try:
            workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        except (OSError, TimeoutError):
            return
        slots = sum(w.get("nthreads", 1) for w in workers.values())
        if slots and slots != self.packer.n_workers:
            self.packer.n_workers = slots
            self.carry_out(self.sup.on_window(self.packer.window))

    def abort(self) -> None:
        """Interrupted: cancel what is queued, kill what runs, keep what is committed."""
        self.carry_out(self.sup.abort("interrupted"))
        _cancel(self.client, self.futures, self.ctx.token)

    def close(self, finished: bool = True) -> None:
        self.ledger.close()
        self.report.close()
        mark_report(self.ctx.run)  # both closed: the next session appends to the report
        if self.output is not None:
            self.output.close(keep=finished)


def _result_or_none(fut: Any) -> Any:
    try:
        return fut.result()
    except Exception as err:  # the caller records the try as lost
        log.debug("the result of %s is lost: %s: %s", fut.key, type(err).__name__, err)
        return None


@dataclass(frozen=True)
class Launch:
    """One session of one step, ready to run: what :func:`drive` needs.

    Attributes
    ----------
    ctx : StepContext
        What every try needs on a worker.
    batches : mapping of int to MiniBatch
        The plan's mini-batches by id.
    session : Session
        What this session runs, and what earlier ones settled.
    policy : Policy
        The step's failure handling.
    plan_seconds : float
        How long planning took (for the progress overview).
    ship_code : bool
        Copy the code folder to every worker (some cannot see it).
    """

    ctx: StepContext
    batches: Mapping[int, MiniBatch]
    session: Session
    policy: Policy
    plan_seconds: float = 0.0
    ship_code: bool = False


@dataclass(frozen=True)
class Ran:
    """What :func:`drive` gives back: the supervisor's verdict and its last counts."""

    stop: Stop
    summary: dict[str, int]
    seconds: float


def drive(
    cluster: ClusterHandle,
    launch: Launch,
    ledger: Ledger,
    display: Progress,
    output: PartialOutput | None = None,
) -> Ran:
    """Run the session's mini-batches on ``cluster`` until the supervisor stops.

    Registers the step's slot pool (and the shipped code folder) on the workers, keeps the
    driver's lease on an external cluster, feeds ``display`` and appends every try to
    ``ledger`` (and each committed part to ``output``). The workers' plugins are removed at
    the end, whatever ended it: that runs every child's ``shutdown()``.

    Raises
    ------
    KeyboardInterrupt
        Interrupted: what was queued is cancelled, what ran is killed, what was committed is
        kept in the ledger.
    """
    ctx, client, slots = launch.ctx, cluster.client, cluster.n_workers
    started = time.monotonic()
    if not ctx.staging:
        for sub in (ctx.where.parts, ctx.where.claims):
            os.makedirs(sub, exist_ok=True)
    sup = Supervisor(
        _item_counts(launch.batches),
        replace(launch.policy, window=submission_window(slots)),
        todo=launch.session.todo,
        prior=launch.session.prior,
        session=launch.session.number,
        now=started,
    )
    plugins: list[Any] = [CodeFolder(ctx.token, ctx.child.code_dir)] if launch.ship_code else []
    # the pool starts every worker's slots now: the children import their libraries while
    # the driver submits
    plugins.append(SlotPool(ctx))
    lease = (
        LeaseKeeper(ctx.store, ctx.lease_seconds, ctx.token).start() if ctx.lease_seconds else None
    )
    try:
        for plugin in plugins:
            client.register_plugin(plugin)
        step_run = _StepRun(client, launch, sup, ledger, _Packer(slots), output)
    except BaseException:  # nothing ran: leave nothing behind
        if lease is not None:
            lease.stop()
        if output is not None:
            output.close(keep=False)
        ledger.close()
        raise
    live = _Live(display, ctx.run, ctx.step, sup, started, launch.plan_seconds, slots)
    display.start(ctx.step, sup.summary(), slots)
    finished = False
    try:
        stop = step_run.loop(live.tick)
        finished = True
    except KeyboardInterrupt:
        step_run.abort()
        raise
    finally:
        live.finish()
        step_run.close(finished)
        # unregistering the pool runs every child's shutdown() (or finds it killed)
        for plugin in reversed(plugins):
            _unregister(client, plugin.name)
        if lease is not None:
            lease.stop()
    return Ran(stop, sup.summary(), time.monotonic() - started)


class _Live:
    """Feeds the progress display the supervisor's counts (at most every ``_LIVE_EVERY``
    seconds) and rewrites the progress overview file every ``_PROGRESS_EVERY`` seconds."""

    def __init__(
        self,
        display: Progress,
        run: RunDir,
        step: str,
        sup: Supervisor,
        started: float,
        plan_seconds: float,
        slots: int | None = None,
    ):
        self.display, self.run, self.step, self.sup = display, run, step, sup
        self.started, self.plan_seconds, self.slots = started, plan_seconds, slots
        self._shown = self._written = started
        # processed in earlier sessions: this session's rate leaves them out
        first = sup.summary()
        self.before = first["done"] + first["failed"]

    def _overview(self, summary: dict[str, int], elapsed: float) -> None:
        text = logs.format_progress_overview(
            self.step, summary, elapsed, self.plan_seconds, self.before, self.slots
        )
        logs.write_text(self.run.logs.progress_overview(), text)

    def tick(self) -> None:
        now = time.monotonic()
        if now - self._shown < _LIVE_EVERY:
            return
        self._shown = now
        summary = self.sup.summary()
        self.display.update(summary, now - self.started)
        if now - self._written >= _PROGRESS_EVERY:
            self._written = now
            self._overview(summary, now - self.started)

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        summary = self.sup.summary()
        self.display.finish(summary, elapsed)
        self._overview(summary, elapsed)


def _cancel(client: Any, futures: dict[str, tuple[Any, list]], token: str) -> None:
    """Cancel queued tries and kill the children running the others."""
    client.cancel([f for f, _ in futures.values()], force=True)
    futures.clear()
    on_workers(client, kill_running, token, what="kill the running entry scripts")


def on_workers(client: Any, fn: Callable[..., Any], *args: Any, what: str) -> dict[str, Any]:
    """Run ``fn`` on every worker; log the workers where it failed and return their errors.

    Parameters
    ----------
    what : str
        What ``fn`` does, for the log (``"kill the running entry scripts"``).
    """
    try:
        answers = client.run(fn, *args, on_error="return")
    except Exception as err:  # the scheduler itself is gone or unreachable
        log.warning(
            "could not %s: the cluster did not answer (%s: %s)", what, type(err).__name__, err
        )
        return {"scheduler": err}
    failed = {a: r for a, r in answers.items() if isinstance(r, BaseException)}
    for address, error in sorted(failed.items()):
        log.warning("could not %s on worker %s: %s: %s", what, address, type(error).__name__, error)
    return failed


def _unregister(client: Any, name: str) -> None:
    try:
        client.unregister_worker_plugin(name)
    except Exception as err:  # a cluster going away has nothing left to clean; say so
        log.warning("could not remove the worker plugin %s: %s: %s", name, type(err).__name__, err)
