"""``map_batches``: run ``run()`` over every partition of a user's Dask collection, with the
slots, kill-on-timeout, retries, budgets, ledger and resume of a job file.

The collection is staged to files (:mod:`daskprs.mapping.staging`), each partition becomes a
mini-batch, the step runs through :func:`daskprs.execute.runner.run_step` with structured
parts, and the result (:class:`daskprs.results.mapresult.MapResult`) is read back from the
ledger. The run directory is the truth: calling again with the same ``run_dir`` continues it.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from daskprs.errors import Interrupted, UserInputError
from daskprs.execute.cluster import ClusterHandle, open_cluster
from daskprs.execute.runner import run_step
from daskprs.inputs.plan import Plan
from daskprs.job.model import DataInput, ParallelStep, RuntimeSettings
from daskprs.mapping.entry import entry_code
from daskprs.mapping.staging import collection_kind, load_staged, stage
from daskprs.observe import logs
from daskprs.pipeline import check_workers, outcome_from_ledger, todo_and_prior
from daskprs.results.jobresult import StepOutcome
from daskprs.results.ledger import LedgerState, read_ledger
from daskprs.results.mapresult import FailedPartition, MapResult
from daskprs.rundir import RunDir, RunLocked

__all__ = ["RECORD_FILE", "STEP", "map_batches"]

STEP = "map_batches"
RECORD_FILE = "map_batches.json"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _default_run_dir() -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return os.path.abspath(os.path.join("daskprs-runs", f"{STEP}-{stamp}"))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _settings(
    timeout: Any, max_retries: Any, error_threshold: Any, mini_batch_error_threshold: Any
) -> RuntimeSettings:
    """The step's failure handling, checked."""
    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool) or timeout <= 0:
        raise UserInputError(
            f"map_batches: timeout must be a number of seconds > 0, not {timeout!r}"
        )
    if not _is_int(max_retries) or max_retries < 0:
        raise UserInputError(
            f"map_batches: max_retries must be an integer >= 0, not {max_retries!r}"
        )
    thresholds = {
        "error_threshold": error_threshold,
        "mini_batch_error_threshold": mini_batch_error_threshold,
    }
    for name, value in thresholds.items():
        if not _is_int(value) or value < -1:
            raise UserInputError(
                f"map_batches: {name} must be an integer >= 0, or -1 for no limit, not {value!r}"
            )
    return RuntimeSettings(
        max_retries=int(max_retries),
        timeout=float(timeout),
        error_threshold=int(error_threshold),
        mini_batch_error_threshold=int(mini_batch_error_threshold),
    )


def _step(
    code_dir: str, script: str, staged_dir: str, slots: int, settings: RuntimeSettings
) -> ParallelStep:
    """The parallel step a map_batches call runs: every slot on one (emulated) node."""
    return ParallelStep(
        name=STEP,
        input_data=DataInput(name="collection", type="uri_folder", path=staged_dir),
        entry_script=script,
        code_dir=code_dir,
        max_concurrency_per_instance=slots,
        settings=settings,
    )


def _run(
    handle: ClusterHandle,
    step: ParallelStep,
    plan: Plan,
    run_dir: str,
    resumed: bool,
    echo: Callable[[str], None],
) -> StepOutcome:
    """Run what the ledger says is left (all of it on a first call) and return the outcome."""
    state = read_ledger(RunDir(run_dir).step(STEP).ledger)
    todo, prior = todo_and_prior(plan, state, "resume" if resumed else "run")
    if resumed:
        echo(f"[{STEP}] continuing {run_dir}: {len(todo)} of {len(plan.batches)} partitions to run")
    if not todo:
        return outcome_from_ledger(step, plan, state)
    ship_code = False
    if not handle.local:
        ship_code = check_workers(handle.client, step, run_dir)
    try:
        return run_step(
            handle.client,
            step,
            plan,
            RunDir(run_dir),
            n_workers=handle.n_workers,
            local=handle.local,
            session=state.sessions,
            prior=prior,
            todo=todo,
            echo=echo,
            ship_code=ship_code,
            structured_parts=True,
        )
    except Interrupted as err:
        raise Interrupted(
            "map_batches was interrupted; the partitions already done are kept. "
            f"Continue with map_batches(..., run_dir={run_dir!r})"
        ) from err


