"""Running a whole job: the Python API behind ``daskprs run`` (and for notebooks).

``run_job`` loads the job file, creates the run directory, starts or connects to a cluster,
runs the steps in dependency order (command steps as shell commands, parallel steps through
the supervisor), assembles outputs and writes the run's logs. The run directory is the truth
(docs/design.md#the-run-directory-is-the-truth): everything needed to inspect or continue
the run is in it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

from daskprs.errors import (
    DaskprsError,
    Interrupted,
    JobFailed,
    RunRecordUnreadable,
    StorageError,
    StorageFull,
    UserInputError,
)
from daskprs.execute.devices import processes_per_instance
from daskprs.execute.resume import Mode
from daskprs.execute.supervisor import Budget
from daskprs.job.model import ClusterSpec, Job
from daskprs.job.v1 import V1Options
from daskprs.observe import logs
from daskprs.observe.progress import choose_progress
from daskprs.paths import URL, redact_data
from daskprs.pipeline import ClusterChoice, JobSession, StepsRunner
from daskprs.results import fingerprint, reuse
from daskprs.results.jobresult import JobResult
from daskprs.results.storage import no_space, storage_error, storage_problem
from daskprs.rundir import RunDir, pid_alive, write_json
from daskprs.rundir import default_run_dir as _default_run_dir
from daskprs.settings import EnvSettings

__all__ = ["JobResult", "default_run_dir", "resume_job", "run_job"]


def default_run_dir(job_file: str, now: float | None = None) -> str:
    """``./daskprs-runs/<file stem>-<UTC yyyymmdd-hhmmss>`` (docs/cli.md#run)."""
    return _default_run_dir(os.path.splitext(os.path.basename(job_file))[0], now)


# The embedded cluster starts at most this many slots (entry-script processes) per core when
# their number comes from the job file: an Azure job sized for 50 nodes would otherwise start
# hundreds of processes on a laptop. Past a few per core they only compete (for cores and memory).
_WORKERS_PER_CORE = 4


def _default_workers(job: Job) -> int:
    counts = [s.instance_count * processes_per_instance(s) for s in job.parallel_steps]
    return max(counts or [1])


def _embedded_workers(asked: int, workers: int | None, cores: int) -> tuple[int, str | None]:
    """How many slots (entry-script processes) the embedded cluster starts, and the note that
    says why: ``--workers`` as given, else the job file's ``asked`` (instance_count x
    max_concurrency_per_instance) capped at :data:`_WORKERS_PER_CORE` x ``cores``."""
    cap = _WORKERS_PER_CORE * cores
    if workers:
        if workers <= cap:
            return workers, None
        return workers, (
            f"the embedded cluster starts {workers} entry-script processes on {cores} cores "
            "(--workers); they will compete for the cores: give a smaller --workers to start "
            "fewer"
        )
    if asked <= cap:
        return asked, None
    return cap, (
        f"the job file asks for {asked} entry-script processes (instance_count x "
        f"max_concurrency_per_instance); the embedded cluster starts {cap} "
        f"({_WORKERS_PER_CORE} x the {cores} cores here). The results are the same "
        "(byte-identical) with any number of workers, only the speed changes; give "
        f"--workers {asked} to start them all"
    )


def _left_by_a_failed_start(run: RunDir) -> set[str]:
    """The names a start that failed at its first write may leave (see :func:`_begin`)."""
    return {os.path.basename(p) for p in (run.lock_file, f"{run.record}.tmp")} | {
        os.path.basename(f"{run.resolved_job}.tmp")
    }


def _never_began(run: RunDir) -> bool:
    """Whether ``run`` holds a run that stopped before any step began (refused at its start:
    an unreachable scheduler, an input that cannot be planned), which a new run may take over:
    no try, no command step and no reused step on record, no entry-script log, no driver.
    A folder holding only a start's lock and temporary files (a start whose first write
    failed) never began either."""
    try:
        record = run.read_record()
    except RunRecordUnreadable:  # cut short by a crash: the rest says whether it began
        record = {}
    if record is None:
        return (
            set(os.listdir(run.root)) <= _left_by_a_failed_start(run) and run.lock_owner() is None
        )
    owner = run.lock_owner()
    if owner is not None and pid_alive(owner):
        return False
    began = ("ledger.jsonl", "done", "reused.json", "reuse.json")
    for _, _, files in os.walk(run.steps_root):
        if any(name in began or name.startswith("ledger") for name in files):
            return False
    return not any(os.path.exists(os.path.join(run.logs.root, d)) for d in ("user", "steps"))


def _storage_failure(err: OSError, run_dir: str) -> str | None:
    """What a disk's or a file's refusal while the job ran says, and how to continue; None
    for an error that is not one."""
    if not storage_error(err):
        return None
    problem, fix = storage_problem(err, run_dir)
    return f"{problem}. {fix}, then continue with: daskprs run --resume {run_dir}"


def _internal_failure(err: BaseException) -> str:
    return f"internal error of daskprs: {type(err).__name__}: {err}"


# Done mini-batches with failed items named in logs/job_result.txt, per step.
_SHOWN = 10


def _interrupted(result: JobResult) -> bool:
    return (result.failure or "").startswith("interrupted")


def _outcome_word(result: JobResult) -> str:
    """The run's outcome as ``logs/job_result.txt`` says it, and ``status`` reads it."""
    if result.ok:
        return "succeeded"
    return "INTERRUPTED" if _interrupted(result) else "FAILED"


def _final_line(result: JobResult, root: str) -> str:
    """The console's last line: the outcome, and the failed mini-batches a success had."""
    if not result.ok:
        return f"job FAILED: {result.failure} ({root})"
    failed = sum(1 for s in result.steps for f in s.failed if f.state == "FAILED")
    cancelled = sum(1 for s in result.steps for f in s.failed if f.state == "CANCELLED")
    short = sum(len(s.short_returns) for s in result.steps)
    if short and not failed and not cancelled:
        return (
            f"job succeeded ({root}); {short} mini-batch{'es' if short != 1 else ''} done with "
            "failed items (run() returned fewer rows or items than it got: see "
            "logs/job_result.txt)"
        )
    if not failed and not cancelled:
        return f"job succeeded ({root})"
    what = ", ".join(
        f"{n} mini-batch{'es' if n != 1 else ''} {word}"
        for n, word in ((failed, "failed"), (cancelled, "cancelled"))
        if n
    )
    return (
        f"job succeeded with {what}, within its thresholds ({root}); after fixing the script, "
        f"`daskprs rerun-failed {root}` reruns them"
    )


def _write_results(run: RunDir, result: JobResult, job: Job) -> None:
    failed = [f for s in result.steps for f in s.failed]
    logs.write_jsonl(run.failed_mini_batches, (f.to_json() for f in failed))
    lines = [f"job: {job.source}", f"run: {job.name}", f"run directory: {run.root}"]
    lines.append(f"outcome: {_outcome_word(result)}")
    lines += [f"note: {n}" for n in result.notes]
    for step, earlier in result.reused.items():
        lines.append(
            f"step {step}: reused, not run (inputs, code and settings unchanged since the run "
            f"{earlier}; outputs copied from there)"
        )
    for s in result.steps:
        sm = s.summary
        lines.append(
            f"step {s.step}: {sm['done']} of {sm['total']} mini-batches done, {sm['failed']} "
            f"failed, {sm['cancelled']} cancelled; {sm['succeeded_items']} items succeeded, "
            f"{sm['failed_items']} failed; planning {s.plan_seconds:.2f} s, running "
            f"{s.seconds:.2f} s"
        )
        for mb, why in list(s.short_returns.items())[:_SHOWN]:
            lines.append(f"step {s.step} mini-batch {mb} done with failed items: {why}")
        if len(s.short_returns) > _SHOWN:
            lines.append(
                f"step {s.step}: {len(s.short_returns) - _SHOWN} more done with failed items"
            )
    for name, path in result.outputs.items():
        lines.append(f"output {name}: {path}")
    if not result.ok:
        lines.append(f"failure: {result.failure}")
    if result.stopped_by and not _interrupted(result):  # what status suggests follows it
        lines.append(f"stopped by: {result.stopped_by}")
    if _interrupted(result):
        lines.append(f"continue with: daskprs run --resume {run.root}")
    elif failed:
        lines.append(
            "look first at: failed_mini_batches.jsonl, logs/job_error.txt and "
            "logs/user/error/<node>/<process>.txt"
        )
        if result.ok:
            lines.append(f"after fixing the script: daskprs rerun-failed {run.root}")
    elif not result.ok:
        lines.append("look first at: the failure above, then logs/sys/daskprs.log")
    logs.write_text(run.logs.job_result, "\n".join(lines))
    errors = [
        f"step {f.step} mini-batch {f.id} ({f.status}, {f.tries} tries): "
        f"{f.error}\n{f.to_json()['traceback']}".rstrip()
        for f in failed
    ]
    errors += [
        f"step {s.step} mini-batch {mb} (done with failed items): {why}"
        for s in result.steps
        for mb, why in s.short_returns.items()
    ]
    logs.write_text(run.logs.job_error, "\n\n".join(errors) if errors else "no user-script errors")


# Where a run of a job given as an object (an azure-ai-ml pipeline, a mapping) keeps its YAML:
# the run record names it as the job file, so --resume and rerun-failed rebuild the same job.
SDK_JOB_FILE = "job.yml"


def run_job(
    job_file: str | os.PathLike | Any,
    *,
    sets: Sequence[str] = (),
    run_dir: str | os.PathLike | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    echo: Callable[[str], None] | None = None,
    security: Any = None,
    input_path: str | os.PathLike | None = None,
    output_path: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    force_rerun: bool = False,
    arguments: str | None = None,
    side_inputs: Sequence[str] = (),
    base: str | os.PathLike | None = None,
    staging: str | os.PathLike | None = None,
    keep_staged: bool = False,
) -> JobResult:
    """Run every step of a job file and return what happened.

    Parameters
    ----------
    job_file : path, azure-ai-ml object or mapping
        A pipeline YAML, a parallel component YAML, a bare ``type: parallel`` file or a v1
        ``ParallelRunConfig`` file; or a job built with Azure's Python SDK v2 (a
        ``PipelineJob``, or a node or component made by ``parallel_run_function``), or a
        mapping of a job file's YAML. An object is written to ``job.yml`` in the run
        directory, which the run record names as its job file.
    sets : sequence of str
        ``KEY=VALUE`` overrides (``inputs.x=...``, ``jobs.<node>.<field>=...``).
    run_dir : path, optional
        The run directory; default ``./daskprs-runs/<stem>-<UTC time>``. It must not exist or
        be empty.
    scheduler : str, optional
        A Dask scheduler address; default: an embedded ``LocalCluster``.
    workers : int, optional
        Worker processes of the embedded cluster (default: instance_count x
        max_concurrency_per_instance). Changes speed, never results.
    client : distributed.Client, optional
        Use this client's cluster (notebooks).
    echo : callable, optional
        Where progress and notes go (default: stderr). Without it, progress is a live
        display: a progress bar in a terminal, an updating HTML display in Jupyter, plain
        lines every 5 s otherwise.
    security : distributed.Security, optional
        TLS certificates for a ``tls://`` scheduler; default: from the Dask configuration
        (:func:`daskprs.execute.tls.client_security`).
    input_path, output_path : path, optional
        A v1 ``ParallelRunConfig`` file's dataset (a folder of files, a file or an MLTable
        folder) and output folder (``--input``, ``--output``).
    cache : path, optional
        A folder of run directories to reuse steps from (``--cache``), besides the run
        directory's parent. A step whose resolved inputs, code folder and settings are
        unchanged since an earlier successful run there is reused: its outputs are copied, it
        does not run.
    force_rerun : bool
        Run every step (``--force-rerun``); also ``settings.force_rerun: true`` in the job,
        and ``is_deterministic: false`` in a component for its steps.
    arguments : str, optional
        A v1 ``ParallelRunConfig``'s ``ParallelRunStep`` arguments, one command line
        (``--arguments``); replaces the file's ``arguments:``.
    side_inputs : sequence of str
        A v1 ``ParallelRunConfig``'s side inputs, ``NAME=PATH`` (``--side-input``), bound in
        the arguments as ``${{inputs.NAME}}``.
    base : path, optional
        The folder relative paths of the job are relative to (and where ``daskprs.yaml`` is
        looked for first): default the job file's folder, or for an object the current
        directory (where the SDK's ``azureml:./data`` paths start).
    staging : str, optional
        ``--staging``: an fsspec URL (``s3://bucket/prefix``, ``gs://``, ``abfs://``) or a
        folder every worker mounts, where workers that cannot see the run directory leave
        claims, parts and logs (docs/clusters.md#workers-without-a-shared-filesystem);
        default: ``staging:`` in ``daskprs.yaml``, else none (the workers see the run
        directory). Kept in the run record for ``--resume`` and ``rerun-failed``.
    keep_staged : bool
        Keep the staged files after a step's output is assembled (``--keep-staged``).

    Returns
    -------
    JobResult
        ``result.ok`` tells success; ``result.raise_for_status()`` raises on failure.

    Raises
    ------
    UserInputError
        Problems found before the first ``run()`` (invalid job, missing input, ...).
    """
    from daskprs.job.load import load_job

    settings = EnvSettings.from_env()  # a bad DASKPRS_* value: an error before anything
    progress = choose_progress(echo)
    echo = echo or logs.to_stderr
    doc = given_as = None
    if not isinstance(job_file, str | os.PathLike):
        from daskprs.job.sdk import job_document, job_label, job_name

        doc = job_document(job_file)
        given_as = job_label(job_file, doc)  # (its job.yml is this call's, not the user's)
        base = base or os.getcwd()
        job_file = os.path.join(os.fspath(base), f"{job_name(doc)}.yml")  # names the run dir
    base = os.path.abspath(os.fspath(base)) if base else None
    job_file = os.path.abspath(os.fspath(job_file))
    if run_dir and "://" in os.fspath(run_dir):
        raise UserInputError(
            f"--run-dir {os.fspath(run_dir)}: the run directory must be a folder on this "
            "machine; object stores are for inputs and outputs (give an output a path: "
            "s3://...) and, for workers that cannot see the run directory, --staging URL"
        )
    run_dir = os.path.abspath(os.fspath(run_dir)) if run_dir else default_run_dir(job_file)
    made = _missing_folders(run_dir)  # what a refused start removes again
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        if not _never_began(RunDir(run_dir)):
            try:
                resumable = RunDir(run_dir).read_record() is not None
            except RunRecordUnreadable:
                resumable = False
            raise UserInputError(
                f"the run directory {run_dir} exists and is not empty. Give a new --run-dir"
                + (
                    f", or continue that run with `daskprs run --resume {run_dir}`."
                    if resumable
                    else " (it holds no run record that `--resume` could continue)."
                )
            )
        echo(
            f"note: the run directory {run_dir} holds a run that stopped before any step "
            "began (see its logs/job_result.txt); this run starts over in it"
        )
        for name in os.listdir(run_dir):
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    io = {
        "input_path": os.fspath(input_path) if input_path is not None else None,
        "output_path": os.fspath(output_path) if output_path is not None else None,
    }
    written = os.path.join(run_dir, SDK_JOB_FILE) if doc is not None else None
    try:
        if doc is not None:
            try:
                job_file = _write_job_document(doc, run_dir)
            except OSError as err:
                raise UserInputError(_cannot_write(run_dir, err)) from None
        job = load_job(
            job_file,
            sets,
            run_dir=run_dir,
            run_name=os.path.basename(run_dir),
            v1=V1Options(io["input_path"], io["output_path"], arguments, tuple(side_inputs)),
            base=base,
            given_as=given_as,
        )
        for line in (*job.notes, *job.warnings):
            echo(f"note: {line}")
        staged = _staging(staging, job.staging)
        record = {
            "job_file": job_file,
            "sets": list(sets),
            **{k: v for k, v in io.items() if v is not None},
            **({"arguments": arguments} if arguments is not None else {}),
            **({"side_inputs": list(side_inputs)} if side_inputs else {}),
            **({"base": base} if base else {}),
            **({"staging": staged} if staged else {}),
            "cwd": os.getcwd(),
            "name": job.name,
            "created": time.time(),
            "job": fingerprint.job_fields(job),
            "code": {s.name: fingerprint.code_digest(s.code_dir) for s in job.parallel_steps},
            "inputs": {},
        }
        run = RunDir(run_dir)
        _begin(run, record, job)
    except BaseException:  # refused before it began: remove what this call made
        _unmake(written, made)
        raise
    try:
        session = JobSession(
            job,
            run,
            Mode.RUN,
            record,
            echo,
            settings=settings,
            progress=progress,
            reuse_roots=tuple(reuse.search_roots(run.root, cache)),
            force_rerun=force_rerun,
            staging=staged,
            keep_staged=keep_staged,
        )
        return _execute(session, _choose_cluster(job, scheduler, workers, client, security, echo))
    finally:
        run.unlock()  # (released already when _execute ran)


def _begin(run: RunDir, record: dict[str, Any], job: Job) -> None:
    """Make a new run's directory, take its lock and write its record and resolved job. A
    folder that cannot be written is the user's to fix (exit 2): the files this wrote are
    removed (the caller removes the folders it made), so that the folder can be given
    again."""
    try:
        os.makedirs(run.root, exist_ok=True)
        run.lock()  # before the first write: a second run started on the folder writes nothing
        run.write_record(record)
        write_json(run.resolved_job, redact_data(asdict(job)))  # no secrets in job.json
    except OSError as err:
        run.unlock()
        for path in (run.record, run.resolved_job):
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise UserInputError(_cannot_write(run.root, err)) from None


def _missing_folders(path: str) -> list[str]:
    """``path`` and those of its parents that do not exist yet, deepest first: the folders
    making ``path`` makes (``daskprs-runs`` for a default run directory, the first time)."""
    missing: list[str] = []
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _unmake(written: str | None, made: Sequence[str]) -> None:
    """Remove what a refused start made: the job file ``written`` for a job given as an
    object, and the folders ``made``, each only if empty (never a folder that was there
    before, nor one another run put something in meanwhile)."""
    if written:
        with contextlib.suppress(OSError):
            os.unlink(written)
    for folder in made:
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _cannot_write(run_dir: str, err: OSError) -> str:
    """Why the run directory ``run_dir`` cannot be written, and what to do."""
    place = err.filename or run_dir
    if no_space(err):
        fix = "Free some space there, or give --run-dir a folder on another disk."
    elif err.errno == errno.ENAMETOOLONG:
        fix = "Give a shorter --run-dir."
    else:
        fix = "Give --run-dir a folder you can write to."
    return f"cannot write the run directory {run_dir} ({place}: {err.strerror}). {fix}"


@contextlib.contextmanager
def _locked(run: RunDir) -> Iterator[None]:
    """Hold the lock of a run to continue it (released at the end, however it ends); a run
    directory that cannot be written is the user's to fix (exit 2)."""
    try:
        run.lock()
    except OSError as err:
        raise UserInputError(
            f"cannot take the lock {run.lock_file} ({err.strerror}): the run directory must be "
            "writable to continue the run"
            + (" (free some space there first)" if no_space(err) else "")
        ) from None
    try:
        yield
    finally:
        run.unlock()


def _staging(given: str | os.PathLike | None, configured: str = "") -> str:
    """The staging URL or folder of a run: ``given`` (``--staging``), else ``configured``
    (``daskprs.yaml``); a folder made absolute."""
    value = os.fspath(given).strip() if given is not None else configured
    if not value:
        return ""
    if URL.match(value) and not value.startswith("file://"):
        return value.rstrip("/")
    return os.path.abspath(os.path.expanduser(value.removeprefix("file://")))


def _write_job_document(doc: dict, run_dir: str) -> str:
    """Write a job given as an object into its run directory; return the file's path."""
    import yaml

    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, SDK_JOB_FILE)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
    return path


