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
from dataclasses import dataclass, field
from typing import Any

from daskprs import logs
from daskprs.batches import MiniBatch
from daskprs.errors import Interrupted
from daskprs.formatting import load_to_csv_options
from daskprs.jobmodel import ParallelStep
from daskprs.ledger import Ledger, LedgerState
from daskprs.outcome import Status, TryRecord
from daskprs.output import assemble
from daskprs.plan import Plan
from daskprs.slot import Deadlines
from daskprs.supervisor import Finalize, Policy, Prior, Stop, Submit, Supervisor
from daskprs.worker import StepContext, kill_running, run_try, stop_slots

__all__ = ["StepOutcome", "run_step"]

# Seconds between progress reports on the console and in the progress overview file.
_PROGRESS_EVERY = 5.0
# How often the driver wakes with nothing finished, to check the progress timeout.
_TICK = 0.5


@dataclass
class StepOutcome:
    """What a step did: its verdict, counts, output location and failed mini-batches."""

    step: str
    failure: str | None
    budget: str | None
    summary: dict[str, int]
    output: str | None
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    plan_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _collect(fut: Any, mb: int, try_no: int) -> TryRecord:
    """The record of a finished future; Dask-level failures become PROCESS_DIED."""
    if fut.status == "finished":
        rec = fut.result()
        if rec.status == Status.DUPLICATE:
            return rec.with_(
                status=Status.PROCESS_DIED,
                error="the Dask worker running this try was lost, and Dask started the try "
                "again elsewhere; daskprs counts it as a failed try instead of running it twice",
            )
        return rec
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
        return TryRecord(mb=mb, try_no=try_no, status=Status.PROCESS_DIED, error=error)
    return TryRecord(
        mb=mb,
        try_no=try_no,
        status=Status.PROCESS_DIED,
        error=f"the Dask task of this try was {fut.status} (its worker was lost)",
    )


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
        Where progress lines go (default: stderr).
    """
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
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
    ledger = Ledger(os.path.join(step_dir, "ledger.jsonl"))
    ledger.start_session({"step": step.name, "session": session, "batches": len(batches)})
    report = logs.Report(run_dir)
    done_q: queue.Queue = queue.Queue()
    futures: dict[str, tuple[Any, int, int]] = {}
    last_report = time.monotonic()

    def carry_out(instructions: list) -> None:
        for ins in instructions:
            if isinstance(ins, Submit):
                fut = client.submit(
                    run_try,
                    ctx,
                    batches[ins.mb],
                    ins.try_no,
                    ins.try_key,
                    key=ins.key,
                    pure=False,
                    retries=0,
                )
                futures[ins.try_key] = (fut, ins.mb, ins.try_no)
                fut.add_done_callback(lambda f, k=ins.try_key: done_q.put(k))
            elif isinstance(ins, Finalize):
                ledger.record_final(ins.mb, ins.state, ins.record)

    try:
        carry_out(sup.start())
        while not sup.finished:
            try:
                try_key = done_q.get(timeout=_TICK)
            except queue.Empty:
                carry_out(sup.on_tick(time.monotonic()))
            else:
                entry = futures.pop(try_key, None)
                if entry is not None:
                    fut, mb, try_no = entry
                    rec = _collect(fut, mb, try_no).with_(key=fut.key)
                    fut.release()
                    ledger.record_try(rec)
                    report.add(rec)
                    carry_out(sup.on_outcome(try_key, rec, time.monotonic()))
            now = time.monotonic()
            if now - last_report >= _PROGRESS_EVERY:
                last_report = now
                _progress(echo, run_dir, step.name, sup, now - started, plan.seconds)
    except KeyboardInterrupt as err:
        carry_out(sup.abort("interrupted"))
        _cancel(client, futures, ctx.token)
        ledger.close()
        report.close()
        raise Interrupted(
            f"step {step.name} was interrupted; the mini-batches already committed are kept. "
            f"Continue with: daskprs run --resume {run_dir}"
        ) from err
    stop = sup.stopped
    assert isinstance(stop, Stop)
    if futures:
        _cancel(client, futures, ctx.token)
    _stop_slots(client, ctx.token)
    ledger.close()
    report.close()
    elapsed = time.monotonic() - started
    _progress(echo, run_dir, step.name, sup, elapsed, plan.seconds)
    return StepOutcome(
        step=step.name,
        failure=stop.failure,
        budget=stop.budget,
        summary=sup.summary(),
        output=None,
        seconds=elapsed,
        plan_seconds=plan.seconds,
    )


def _progress(
    echo: Callable[[str], None],
    run_dir: str,
    step: str,
    sup: Supervisor,
    elapsed: float,
    plan_seconds: float,
) -> None:
    summary = sup.summary()
    echo(logs.format_progress(step, summary, elapsed))
    logs.write_text(
        logs.progress_overview_path(run_dir),
        logs.format_progress_overview(step, summary, elapsed, plan_seconds),
    )


def _cancel(client: Any, futures: dict[str, tuple[Any, int, int]], token: str) -> None:
    """Cancel queued tries and kill the children running the others."""
    client.cancel([f for f, _, _ in futures.values()], force=True)
    futures.clear()
    try:
        client.run(kill_running, token)
    except Exception:  # a worker that is gone has nothing left to kill
        pass


def _stop_slots(client: Any, token: str) -> None:
    """Let every slot of the step run ``shutdown()`` and end its child."""
    try:
        client.run(stop_slots, token)
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
