"""``map_batches``: run ``run()`` over every partition of a user's Dask collection, with the
slots, kill-on-timeout, retries, budgets, ledger and resume of a job file.

The collection is staged to files (:mod:`daskprs.mapping.staging`), each partition becomes a
mini-batch, and the step runs through :func:`daskprs.execute.step.run_parallel_step` (the
function that runs a job file's parallel steps) with structured parts; the result
(:class:`daskprs.results.mapresult.MapResult`) is its outcome. The run directory is the
truth: calling again with the same ``run_dir`` continues it.
"""

from __future__ import annotations

import json
import numbers
import os
import time
from collections.abc import Callable
from typing import Any

from daskprs.errors import Interrupted, UserInputError
from daskprs.execute.cluster import open_cluster
from daskprs.execute.resume import Mode
from daskprs.execute.step import StepRequest, run_parallel_step
from daskprs.execute.store import run_staging
from daskprs.inputs.plan import Plan
from daskprs.job.model import DataInput, ParallelStep, RuntimeSettings
from daskprs.mapping.entry import entry_code
from daskprs.mapping.staging import collection_kind, load_staged, stage
from daskprs.observe import logs
from daskprs.results.jobresult import StepOutcome
from daskprs.results.mapresult import MapResult
from daskprs.rundir import RunDir, default_run_dir
from daskprs.settings import EnvSettings

__all__ = ["RECORD_FILE", "STEP", "map_batches"]

STEP = "map_batches"
RECORD_FILE = "map_batches.json"


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


def _open_record(
    run_dir: str, kind: str, npartitions: int, staging: str
) -> tuple[dict[str, Any], bool]:
    """The run's record: a new one, or that of the earlier call being continued (whose
    ``staging`` it keeps when this call gives none)."""
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
        record["staging"] = staging or record.get("staging", "")
        return record, True
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise UserInputError(
            f"map_batches: the run directory {run_dir} exists, is not empty and holds no "
            "map_batches run. Give a new run_dir (or the run_dir of an earlier map_batches "
            "call to continue it)."
        )
    os.makedirs(run_dir, exist_ok=True)
    record = {
        "kind": kind,
        "npartitions": npartitions,
        "created": time.time(),
        **({"staging": staging} if staging else {}),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return record, False


def _current_client() -> Any:
    try:
        from distributed import default_client

        return default_client()
    except ValueError:  # no client in this process
        return None


def _result(run: RunDir, outcome: StepOutcome) -> MapResult:
    """The result of the call, from its step's outcome; writes ``failed_mini_batches.jsonl``
    too."""
    logs.write_jsonl(run.failed_mini_batches, (f.to_json() for f in outcome.failed))
    return MapResult(
        run_dir=run.root,
        failure=outcome.failure,
        summary=dict(outcome.summary),
        failed=list(outcome.failed),
        parts=dict(outcome.parts),
    )


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
    staging: str | None = None,
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
        embedded local cluster. Its workers must see the run directory, or ``staging``.
    run_dir : path, optional
        The run directory (default ``./daskprs-runs/map_batches-<UTC time>``). An earlier
        call's run directory continues that run.
    echo : callable, optional
        Where progress lines go (default: stderr).
    staging : str, optional
        An fsspec URL (``s3://bucket/prefix``) or a folder every worker mounts, for workers
        that cannot see the run directory: the partitions are staged there, and the workers
        leave their claims, parts and logs there
        (docs/clusters.md#workers-without-a-shared-filesystem). The parts stay there while
        the result's ``output`` reads them. A later call with the same ``run_dir`` uses the
        same staging.

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
    env = EnvSettings.from_env()
    echo = echo or logs.to_stderr
    kind = collection_kind(collection)
    settings = _settings(timeout, max_retries, error_threshold, mini_batch_error_threshold)
    if run_dir is not None and "://" in os.fspath(run_dir):
        raise UserInputError(
            f"map_batches: run_dir {os.fspath(run_dir)} must be a folder (local, or on a "
            "filesystem every worker mounts)"
        )
    run_dir = os.path.abspath(os.fspath(run_dir)) if run_dir else default_run_dir(STEP)
    npartitions = collection.npartitions
    if npartitions == 0:
        raise UserInputError("map_batches: the collection has no partitions")
    # checked before anything is written, so a bad call leaves no run directory behind
    code = entry_code(run=run, init=init, shutdown=shutdown, entry_script=entry_script)
    given_staging = os.fspath(staging).rstrip("/") if staging else ""
    record, resumed = _open_record(run_dir, kind, npartitions, given_staging)
    staging = record.get("staging") or ""

    rundir = RunDir(run_dir)
    rundir.lock()
    try:
        # daskprs's log of the run, and Dask's warnings (the embedded workers' too), in
        # logs/sys/daskprs.log; the console shows what it showed before
        with logs.driver_logging(rundir.logs.driver, "WARNING"):
            code_dir, script = code.write(rundir.generated_code)
            given = client if client is not None else _current_client()
            workers = min(npartitions, os.cpu_count() or 1)
            with open_cluster(client=given, n_workers=workers, settings=env) as handle:
                staged_dir = f"{run_staging(staging, run_dir)}/staged" if staging else rundir.staged
                batches = load_staged(staged_dir) if resumed else None
                if batches is None:
                    echo(f"[{STEP}] staging {npartitions} partitions of the Dask {kind}")
                    batches = stage(collection, staged_dir, handle.client)
                plan = Plan(
                    kind="tabular" if kind == "dataframe" else "files",
                    batches=tuple(batches),
                    input_root=staged_dir,
                )
                request = StepRequest(
                    step=_step(code_dir, script, staged_dir, handle.n_workers, settings),
                    plan=plan,
                    run=rundir,
                    mode=Mode.RESUME if resumed else Mode.RUN,
                    settings=env,
                    echo=echo,
                    structured_parts=True,
                    workers_here=given is None or getattr(given, "cluster", None) is not None,
                    staging=staging,
                )
                try:
                    outcome = run_parallel_step(request, lambda: handle)
                except Interrupted as err:
                    raise Interrupted(
                        "map_batches was interrupted; the partitions already done are kept. "
                        f"Continue with map_batches(..., run_dir={run_dir!r})"
                    ) from err
            result = _result(rundir, outcome)
    finally:
        rundir.unlock()
    result.seconds = time.monotonic() - started
    _write_result_log(result)
    echo(f"[{STEP}] {result.status} ({run_dir})")
    return result