def resume_job(
    run_dir: str | os.PathLike,
    job_file: str | os.PathLike | None = None,
    *,
    force: bool = False,
    rerun_failed: bool = False,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    echo: Callable[[str], None] | None = None,
    security: Any = None,
    staging: str | os.PathLike | None = None,
    keep_staged: bool = False,
) -> JobResult:
    """Continue a run from its ledger (``--resume``), or rerun its failed mini-batches.

    Parameters
    ----------
    run_dir : path
        The run directory of an earlier ``run``.
    job_file : path, optional
        The job file (default: the one the run was started with).
    force : bool
        Accept a changed job file or input listing.
    rerun_failed : bool
        Run the FAILED and CANCELLED mini-batches (``daskprs rerun-failed``) instead of the
        PENDING, RUNNING and CANCELLED ones.
    scheduler, workers, client, echo, security, keep_staged
        As for :func:`run_job`.
    staging : str, optional
        As for :func:`run_job`; default: the one the run was started with. The parts a
        killed driver left there are found through the ledger whichever is given.

    Returns
    -------
    JobResult
        Budgets are evaluated over the whole job, earlier sessions included.
    """
    from daskprs.errors import ResumeRefused
    from daskprs.job.load import load_job

    settings = EnvSettings.from_env()
    progress = choose_progress(echo)
    echo = echo or logs.to_stderr
    run = RunDir(os.path.abspath(os.fspath(run_dir)))
    record = run.read_record()
    if record is None:
        raise ResumeRefused(
            f"{run.root} is not a daskprs run directory (no "
            f"{os.path.basename(run.record)}); give the folder that `daskprs run` created"
        )
    with _locked(run):  # before the first write: (_execute releases it at the end)
        given = os.path.abspath(os.fspath(job_file)) if job_file else record["job_file"]
        if not os.path.isfile(given):
            raise ResumeRefused(f"the job file {given} is gone; give it as FILE after --resume")
        previous = os.getcwd()
        try:
            # --set paths were relative to the directory the run was started from
            if os.path.isdir(record.get("cwd", "")):
                os.chdir(record["cwd"])
            job = load_job(
                given,
                record["sets"],
                run_dir=run.root,
                run_name=record["name"],
                v1=V1Options(
                    record.get("input_path"),
                    record.get("output_path"),
                    record.get("arguments"),
                    tuple(record.get("side_inputs", ())),
                ),
                # the folder a job built with the SDK was built in (not the run directory's)
                base=None if job_file else record.get("base"),
                given_as=f"the job given to run_job (kept as {given})"
                if not job_file and given == os.path.join(run.root, SDK_JOB_FILE)
                else None,
            )
        finally:
            os.chdir(previous)
        changed = fingerprint.diff_jobs(record["job"], fingerprint.job_fields(job))
        if changed and not force:
            # (rerun-failed takes no --force: the change is accepted by a resume)
            how = (
                f"accept it with `daskprs run --resume {run.root} --force`, then rerun the "
                "failed mini-batches"
                if rerun_failed
                else "add --force to continue with the changed job"
            )
            raise ResumeRefused(
                "the job changed since the run started:\n  "
                + "\n  ".join(changed)
                + f"\nRun it anew, or {how}."
            )
        for line in changed:
            echo(f"note: continuing with a changed job (--force): {line}")
        for step in job.parallel_steps:
            digest = fingerprint.code_digest(step.code_dir)
            if digest != record.get("code", {}).get(step.name) and not rerun_failed:
                echo(f"note: the code folder of step {step.name} changed since the run started")
        mode = Mode.RERUN_FAILED if rerun_failed else Mode.RESUME
        staged = _staging(staging, record.get("staging") or job.staging)
        if staged != record.get("staging", ""):
            record["staging"] = staged
            run.write_record(record)
        session = JobSession(
            job,
            run,
            mode,
            record,
            echo,
            settings=settings,
            progress=progress,
            force=force,
            staging=staged,
            keep_staged=keep_staged,
        )
        return _execute(session, _choose_cluster(job, scheduler, workers, client, security, echo))