def _open_record(run_dir: str, kind: str, npartitions: int) -> tuple[dict[str, Any], bool]:
    """The run's record: a new one, or that of the earlier call being continued."""
    path = RunDir(run_dir).map_record
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if (record["kind"], record["npartitions"]) != (kind, npartitions):
            raise UserInputError(
                f"map_batches: {run_dir} holds a run over a Dask {record['kind']} of "
                f"{record['npartitions']} partitions; this call gives a Dask {kind} of "
                f"{npartitions}. Give a new run_dir to run over this collection."
            )
        return record, True
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise UserInputError(
            f"map_batches: the run directory {run_dir} exists, is not empty and holds no "
            "map_batches run. Give a new run_dir (or the run_dir of an earlier map_batches "
            "call to continue it)."
        )
    os.makedirs(run_dir, exist_ok=True)
    record = {"kind": kind, "npartitions": npartitions, "created": time.time()}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return record, False


def _current_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except ValueError:  # no client in this process
        return None


def _result(
    run_dir: str, plan: Plan, state: LedgerState, failure: str | None, summary: dict[str, int]
) -> MapResult:
    """The result as the ledger records it; writes ``failed_mini_batches.jsonl`` too."""
    parts: dict[int, str] = {}
    failed: list[FailedPartition] = []
    entries: list[dict[str, Any]] = []
    batches = {b.index: b for b in plan.batches}
    for mb in sorted(batches):
        e = state.entries.get(mb)
        if e is None:
            continue
        if e.state == "DONE" and e.part is not None:
            parts[mb] = e.part
        elif e.state in ("FAILED", "CANCELLED"):
            rec = e.record
            failed.append(
                FailedPartition(
                    partition=mb,
                    status=rec.status if rec is not None else e.state,
                    tries=rec.try_no if rec is not None else 0,
                    error=rec.error if rec is not None else "cancelled before it ran",
                    traceback=rec.traceback if rec is not None else "",
                )
            )
            entries.append(logs.failed_entry(STEP, mb, batches[mb].describe(), rec, e.state))
    logs.write_jsonl(RunDir(run_dir).failed_mini_batches, entries)
    return MapResult(run_dir=run_dir, failure=failure, summary=summary, failed=failed, parts=parts)


def _write_result_log(result: MapResult) -> None:
    s = result.summary
    lines = [
        f"map_batches run: {result.run_dir}",
        f"outcome: {result.status}",
        f"{s['done']} of {s['total']} partitions done, {s['failed']} failed, "
        f"{s['cancelled']} cancelled; {s['succeeded_items']} items succeeded, "
        f"{s['failed_items']} failed",
        f"output: {len(result.parts)} parts in " + RunDir(result.run_dir).step(STEP).parts,
    ]
    if result.failure is not None:
        lines.append(f"failure: {result.failure}")
    for f in result.failed:
        lines.append(f"partition {f.partition} ({f.status}, {f.tries} tries): {f.error}")
    logs.write_text(RunDir(result.run_dir).logs.job_result, "\n".join(lines))


