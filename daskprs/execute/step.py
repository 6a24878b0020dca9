"""One parallel step, run in one place: :func:`run_parallel_step`.

Called by the pipeline for a job's parallel steps and by ``map_batches`` for a user's
collection. It reads the step's ledger once, works out the session (what to run, what earlier
sessions settled: :mod:`daskprs.execute.resume`), checks the entry script's imports and the
workers, runs the driver loop (:func:`daskprs.execute.runner.drive`), assembles the output
from the committed parts in mini-batch order, and returns a finished, frozen
:class:`~daskprs.results.jobresult.StepOutcome`. The life of a mini-batch along the way:
docs/design.md#life-of-a-mini-batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from daskprs.errors import Interrupted, UserInputError
from daskprs.execute.cluster import ClusterHandle
from daskprs.execute.context import StepContext, reads_tables, step_context
from daskprs.execute.devices import processes_per_instance
from daskprs.execute.preflight import check_step_script
from daskprs.execute.resume import Mode, Session, session_of
from daskprs.execute.runner import Launch, Ran, drive
from daskprs.execute.stagedlogs import pull_logs
from daskprs.execute.store import StepStore, staging_root
from daskprs.execute.supervisor import Budget, Policy, Stop, verdict_of
from daskprs.execute.worker import check_worker
from daskprs.inputs.plan import Plan
from daskprs.job.model import ParallelStep
from daskprs.observe.progress import PlainProgress, Progress
from daskprs.results.failures import failed_mini_batches
from daskprs.results.formatting import structured_part_options
from daskprs.results.jobresult import StepOutcome
from daskprs.results.ledger import Ledger, LedgerState, read_ledger
from daskprs.results.outcome import BatchState
from daskprs.results.output import (
    PartialOutput,
    assemble,
    discard,
    is_url,
    output_written,
    record_output,
    store_refusal,
)
from daskprs.results.packs import split_ref
from daskprs.results.storage import no_space, storage_problem
from daskprs.rundir import RunDir
from daskprs.settings import EnvSettings

__all__ = ["StepRequest", "check_workers", "policy_of", "run_parallel_step"]


@dataclass(frozen=True)
class StepRequest:
    """One parallel step to run in one session of a run: what the caller decides.

    Attributes
    ----------
    step : ParallelStep
        The resolved step.
    plan : Plan
        Its mini-batches (as saved in the run directory).
    run : RunDir
        The run directory.
    mode : Mode
        A new run, ``--resume`` or ``rerun-failed``.
    settings : EnvSettings
        The ``DASKPRS_*`` settings, read once at the start.
    echo : callable
        Where notes go.
    progress : Progress, optional
        The live display (default: plain lines through ``echo``).
    structured_parts : bool
        Keep every successful try's rows as data (parquet or pickle) for ``map_batches``,
        instead of Azure's text rows and an ``append_row_to`` file.
    workers_here : bool
        The workers run on this machine, in this Python: check the entry script's imports
        before the first mini-batch.
    resume_hint : str
        What to run to continue after an interrupt (for the message).
    staging : str
        ``--staging URL``: where workers that cannot see the run directory leave claims,
        parts and logs (docs/clusters.md#workers-without-a-shared-filesystem); empty: they
        see it.
    keep_staged : bool
        Keep the step's staged files after its output is assembled (``--keep-staged``).
    context : StepContext, optional
        The step run's context, made before the cluster was taken (its entry-script
        processes started already: :class:`~daskprs.execute.warm.WarmSlots`; the entry
        script's imports checked); default: made here.
    """

    step: ParallelStep
    plan: Plan
    run: RunDir
    mode: Mode
    settings: EnvSettings
    echo: Callable[[str], None]
    progress: Progress | None = None
    structured_parts: bool = False
    workers_here: bool = True
    resume_hint: str = ""
    staging: str = ""
    keep_staged: bool = False
    context: StepContext | None = None


def policy_of(step: ParallelStep) -> Policy:
    """The failure handling of ``step`` (docs/job-files.md#failure-handling)."""
    s = step.settings
    return Policy(
        max_retries=s.max_retries,
        error_threshold=s.error_threshold,
        mini_batch_error_threshold=s.mini_batch_error_threshold,
        allowed_failed_percent=s.allowed_failed_percent,
        progress_timeout=s.effective_progress_update_timeout,
        nodes=max(1, step.instance_count),
        processes_per_node=processes_per_instance(step),
    )


def run_parallel_step(request: StepRequest, cluster: Callable[[], ClusterHandle]) -> StepOutcome:
    """Run what ``request.mode`` leaves to run of a step, and return its finished outcome.

    Parameters
    ----------
    request : StepRequest
        The step, its plan, the run directory and the session's mode.
    cluster : callable
        Gives the cluster to run on; called only when there is something to run.

    Returns
    -------
    StepOutcome
        The verdict over the whole run (earlier sessions included), the counts, the output,
        the failed mini-batches and the committed parts.

    Raises
    ------
    UserInputError
        The entry script imports what its Python lacks, or the workers cannot run the step.
    Interrupted
        Ctrl-C or SIGTERM; what was committed is kept for a resume.
    """
    step, plan, echo = request.step, request.plan, request.echo
    where = request.run.step(step.name)
    state = read_ledger(where.ledger)  # the one read: the ledger below keeps it current
    if state.skipped:
        echo(
            f"note: [{step.name}] {state.skipped} unreadable line(s) of {where.ledger} skipped "
            "(cut short by a crash, or changed by hand)"
        )
    session = session_of(plan.batches, state, request.mode)
    if request.mode != Mode.RUN:
        echo(
            f"[{step.name}] {request.mode}: {len(session.todo)} of {len(plan.batches)} "
            "mini-batches to run"
        )
    policy = policy_of(step)
    fetched = True
    try:
        if session.todo:
            ran = _run_session(request, cluster, state, session, policy)
            stop, summary, seconds = ran.stop, ran.summary, ran.seconds
        else:
            items = plan.item_counts()
            stop, summary = verdict_of(items, session.prior, policy)
            seconds = 0.0
    finally:
        if request.staging:  # this session's logs, and what a killed driver left
            fetched = _logs_home(request)
    output = None
    parts = _parts(state)
    assembled = False
    if step.append_row_to is not None and not request.structured_parts:
        dest = step.append_row_to
        if stop.budget not in (Budget.RUN_DIRECTORY, Budget.STORAGE) and (
            session.todo or not output_written(where.output_record, dest, parts.values())
        ):
            stop = _assemble(dest, parts, stop, _resume_hint(request))
            assembled = True
            if stop.budget not in (Budget.RUN_DIRECTORY, Budget.STORAGE):
                record_output(where.output_record, dest, parts.values())
        written = stop.budget not in (Budget.RUN_DIRECTORY, Budget.STORAGE)
        output = dest if written else None
    if request.staging:
        unwritten = step.append_row_to is not None and output is None
        kept = (
            "the workers' logs were not fetched"
            if not fetched
            else "the output is not written; the parts are for a later run"
            if unwritten
            else ""
        )
        _clean_staging(request, state, len(plan.batches), kept)
    return StepOutcome(
        step=step.name,
        failure=stop.failure,
        budget=stop.budget,
        summary=summary,
        output=output,
        failed=tuple(failed_mini_batches(step.name, plan.by_index, state)),
        seconds=seconds,
        plan_seconds=plan.seconds,
        parts=parts,
        short_returns=_short_returns(state),
        wrote=bool(session.todo) or assembled,
    )


def _staged(request: StepRequest) -> StepStore:
    """The step's folder in the staging store."""
    return StepStore(staging_root(request.staging, request.run.root, request.step.name))


def _logs_home(request: StepRequest) -> bool:
    """Append the logs the workers staged to the run directory's ``logs/``; False when they
    could not be fetched (they stay in the store)."""
    step = request.step.name
    store = _staged(request)
    try:
        pull_logs(store, request.run.logs.root, request.run.step(step).staged_logs)
    except Exception as err:  # the step's results stand; its logs stay in the store
        request.echo(f"note: [{step}] could not fetch the workers' logs from {store.root}: {err}")
        return False
    return True


def _clean_staging(request: StepRequest, state: LedgerState, n_batches: int, kept: str) -> None:
    """Remove the step's staged files once nothing needs them: every mini-batch is done and
    nothing is ``kept`` for (a reason the caller found: its output not written, its logs
    not fetched). Otherwise (or with ``keep_staged``) say where they are and why."""
    step = request.step.name
    store = _staged(request)
    if request.keep_staged:
        kept = "--keep-staged"
    elif request.structured_parts:
        kept = "the collection's partitions are read from them"
    elif not kept and state.count(BatchState.DONE) < n_batches:
        kept = "rerun-failed and --resume assemble the output from them"
    if kept:
        request.echo(f"note: [{step}] staged files kept in {store.root} ({kept})")
        return
    try:
        store.remove_all()
    except Exception as err:  # nothing is lost; they are only left behind
        request.echo(f"note: [{step}] could not remove the staged files in {store.root}: {err}")


def _short_returns(state: LedgerState) -> dict[int, str]:
    """DONE mini-batches with failed items, and why (their last try's warning)."""
    return {
        mb: rec.warning
        for mb, rec in state.records_of(BatchState.DONE)
        if rec.failed and rec.warning
    }


def _resume_hint(request: StepRequest) -> str:
    return request.resume_hint or f"daskprs run --resume {request.run.root}"


def _assemble(dest: str, parts: Mapping[int, str], stop: Stop, hint: str) -> Stop:
    """Write the output from the committed ``parts``; the step's verdict, or a failure naming
    the mini-batch whose committed part is gone (deleted while the step ran), the full disk
    (the partial output removed, so the space comes back) or the object store that refused
    the output (credentials that expired while the step ran; a store no longer reached):
    every mini-batch done is kept, and a resume writes the output."""
    try:
        assemble(parts.values(), dest)
    except Exception as err:
        by_path: dict[str, int] = {}  # a pack's first mini-batch names it
        if isinstance(err, FileNotFoundError):
            for mb, path in parts.items():
                by_path.setdefault(split_ref(path)[0], mb)
        if isinstance(err, FileNotFoundError) and (not is_url(dest) or err.filename in by_path):
            which = by_path.get(err.filename or "")
            what = f"mini-batch {which}" if which is not None else "a mini-batch"
            return Stop(
                f"the committed part of {what} ({err.filename}) is gone, deleted while the "
                f"step ran, so the output {dest} cannot be written. Keep the run directory as "
                "it is while a run goes on, and run the job again in a new run directory.",
                Budget.RUN_DIRECTORY,
            )
        refused = store_refusal(dest, err)
        if refused is not None:
            return Stop(
                f"the output {dest} could not be written: {refused}. Every mini-batch done "
                f"is kept; once that is fixed, continue with: {hint}",
                Budget.STORAGE,
            )
        if not isinstance(err, OSError) or not no_space(err):
            raise
        problem, fix = storage_problem(err, dest)
        return Stop(
            f"{problem} while writing the output {dest}; what was written of it is removed "
            f"and every mini-batch done is kept. {fix}, then continue with: {hint}",
            Budget.STORAGE,
        )
    return stop


def _parts(state: LedgerState) -> Mapping[int, str]:
    """The committed part of every DONE mini-batch, in mini-batch order (a view of the
    ledger's state: a million paths are made as they are read, not kept)."""
    return state.parts()


def _run_session(
    request: StepRequest,
    cluster: Callable[[], ClusterHandle],
    state: LedgerState,
    session: Session,
    policy: Policy,
) -> Ran:
    """Check what can be checked before the first mini-batch, then drive the session."""
    step, plan, echo = request.step, request.plan, request.echo
    if request.workers_here and request.context is None:  # else checked before it was made
        check_step_script(step, tabular=plan.kind == "tabular")
    handle = cluster()
    ship_code = False
    if request.staging:
        if state.sessions == 0:
            _clear_staging(request)
        _check_staging(request)
    if not handle.local:
        _note_concurrency(step, handle.n_workers, echo)
        ship_code = check_workers(handle.client, step, request.run.root, request.staging)
        if ship_code:
            echo(
                f"[{step.name}] some workers cannot see the code folder {step.code_dir}; "
                "shipping it to them"
            )
    ctx = request.context or step_context(
        step,
        request.run,
        slots=handle.n_workers,
        local=handle.local,
        tables=reads_tables(plan.batches),
        settings=request.settings,
        staging=request.staging,
    )
    if request.structured_parts:  # map_batches: every try's rows kept as data
        ctx = replace(
            ctx,
            writes_parts=True,
            child=replace(ctx.child, to_csv=structured_part_options()),
        )
    if step.output_dir and "://" not in step.output_dir:
        os.makedirs(step.output_dir, exist_ok=True)
    launch = Launch(ctx, plan.by_index, session, policy, plan.seconds, ship_code)
    dest = step.append_row_to
    growing = None
    if dest and not request.structured_parts and not session.prior and not is_url(dest):
        # a fresh step: its output grows while it runs (resume and rerun assemble at the end)
        growing = PartialOutput(dest, sorted(launch.batches))
    display = request.progress or PlainProgress(echo)
    ledger = Ledger(ctx.where.ledger, state)
    try:
        ran = drive(handle, launch, ledger, display, growing)
    except KeyboardInterrupt as err:
        raise Interrupted(
            f"step {step.name} was interrupted; the mini-batches already committed are kept. "
            f"Continue with: {_resume_hint(request)}"
        ) from err
    if ran.stop.budget == Budget.STORAGE:  # an entry-script process's disk: how to go on
        hint = f"{ran.stop.failure}, then continue with: {_resume_hint(request)}"
        ran = replace(ran, stop=Stop(hint, Budget.STORAGE))
    damage = ledger.damage()
    if damage is None:
        return ran
    if growing is not None:
        discard(growing.dest)
    failure = (
        f"the ledger {ledger.path} {damage} while the step ran (a cleanup job, a script?), so "
        "what the step did is not on record; its output is not written. Keep the run "
        "directory as it is while a run goes on, and run the job again in a new run directory."
    )
    return replace(ran, stop=Stop(failure, Budget.RUN_DIRECTORY))


def _clear_staging(request: StepRequest) -> None:
    """Before the first session of a step (a new ledger): remove what an earlier run at this
    run directory's path staged for the step (one killed before its ledger began, one whose
    run directory was removed, or one restarted with ``--force``). Its claims would take the
    new session's try keys (numbered from 0 again) and count tries that never ran as lost."""
    store = _staged(request)
    try:
        store.remove_all()
    except Exception as err:  # the check below says what is wrong with the store
        request.echo(f"note: [{request.step.name}] could not clear {store.root}: {err}")


def _check_staging(request: StepRequest) -> None:
    """The staging store can hold claims (an exclusive create) before any try runs."""
    problem = _staged(request).check()
    if problem is not None:
        raise UserInputError(
            f"--staging {request.staging}: {problem}. Workers claim each try there with an "
            "exclusive create, so that a try Dask runs twice runs once: use an object store "
            "with conditional writes (S3, GCS, Azure Blob) through a recent s3fs, gcsfs or "
            "adlfs, or a folder every worker mounts."
        )


def _note_concurrency(step: ParallelStep, slots: int, echo: Callable[[str], None]) -> None:
    """On an existing cluster its worker threads decide how many mini-batches run at once;
    say so when the job file asks for another number."""
    if not step.max_concurrency_per_instance and step.instance_count == 1:
        return
    asked = step.instance_count * processes_per_instance(step)
    if asked != slots:
        echo(
            f"note: [{step.name}] the cluster runs {slots} mini-batches at once (its worker "
            f"threads); instance_count x max_concurrency_per_instance = {asked} sizes the "
            "embedded cluster only (docs/clusters.md)"
        )


def check_workers(client: Any, step: ParallelStep, run_dir: str, staging: str = "") -> bool:
    """Before running on an external cluster: every worker runs a compatible daskprs and sees
    the run directory (or, with ``staging``, the staging store) and local inputs
    (docs/design.md#several-hosts).

    Returns True when some worker cannot see the code folder: it is then shipped to the
    workers (:class:`daskprs.execute.codefolder.CodeFolder`).
    """
    import daskprs

    script = os.path.join(step.code_dir, step.entry_script)
    # a folder output is the entry script's to write when it appends no rows (its files are
    # the output); the rows of append_row_to reach the driver as parts
    folder = step.output_dir if step.append_row_to is None else ""
    data = [p for p in (step.input_data.path, folder) if p and "://" not in p]
    paths = (script, *data) if staging else (run_dir, script, *data)
    probe = staging_root(staging, run_dir, step.name) if staging else ""
    try:
        answers = client.run(check_worker, paths, probe)
    except Exception as err:  # the function could not even be unpickled: no daskprs there
        raise UserInputError(
            f"the Dask workers cannot run daskprs ({type(err).__name__}: {err}). Install "
            f"daskprs {daskprs.__version__} in the workers' Python environment."
        ) from err
    problems = []
    ship_code = False
    for address, answer in sorted(answers.items()):
        if answer["version"] != daskprs.__version__:
            problems.append(
                f"worker {address} runs daskprs {answer['version']}, this driver "
                f"{daskprs.__version__}"
            )
        if answer.get("staging"):
            problems.append(f"worker {address} cannot use --staging {staging}: {answer['staging']}")
        for path in answer["missing"]:
            if path == script:
                ship_code = True
            elif path == run_dir:
                problems.append(
                    f"worker {address} cannot see the run directory {run_dir}: give --staging "
                    "URL (an s3://, gs:// or abfs:// folder every worker can write) for "
                    "workers that share no filesystem with this driver"
                )
            else:
                problems.append(
                    f"worker {address} cannot see {path}"
                    + (
                        ": with --staging, put local inputs and outputs on object storage "
                        "(s3://...) or a filesystem every worker mounts"
                        if staging
                        else ""
                    )
                )
    if problems:
        raise UserInputError(
            "the cluster cannot run this job:\n  "
            + "\n  ".join(problems)
            + (
                "\nInputs and folder outputs must be URLs or on a filesystem every worker "
                "sees, and every worker must run the same daskprs version."
                if staging
                else "\nThe run directory, the code folder and local inputs must be on a "
                "filesystem every worker sees (or use --staging URL for workers that share "
                "none with this driver, and s3:// and other URLs for data), and every worker "
                "must run the same daskprs version."
            )
        )
    return ship_code