def _choose_cluster(
    job: Job,
    scheduler: str | None,
    workers: int | None,
    client: Any,
    security: Any,
    echo: Callable[[str], None],
    cores: int | None = None,
) -> tuple[ClusterChoice, list[str]]:
    """Where the job runs, and the notes to keep in its result: ``--scheduler`` or a client
    as given, else a compute that ``daskprs.yaml`` maps (a scheduler's address, or a cluster
    class to start), else the embedded cluster of ``--workers`` processes, or as many as the
    job file asks for up to a few per core (``cores``, default: this machine's)."""
    notes = []
    n_workers = workers or _default_workers(job)
    compute = next((s.compute for s in job.parallel_steps if s.compute), None)
    # a compute that daskprs.yaml maps to a cluster class is started unless --scheduler or a
    # client is given
    cluster_spec = compute if isinstance(compute, ClusterSpec) and not scheduler else None
    if cluster_spec is not None and client is not None:
        cluster_spec = None
    if isinstance(compute, str):
        scheduler = scheduler or compute
    if security is None and client is None:
        from daskprs.execute.tls import client_security

        security = client_security(scheduler)
    if workers and (scheduler is not None or client is not None or cluster_spec is not None):
        notes.append(
            "--workers sizes the embedded cluster only; the given cluster is used as it is"
        )
    if scheduler is None and client is None and cluster_spec is None:
        n_workers, note = _embedded_workers(n_workers, workers, cores or os.cpu_count() or 1)
        notes += [note] if note else []
    for note in notes:
        echo(f"note: {note}")
    choice = ClusterChoice(scheduler, client, n_workers, security, cluster_spec)
    return choice, notes


