"""The Dask side of a step: submit tries, carry out the supervisor's instructions, commit.

One Dask future per try, submitted in a bounded window and streamed back as they finish
(DESIGN decision 2). Each result is a small :class:`TryRecord`; rows never travel through the
client. The ledger, the report and the progress file are written as records arrive; the
output is assembled from the committed parts once the step is over.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from daskprs.errors import Interrupted
from daskprs.execute.codefolder import CodeFolder
from daskprs.execute.deadlines import SHUTDOWN_SECONDS, Deadlines
from daskprs.execute.pool import LeaseKeeper, SlotPool, lease_seconds
from daskprs.execute.supervisor import Finalize, Policy, Prior, Stop, Submit, Supervisor
from daskprs.execute.worker import StepContext, claimed, kill_running, run_tries, run_try
from daskprs.inputs.batches import FileBatch, MiniBatch
from daskprs.inputs.plan import Plan
from daskprs.job.model import ParallelStep
from daskprs.observe import logs
from daskprs.observe.progress import PlainProgress, Progress
from daskprs.results.formatting import structured_part_options
from daskprs.results.jobresult import StepOutcome
from daskprs.results.ledger import Ledger, LedgerState
from daskprs.results.outcome import BatchState, Status, TryRecord
from daskprs.results.output import PartialOutput, assemble, is_url
from daskprs.rundir import RunDir

__all__ = ["run_step"]

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

    # Chosen with `python -m benchmarks overhead` and `cpu`: Dask's per-task cost (the
    # scheduler and the client, in the driver process) takes CPU from the entry scripts on a
    # small machine. 1 s tasks took about a third less driver CPU than 250 ms ones over 200
    # x 100 ms tries (0.05 s gave the same overhead figure but a lower cpu efficiency); tasks
    # shrink again at the tail (see ``groups``).
    TARGET_SECONDS = 1.0
    MAX_PACK = 64

    def __init__(self, n_workers: int):
        self.n_workers = max(1, n_workers)
        self.mean: float | None = None
        self.seen = 0

    def observe(self, rec: TryRecord) -> None:
        if rec.status in (Status.RUN_DONE, Status.EMPTY) and rec.elapsed > 0:
            self.seen += 1
            alpha = max(0.05, 1.0 / self.seen)
            self.mean = (
                rec.elapsed
                if self.mean is None
                else ((1 - alpha) * self.mean + alpha * rec.elapsed)
            )

    @property
    def size(self) -> int:
        if self.mean is None or self.seen < self.n_workers:
            return 1
        return max(1, min(self.MAX_PACK, int(self.TARGET_SECONDS / max(self.mean, 1e-4))))

    @property
    def window(self) -> int:
        return max(8, 4 * self.n_workers) * self.size

    def groups(self, subs: list[Submit], pending: int) -> list[list[Submit]]:
        if not subs:
            return []
        left = len(subs) + pending
        size = max(1, min(self.size, left // (2 * self.n_workers)))
        return [subs[i : i + size] for i in range(0, len(subs), size)]


def policy_for(step: ParallelStep, n_workers: int, window: int | None) -> Policy:
    s = step.settings
    per_node = step.processes_per_instance
    return Policy(
        max_retries=s.max_retries,
        error_threshold=s.error_threshold,
        mini_batch_error_threshold=s.mini_batch_error_threshold,
        allowed_failed_percent=s.allowed_failed_percent,
        progress_timeout=s.effective_progress_update_timeout,
        nodes=max(1, step.instance_count),
        processes_per_node=per_node,
        append_row=step.append_row_to is not None,
        window=window or max(8, 4 * n_workers),
    )


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


def _deadlines(step: ParallelStep) -> Deadlines:
    """The try's phase limits; loading the script and ``init()`` get the load and the run
    limits added up; ``shutdown()`` gets ``DASKPRS_SHUTDOWN_TIMEOUT`` seconds (default 30)."""
    load, run = step.settings.task_overhead_timeout, step.settings.timeout
    init = load + run if load is not None and run is not None else None
    shutdown = float(os.environ.get("DASKPRS_SHUTDOWN_TIMEOUT") or SHUTDOWN_SECONDS)
    return Deadlines(load=load, run=run, init=init, shutdown=shutdown)


def _memory_limit(n_workers: int, local: bool) -> int | None:
    """Resident memory allowed to one entry-script process."""
    env = os.environ.get("DASKPRS_CHILD_MEMORY_LIMIT")
    if env:
        from dask.utils import parse_bytes

        return parse_bytes(env)
    if not local:
        return None
    import psutil

    return int(psutil.virtual_memory().total * 0.8 / max(1, n_workers))


class _StepRun:
    """The loop of one step: carries out the supervisor's instructions on the cluster and
    feeds it the outcomes, writing the ledger and the report as they come."""

    def __init__(
        self,
        client: Any,
        ctx: StepContext,
        sup: Supervisor,
        batches: dict[int, MiniBatch],
        packer: _Packer,
        resources: dict[str, float] | None = None,
        output: PartialOutput | None = None,
    ):
        self.client, self.ctx, self.sup, self.batches, self.packer = (
            client,
            ctx,
            sup,
            batches,
            packer,
        )
        self.resources = resources
        self.output = output
        self._sized = time.monotonic()
        self.ledger = Ledger(ctx.where.ledger)
        self.ledger.start_session(
            {"step": ctx.step, "session": sup.session, "batches": len(batches)}
        )
        self.report = logs.Report(ctx.run.logs.processed_report)
        self.done: queue.Queue = queue.Queue()
        # Dask key -> (future, the tries it carries)
        self.futures: dict[str, tuple[Any, list[Submit]]] = {}

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

    def carry_out(self, instructions: list) -> None:
        while instructions:
            subs = [i for i in instructions if isinstance(i, Submit)]
            for group in self.packer.groups(subs, self.sup.backlog):
                self.submit(group)
            for ins in instructions:
                if isinstance(ins, Finalize):
                    self.ledger.record_final(ins.mb, ins.state, ins.record)
                    self._ended(ins.mb, ins.state, ins.record)
            # packing more tries a task wants more of them in flight
            window = self.packer.window
            instructions = self.sup.on_window(window) if window != self.sup.window else []

    def handle(self, rec: TryRecord, sub: Submit) -> list:
        """Feed one outcome to the supervisor; return the instructions left to carry out."""
        rec = rec.with_(key=sub.key)
        self.packer.observe(rec)
        instructions = self.sup.on_outcome(sub.try_key, rec, time.monotonic())
        if rec.status == Status.NOT_STARTED:
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
        out = []
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

    def loop(self, progress: Callable[[], None]) -> Stop:
        """Run until the supervisor stops; return its verdict."""
        self.carry_out(self.sup.start())
        while not self.sup.finished:
            progress()
            self._follow_cluster()
            try:
                keys = [self.done.get(timeout=_TICK)]
            except queue.Empty:
                self.carry_out(self.sup.on_tick(time.monotonic()))
                continue
            while True:  # everything else already finished: one gather for all of them
                try:
                    keys.append(self.done.get_nowait())
                except queue.Empty:
                    break
            ready = [self.futures.pop(k) for k in keys if k in self.futures]
            instructions: list = []
            for rec, sub in self._records(ready):
                instructions += self.handle(rec, sub)
            # the whole batch's submissions together, so that short tries can be packed
            self.carry_out(instructions)
        stop = self.sup.stopped
        assert isinstance(stop, Stop)
        if self.futures:
            _cancel(self.client, self.futures, self.ctx.token)
        return stop

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
        if self.output is not None:
            self.output.close(keep=finished)


def _result_or_none(fut: Any) -> Any:
    try:
        return fut.result()
    except Exception as err:  # the caller records the try as lost
        log.debug("the result of %s is lost: %s: %s", fut.key, type(err).__name__, err)
        return None


def run_step(
    client: Any,
    step: ParallelStep,
    plan: Plan,
    run: RunDir,
    *,
    n_workers: int,
    local: bool,
    session: int = 0,
    prior: dict[int, Prior] | None = None,
    todo: list[int] | None = None,
    echo: Callable[[str], None] | None = None,
    window: int | None = None,
    ship_code: bool = False,
    structured_parts: bool = False,
    progress: Progress | None = None,
) -> StepOutcome:
    """Run the mini-batches of one parallel step on ``client``'s cluster.

    Parameters
    ----------
    client : distributed.Client
        The cluster to run on.
    step : ParallelStep
        The resolved step.
    plan : Plan
        Its mini-batches.
    run : RunDir
        The run directory (absolute).
    n_workers : int
        Worker slots available (sizes the submission window and the memory limit).
    local : bool
        True on the embedded cluster (names nodes ``node000``..., sets a memory limit).
    session : int
        0 for a new run; 1, 2, ... for each resume or rerun.
    prior, todo
        For resume and rerun: final states from earlier sessions and the mini-batches to run.
    echo : callable, optional
        Where progress lines go when ``progress`` is not given (default: stderr).
    progress : Progress, optional
        The live progress display (:func:`daskprs.observe.progress.choose_progress`); default:
        plain lines through ``echo``.
    ship_code : bool
        Copy the code folder to every worker (for workers that cannot see it).
    structured_parts : bool
        Keep every successful try's returned rows as a structured part (parquet or pickle,
        :mod:`daskprs.results.structured`) instead of Azure's text rows: ``map_batches``.
    """
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    display = progress or PlainProgress(echo)
    started = time.monotonic()
    batches: dict[int, MiniBatch] = {b.index: b for b in plan.batches}
    per_node = step.processes_per_instance
    ctx = StepContext(
        token=f"{step.name}-{uuid.uuid4().hex[:12]}",
        step=step.name,
        run=run,
        code_dir=step.code_dir,
        entry_script=step.entry_script,
        argv=tuple(step.program_arguments),
        env={str(k): str(v) for k, v in step.environment_variables.items()},
        output_dir=step.output_dir or "",
        logging_level=step.settings.logging_level,
        append_row=step.append_row_to is not None,
        to_csv=dict(step.to_csv_options),
        deadlines=_deadlines(step),
        memory_limit=_memory_limit(n_workers, local),
        local_concurrency=per_node if local else None,
        monitor_interval=step.settings.resource_monitor_interval,
        profiling_module=step.settings.profiling_module,
        lease_seconds=0.0 if local else lease_seconds(),
        python=step.python,
        tables=any(not isinstance(b, FileBatch) for b in plan.batches),
    )
    if structured_parts:  # map_batches: every try's rows kept as data
        ctx = replace(ctx, append_row=True, to_csv=structured_part_options())
    for sub in (ctx.where.parts, ctx.where.claims):
        os.makedirs(sub, exist_ok=True)
    if step.output_dir and "://" not in step.output_dir:
        os.makedirs(step.output_dir, exist_ok=True)

    sup = Supervisor(
        {b.index: b.n_items for b in plan.batches},
        policy_for(step, n_workers, window),
        todo=todo,
        prior=prior,
        session=session,
        now=time.monotonic(),
    )
    plugins = []
    if ship_code:
        plugins.append(CodeFolder(ctx.token, step.code_dir))
    # the pool starts every worker's slots now: the children import their libraries while
    # the driver submits
    plugins.append(SlotPool(ctx))
    lease = LeaseKeeper(ctx.where.lease, ctx.lease_seconds).start() if ctx.lease_seconds else None
    for plugin in plugins:
        client.register_plugin(plugin)
    output = None
    dest = step.append_row_to
    if dest and not structured_parts and not prior and not is_url(dest):
        # a fresh step: its output grows while it runs (resume and rerun assemble at the end)
        output = PartialOutput(dest, sorted(batches))
    step_run = _StepRun(
        client, ctx, sup, batches, _Packer(n_workers), task_resources(client), output
    )
    live = _Live(display, run, step.name, sup, started, plan.seconds)
    display.start(step.name, sup.summary(), n_workers)
    finished = False
    try:
        stop = step_run.loop(live.tick)
        finished = True
    except KeyboardInterrupt as err:
        step_run.abort()
        raise Interrupted(
            f"step {step.name} was interrupted; the mini-batches already committed are kept. "
            f"Continue with: daskprs run --resume {run.root}"
        ) from err
    finally:
        live.finish()
        step_run.close(finished)
        # unregistering the pool runs every child's shutdown() (or finds it killed)
        for plugin in reversed(plugins):
            _unregister(client, plugin.name)
        if lease is not None:
            lease.stop()
    elapsed = time.monotonic() - started
    return StepOutcome(
        step=step.name,
        failure=stop.failure,
        budget=stop.budget,
        summary=sup.summary(),
        output=None,
        seconds=elapsed,
        plan_seconds=plan.seconds,
    )


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
    ):
        self.display, self.run, self.step, self.sup = display, run, step, sup
        self.started, self.plan_seconds = started, plan_seconds
        self._shown = self._written = started

    def _overview(self, summary: dict[str, int], elapsed: float) -> None:
        logs.write_text(
            self.run.logs.progress_overview(),
            logs.format_progress_overview(self.step, summary, elapsed, self.plan_seconds),
        )

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
    for address, err in sorted(failed.items()):
        log.warning("could not %s on worker %s: %s: %s", what, address, type(err).__name__, err)
    return failed


def _unregister(client: Any, name: str) -> None:
    try:
        client.unregister_worker_plugin(name)
    except Exception as err:  # a cluster going away has nothing left to clean; say so
        log.warning("could not remove the worker plugin %s: %s: %s", name, type(err).__name__, err)


def assemble_output(step: ParallelStep, ledger_state: LedgerState) -> tuple[str | None, int]:
    """Write ``append_row_to`` from the committed parts of every DONE mini-batch, in order."""
    if step.append_row_to is None:
        return None, 0
    parts = [
        e.part
        for mb, e in sorted(ledger_state.entries.items())
        if e.state == BatchState.DONE and e.part is not None
    ]
    written = assemble(parts, step.append_row_to)
    return step.append_row_to, written
