"""The Dask side of a step: submit tries, carry out the supervisor's instructions, commit.

One Dask future per try, submitted in a bounded window and streamed back as they finish
(DESIGN decision 2). Each result is a small :class:`TryRecord`; rows never travel through the
client. The ledger, the report and the progress file are written as records arrive; the
output is assembled from the committed parts once the step is over.
"""

from __future__ import annotations

import os
import queue
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from daskprs.errors import Interrupted
from daskprs.execute.slot import Deadlines
from daskprs.execute.supervisor import Finalize, Policy, Prior, Stop, Submit, Supervisor
from daskprs.execute.worker import (
    CodeFolder,
    StepContext,
    kill_running,
    prestart,
    run_tries,
    run_try,
    stop_slots,
)
from daskprs.inputs.batches import MiniBatch
from daskprs.inputs.plan import Plan
from daskprs.job.model import ParallelStep
from daskprs.observe import logs
from daskprs.observe.progress import PlainProgress, Progress
from daskprs.results.formatting import load_to_csv_options
from daskprs.results.jobresult import StepOutcome
from daskprs.results.ledger import Ledger, LedgerState
from daskprs.results.outcome import Status, TryRecord
from daskprs.results.output import assemble

__all__ = ["run_step"]

# Seconds between updates of the progress overview file (the display throttles itself).
_PROGRESS_EVERY = 5.0
# Seconds between updates of the live display, at most.
_LIVE_EVERY = 0.25
# How often the driver wakes with nothing finished, to check the progress timeout.
_TICK = 0.5


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
    from daskprs.execute.worker import claimed

    if not claimed(ctx, sub.mb, sub.try_key):
        return TryRecord(mb=sub.mb, try_no=sub.try_no, status=Status.NOT_STARTED)
    if fut.status == "error":
        exc = fut.exception()
        name = type(exc).__name__
        if name == "KilledWorker":
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

    # Chosen with `python -m benchmarks overhead` and `cpu`: 250 ms tasks keep Dask's and the
    # driver's per-task cost under a few percent (0.05 s gave the same overhead figure but a
    # lower cpu efficiency); tasks shrink again at the tail (see ``groups``).
    TARGET_SECONDS = 0.25
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
    per_node = step.max_concurrency_per_instance or os.cpu_count() or 1
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
        step_dir: str,
        run_dir: str,
    ):
        self.client, self.ctx, self.sup, self.batches, self.packer = (
            client,
            ctx,
            sup,
            batches,
            packer,
        )
        self.ledger = Ledger(os.path.join(step_dir, "ledger.jsonl"))
        self.ledger.start_session(
            {"step": ctx.step, "session": sup.session, "batches": len(batches)}
        )
        self.report = logs.Report(run_dir)
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
        fut = self.client.submit(*args, key=key, pure=False, retries=0)
        self.futures[fut.key] = (fut, group)
        fut.add_done_callback(lambda f: self.done.put(f.key))

    def carry_out(self, instructions: list) -> None:
        subs = [i for i in instructions if isinstance(i, Submit)]
        for group in self.packer.groups(subs, len(self.sup.pending)):
            self.submit(group)
        for ins in instructions:
            if isinstance(ins, Finalize):
                self.ledger.record_final(ins.mb, ins.state, ins.record)
        self.sup.window = self.packer.window

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
        return [i for i in instructions if i is not final]

    def _records(self, ready: list[tuple[Any, list[Submit]]]) -> list[tuple[TryRecord, Submit]]:
        """The records of finished futures, fetched in one round trip."""
        finished = [f for f, _ in ready if f.status == "finished"]
        try:
            values = self.client.gather(finished)
        except Exception:  # a result lost with its worker: fall back to one at a time
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
        try:
            self.client.run(prestart, self.ctx)
        except Exception:  # a worker that cannot start a slot now starts it on its first task
            pass
        self.carry_out(self.sup.start())
        while not self.sup.finished:
            progress()
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
        _stop_slots(self.client, self.ctx.token)
        return stop

    def abort(self) -> None:
        """Interrupted: cancel what is queued, kill what runs, keep what is committed."""
        self.carry_out(self.sup.abort("interrupted"))
        _cancel(self.client, self.futures, self.ctx.token)
        _stop_slots(self.client, self.ctx.token, kill=True)

    def close(self) -> None:
        self.ledger.close()
        self.report.close()