def map_batches(
    collection: Any,
    run: Callable[..., Any] | None = None,
    *,
    init: Callable[[], Any] | None = None,
    shutdown: Callable[[], Any] | None = None,
    entry_script: str | os.PathLike | None = None,
    timeout: float = 60.0,
    max_retries: int = 2,
    error_threshold: int = -1,
    mini_batch_error_threshold: int = -1,
    client: Any = None,
    run_dir: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = None,
) -> MapResult:
    """Run ``run()`` over every partition of a Dask DataFrame or bag, like a parallel job.

    Each partition is one mini-batch: ``run(mini_batch)`` (or ``run(mini_batch,
    mini_batch_context)``) receives it as a pandas DataFrame (a DataFrame partition, index
    kept) or a list (a bag partition) in a child process of a Dask worker, and returns a
    DataFrame or a list. ``init()`` runs once per process before its first ``run()``,
    ``shutdown()`` at the end. A ``run()`` over ``timeout`` has its process killed and
    replaced; a failing mini-batch is retried ``max_retries`` times; the budgets stop the run
    as in a job file. Calling again with the same ``run_dir`` after an interruption runs only
    the partitions not finished yet (failed ones stay failed).

    Parameters
    ----------
    collection : dask.dataframe.DataFrame or dask.bag.Bag
        The data, one mini-batch per partition. It is computed once and staged to files in
        the run directory.
    run : callable, optional
        The function called on each partition; pickled (cloudpickle) to the child processes.
    init, shutdown : callable, optional
        Called without arguments once per child process, before the first ``run()`` and at
        the end.
    entry_script : path, optional
        An Azure entry script (``init``/``run``/``shutdown``) instead of ``run``.
    timeout : float
        Seconds one ``run()`` may take (``retry_settings.timeout``).
    max_retries : int
        Retries of a failed mini-batch (``retry_settings.max_retries``).
    error_threshold : int
        Failed items (rows, bag items) allowed before the run stops; -1: no limit.
    mini_batch_error_threshold : int
        Failed mini-batches allowed before the run stops; -1: no limit.
    client : distributed.Client, optional
        The cluster to run on; default: the current Dask client if there is one, else an
        embedded local cluster. Its workers must see the run directory.
    run_dir : path, optional
        The run directory (default ``./daskprs-runs/map_batches-<UTC time>``). An earlier
        call's run directory continues that run.
    echo : callable, optional
        Where progress lines go (default: stderr).

    Returns
    -------
    MapResult
        ``status``/``ok``, counts, ``failed`` partitions with their errors, and ``output``:
        the returned rows as a Dask DataFrame or bag, in partition order.

    Raises
    ------
    UserInputError
        Bad arguments (not a Dask DataFrame or bag, both ``run`` and ``entry_script``, a
        function that cannot be pickled, ...) or a collection that cannot be computed.
    Interrupted
        Interrupted (Ctrl-C); committed partitions are kept for the next call.
    """
    started = time.monotonic()
    echo = echo or _say
    kind = collection_kind(collection)
    settings = _settings(timeout, max_retries, error_threshold, mini_batch_error_threshold)
    if run_dir is not None and "://" in os.fspath(run_dir):
        raise UserInputError(
            f"map_batches: run_dir {os.fspath(run_dir)} must be a folder (local, or on a "
            "filesystem every worker mounts)"
        )
    run_dir = os.path.abspath(os.fspath(run_dir)) if run_dir else _default_run_dir()
    npartitions = collection.npartitions
    if npartitions == 0:
        raise UserInputError("map_batches: the collection has no partitions")
    # checked before anything is written, so a bad call leaves no run directory behind
    code = entry_code(run=run, init=init, shutdown=shutdown, entry_script=entry_script)
    _, resumed = _open_record(run_dir, kind, npartitions)

    rundir = RunDir(run_dir)
    try:
        rundir.lock()
    except RunLocked as err:
        raise UserInputError(str(err)) from None
    try:
        code_dir, script = code.write(rundir.generated_code)
        given = client if client is not None else _current_client()
        workers = min(npartitions, os.cpu_count() or 1)
        with open_cluster(client=given, n_workers=workers) as handle:
            staged_dir = rundir.staged
            batches = load_staged(staged_dir) if resumed else None
            if batches is None:
                echo(f"[{STEP}] staging {npartitions} partitions of the Dask {kind}")
                batches = stage(collection, staged_dir, handle.client)
            plan = Plan(
                kind="tabular" if kind == "dataframe" else "files",
                batches=tuple(batches),
                input_root=staged_dir,
            )
            step = _step(code_dir, script, staged_dir, handle.n_workers, settings)
            outcome = _run(handle, step, plan, run_dir, resumed, echo)
        ledger = read_ledger(rundir.step(STEP).ledger)
        result = _result(run_dir, plan, ledger, outcome.failure, outcome.summary)
    finally:
        rundir.unlock()
    result.seconds = time.monotonic() - started
    _write_result_log(result)
    echo(f"[{STEP}] {result.status} ({run_dir})")
    return result