def _execute(session: JobSession, cluster: tuple[ClusterChoice, list[str]]) -> JobResult:
    """Run the job's steps (the caller holds the run's lock), then write its result files
    and release the lock."""
    job, run, echo = session.job, session.run, session.echo
    choice, notes = cluster
    result = JobResult(run_dir=run.root, notes=[*job.notes, *job.warnings, *notes])
    try:
        runner = StepsRunner(session, choice, result)
        levels = [s.settings.logging_level for s in job.parallel_steps] or ["INFO"]
        console_level = min(levels, key=lambda name: logging.getLevelName(name.upper()))
        with logs.driver_logging(run.logs.driver, console_level) as log:
            log.debug("%s %s (%s) in %s", session.mode, job.source, job.name, run.root)
            runner.run()
    except (KeyboardInterrupt, Interrupted) as err:
        result.failure = f"interrupted: {err}" if str(err) else "interrupted"
        raise
    except DaskprsError as err:  # found before or between steps: the records say so too
        result.failure = result.failure or str(err)
        raise
    except OSError as err:
        failure = _storage_failure(err, run.root)
        if failure is None:
            result.failure = result.failure or _internal_failure(err)
            raise
        result.failure = failure
        result.budget = Budget.STORAGE
        raise (StorageFull if no_space(err) else StorageError)(failure) from None
    except RuntimeError as err:
        if "can't start new thread" not in str(err):
            result.failure = result.failure or _internal_failure(err)
            raise
        result.failure = (
            "this machine refused the driver a new thread (a limit on processes or threads: "
            "`ulimit -u`, or a container's pids.max). Raise the limit, or give fewer "
            f"--workers, then continue with: daskprs run --resume {run.root}"
        )
        raise JobFailed(result.failure) from None
    except Exception as err:  # the traceback goes to the console; the records say it failed
        result.failure = result.failure or _internal_failure(err)
        raise
    finally:
        try:
            run.write_record(session.record)
            _write_results(run, result, job)
        except OSError as err:  # the run directory's own disk is full: the error above says it
            logging.getLogger(__name__).warning("cannot write the run's result files: %s", err)
        run.unlock()
    for name, path in result.outputs.items():
        echo(f"output {name}: {path}")
    echo(_final_line(result, run.root))
    return result