def _result_or_none(fut: Any) -> Any:
    try:
        return fut.result()
    except Exception:
        return None


def run_step(
    client: Any,
    step: ParallelStep,
    plan: Plan,
    run_dir: str,
    *,
    n_workers: int,
    local: bool,
    session: int = 0,
    prior: dict[int, Prior] | None = None,
    todo: list[int] | None = None,
    echo: Callable[[str], None] | None = None,
    window: int | None = None,
    ship_code: bool = False,
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
    run_dir : str
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
    """
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    display = progress or PlainProgress(echo)
    started = time.monotonic()
    step_dir = os.path.join(run_dir, "steps", step.name)
    batches: dict[int, MiniBatch] = {b.index: b for b in plan.batches}
    per_node = step.max_concurrency_per_instance or os.cpu_count() or 1
    ctx = StepContext(
        token=f"{step.name}-{uuid.uuid4().hex[:12]}",
        step=step.name,
        run_dir=run_dir,
        code_dir=step.code_dir,
        entry_script=step.entry_script,
        argv=tuple(step.program_arguments),
        env={str(k): str(v) for k, v in step.environment_variables.items()},
        output_dir=step.output_dir or "",
        logging_level=step.settings.logging_level,
        append_row=step.append_row_to is not None,
        to_csv=load_to_csv_options(step.code_dir) if step.append_row_to else {},
        deadlines=Deadlines(load=step.settings.task_overhead_timeout, run=step.settings.timeout),
        memory_limit=_memory_limit(n_workers, local),
        local_concurrency=per_node if local else None,
        monitor_interval=step.settings.resource_monitor_interval,
        profiling_module=step.settings.profiling_module,
    )
    for sub in (ctx.parts_dir, ctx.claims_dir):
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
    shipped = None
    if ship_code:
        shipped = CodeFolder(ctx.token, step.code_dir)
        client.register_plugin(shipped)
    run = _StepRun(client, ctx, sup, batches, _Packer(n_workers), step_dir, run_dir)
    live = _Live(display, run_dir, step.name, sup, started, plan.seconds)
    display.start(step.name, sup.summary(), n_workers)
    try:
        stop = run.loop(live.tick)
    except KeyboardInterrupt as err:
        run.abort()
        raise Interrupted(
            f"step {step.name} was interrupted; the mini-batches already committed are kept. "
            f"Continue with: daskprs run --resume {run_dir}"
        ) from err
    finally:
        live.finish()
        run.close()
        if shipped is not None:
            try:
                client.unregister_worker_plugin(shipped.name)
            except Exception:  # a cluster that is going away has nothing left to clean
                pass
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
        run_dir: str,
        step: str,
        sup: Supervisor,
        started: float,
        plan_seconds: float,
    ):
        self.display, self.run_dir, self.step, self.sup = display, run_dir, step, sup
        self.started, self.plan_seconds = started, plan_seconds
        self._shown = self._written = started

    def _overview(self, summary: dict[str, int], elapsed: float) -> None:
        logs.write_text(
            logs.progress_overview_path(self.run_dir),
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
    try:
        client.run(kill_running, token)
    except Exception:  # a worker that is gone has nothing left to kill
        pass


def _stop_slots(client: Any, token: str, kill: bool = False) -> None:
    """Let every slot of the step run ``shutdown()`` and end its child (or kill it)."""
    try:
        client.run(stop_slots, token, kill=kill)
    except Exception:
        pass


def assemble_output(step: ParallelStep, ledger_state: LedgerState) -> tuple[str | None, int]:
    """Write ``append_row_to`` from the committed parts of every DONE mini-batch, in order."""
    if step.append_row_to is None:
        return None, 0
    parts = [
        e.part
        for mb, e in sorted(ledger_state.entries.items())
        if e.state == "DONE" and e.part is not None
    ]
    written = assemble(parts, step.append_row_to)
    return step.append_row_to, written
