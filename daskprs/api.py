"""Running a whole job: the Python API behind ``daskprs run`` (and for notebooks).

``run_job`` loads the job file, creates the run directory, starts or connects to a cluster,
runs the steps in dependency order (command steps as shell commands, parallel steps through
the supervisor), assembles outputs and writes the run's logs. The run directory is the truth
(DESIGN decision 6): everything needed to inspect or continue the run is in it.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from daskprs import fingerprint, logs
from daskprs.cluster import open_cluster
from daskprs.errors import Interrupted, JobFailed, PlanningError, UserInputError
from daskprs.jobmodel import CommandStep, Job, ParallelStep
from daskprs.ledger import LedgerState, read_ledger
from daskprs.plan import Plan, plan_input
from daskprs.runner import StepOutcome, assemble_output, run_step
from daskprs.supervisor import Prior

__all__ = ["JobResult", "default_run_dir", "resume_job", "run_job"]


@dataclass
class JobResult:
    """What a job did.

    Attributes
    ----------
    run_dir : str
        The run directory.
    failure : str or None
        Why the job failed, or None when it succeeded.
    outputs : dict
        ``{"<step>.<output>": absolute path or URL}`` of every output.
    steps : list of StepOutcome
        Per parallel step: counts, timings, failed mini-batches.
    """

    run_dir: str
    failure: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def raise_for_status(self) -> None:
        """Raise :class:`daskprs.errors.JobFailed` if the job failed."""
        if self.failure is not None:
            raise JobFailed(self.failure)


def default_run_dir(job_file: str, now: float | None = None) -> str:
    """``./daskprs-runs/<file stem>-<UTC yyyymmdd-hhmmss>`` (SPEC section 0)."""
    stem = os.path.splitext(os.path.basename(job_file))[0]
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    return os.path.abspath(os.path.join("daskprs-runs", f"{stem}-{stamp}"))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _default_workers(job: Job) -> int:
    counts = [
        s.instance_count * (s.max_concurrency_per_instance or os.cpu_count() or 1)
        for s in job.parallel_steps
    ]
    return max(counts or [1])


def plan_step(step: ParallelStep) -> Plan:
    """Plan a step's mini-batches, failing when it takes longer than
    ``--first_task_creation_timeout``."""
    limit = step.settings.first_task_creation_timeout
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daskprs-plan")
    future = pool.submit(plan_input, step.input_data, step.mini_batch_size, step.partition_keys)
    try:
        return future.result(timeout=limit)
    except concurrent.futures.TimeoutError as err:
        raise JobFailed(
            f"planning the mini-batches of step {step.name} took longer than "
            f"first_task_creation_timeout ({limit:g} s). Raise --first_task_creation_timeout, "
            "or give a larger mini_batch_size."
        ) from err
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _run_command(step: CommandStep, run_dir: str, echo: Callable[[str], None]) -> str | None:
    """Run a command step in its code folder; return a failure message or None."""
    for out in step.outputs.values():
        if "://" not in out.path:
            target = out.path if out.type != "uri_file" else os.path.dirname(out.path)
            os.makedirs(target, exist_ok=True)
    env = {**os.environ, **{k: str(v) for k, v in step.environment_variables.items()}}
    log_dir = os.path.join(run_dir, "logs", "steps", step.name)
    os.makedirs(log_dir, exist_ok=True)
    echo(f"[{step.name}] running command: {step.command}")
    with (
        open(os.path.join(log_dir, "stdout.txt"), "wb") as out,
        open(os.path.join(log_dir, "stderr.txt"), "wb") as err,
    ):
        proc = subprocess.run(
            step.command, shell=True, cwd=step.code_dir, env=env, stdout=out, stderr=err
        )
    if proc.returncode != 0:
        return (
            f"command step {step.name} exited with code {proc.returncode}; see "
            f"{os.path.join(log_dir, 'stderr.txt')}"
        )
    return None


def _failed_entries(step: str, plan: Plan, state: LedgerState) -> list[dict[str, Any]]:
    batches = {b.index: b for b in plan.batches}
    out = []
    for mb, e in sorted(state.entries.items()):
        if e.state in ("FAILED", "CANCELLED") and mb in batches:
            out.append(logs.failed_entry(step, mb, batches[mb].describe(), e.record, e.state))
    return out


def _write_results(run_dir: str, result: JobResult, job: Job) -> None:
    failed = [f for s in result.steps for f in s.failed]
    logs.write_jsonl(os.path.join(run_dir, "failed_mini_batches.jsonl"), failed)
    lines = [f"job: {job.source}", f"run: {job.name}", f"run directory: {run_dir}"]
    lines.append("outcome: " + ("succeeded" if result.ok else "FAILED"))
    lines += [f"note: {n}" for n in result.notes]
    for s in result.steps:
        sm = s.summary
        lines.append(
            f"step {s.step}: {sm['done']} of {sm['total']} mini-batches done, {sm['failed']} "
            f"failed, {sm['cancelled']} cancelled; {sm['succeeded_items']} items succeeded, "
            f"{sm['failed_items']} failed; planning {s.plan_seconds:.2f} s, running "
            f"{s.seconds:.2f} s"
        )
    for name, path in result.outputs.items():
        lines.append(f"output {name}: {path}")
    if not result.ok:
        lines.append(f"failure: {result.failure}")
        lines.append(
            "look first at: failed_mini_batches.jsonl, logs/job_error.txt and "
            "logs/user/error/<node>/<process>.txt"
        )
    logs.write_text(os.path.join(run_dir, "logs", "job_result.txt"), "\n".join(lines))
    errors = [
        f"step {f['step']} mini-batch {f['id']} ({f['status']}, {f['tries']} tries): "
        f"{f['error']}\n{f['traceback']}".rstrip()
        for f in failed
    ]
    logs.write_text(
        os.path.join(run_dir, "logs", "job_error.txt"),
        "\n\n".join(errors) if errors else "no user-script errors",
    )


def run_job(
    job_file: str | os.PathLike,
    *,
    sets: Sequence[str] = (),
    run_dir: str | os.PathLike | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Any = None,
    echo: Callable[[str], None] | None = None,
) -> JobResult:
    """Run every step of a job file and return what happened.

    Parameters
    ----------
    job_file : path
        A pipeline YAML, a parallel component YAML or a bare ``type: parallel`` file.
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
        Where progress and notes go (default: stderr).

    Returns
    -------
    JobResult
        ``result.ok`` tells success; ``result.raise_for_status()`` raises on failure.

    Raises
    ------
    UserInputError
        Problems found before the first ``run()`` (invalid job, missing input, ...).
    """
    from daskprs.spec import load_job

    echo = echo or _say
    job_file = os.path.abspath(os.fspath(job_file))
    if run_dir and "://" in os.fspath(run_dir):
        raise UserInputError(
            f"--run-dir {os.fspath(run_dir)}: the run directory must be a folder (local, or on a "
            "filesystem every worker mounts); object stores are for inputs and outputs "
            "(give an output a path: s3://...)"
        )
    run_dir = os.path.abspath(os.fspath(run_dir)) if run_dir else default_run_dir(job_file)
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        raise UserInputError(
            f"the run directory {run_dir} exists and is not empty. Give a new --run-dir, or "
            f"continue that run with `daskprs run --resume {run_dir}`."
        )
    job = load_job(job_file, sets, run_dir=run_dir, run_name=os.path.basename(run_dir))
    for line in (*job.notes, *job.warnings):
        echo(f"note: {line}")
    os.makedirs(run_dir, exist_ok=True)
    record = {
        "job_file": job_file,
        "sets": list(sets),
        "cwd": os.getcwd(),
        "name": job.name,
        "created": time.time(),
        "job": fingerprint.job_fields(job),
        "code": {s.name: fingerprint.code_digest(s.code_dir) for s in job.parallel_steps},
        "inputs": {},
    }
    _write_json(os.path.join(run_dir, RUN_FILE), record)
    with open(os.path.join(run_dir, "job.json"), "w", encoding="utf-8") as f:
        json.dump(asdict(job), f, indent=2, default=str)
    return _execute(job, run_dir, "run", record, scheduler, workers, client, echo)


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
    scheduler, workers, client, echo
        As for :func:`run_job`.

    Returns
    -------
    JobResult
        Budgets are evaluated over the whole job, earlier sessions included.
    """
    from daskprs.errors import ResumeRefused
    from daskprs.spec import load_job

    echo = echo or _say
    run_dir = os.path.abspath(os.fspath(run_dir))
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.isfile(path):
        raise ResumeRefused(
            f"{run_dir} is not a daskprs run directory (no {RUN_FILE}); give the folder that "
            "`daskprs run` created"
        )
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    given = os.path.abspath(os.fspath(job_file)) if job_file else record["job_file"]
    if not os.path.isfile(given):
        raise ResumeRefused(f"the job file {given} is gone; give it as FILE after --resume")
    previous = os.getcwd()
    try:
        # --set paths were relative to the directory the run was started from
        if os.path.isdir(record.get("cwd", "")):
            os.chdir(record["cwd"])
        job = load_job(given, record["sets"], run_dir=run_dir, run_name=record["name"])
    finally:
        os.chdir(previous)
    changed = fingerprint.diff_jobs(record["job"], fingerprint.job_fields(job))
    if changed and not force:
        raise ResumeRefused(
            "the job changed since the run started:\n  "
            + "\n  ".join(changed)
            + "\nRun it anew, or add --force to continue with the changed job."
        )
    for line in changed:
        echo(f"note: continuing with a changed job (--force): {line}")
    for step in job.parallel_steps:
        digest = fingerprint.code_digest(step.code_dir)
        if digest != record.get("code", {}).get(step.name) and not rerun_failed:
            echo(f"note: the code folder of step {step.name} changed since the run started")
    mode = "rerun-failed" if rerun_failed else "resume"
    return _execute(job, run_dir, mode, record, scheduler, workers, client, echo, force=force)


RUN_FILE = "run.json"


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def _execute(
    job: Job,
    run_dir: str,
    mode: str,
    record: dict[str, Any],
    scheduler: str | None,
    workers: int | None,
    client: Any,
    echo: Callable[[str], None],
    force: bool = False,
) -> JobResult:
    result = JobResult(run_dir=run_dir, notes=[*job.notes, *job.warnings])
    n_workers = workers or _default_workers(job)
    scheduler = scheduler or next((s.compute for s in job.parallel_steps if s.compute), None)
    cores = os.cpu_count() or 1
    if workers and (scheduler is not None or client is not None):
        note = "--workers sizes the embedded cluster only; the given cluster is used as it is"
        echo(f"note: {note}")
        result.notes.append(note)
    if scheduler is None and client is None and n_workers > 4 * cores:
        note = (
            f"the embedded cluster starts {n_workers} worker processes on {cores} cores "
            f"({'--workers' if workers else 'instance_count x max_concurrency_per_instance'}); "
            "they will compete for the cores: give a smaller --workers to start fewer"
        )
        echo(f"note: {note}")
        result.notes.append(note)
    runner = _StepsRunner(job, result, run_dir, mode, record, echo, force)
    lock = _lock(run_dir)
    try:
        runner.run(scheduler, client, n_workers)
    except (KeyboardInterrupt, Interrupted) as err:
        result.failure = f"interrupted: {err}" if str(err) else "interrupted"
        raise
    finally:
        _write_json(os.path.join(run_dir, RUN_FILE), record)
        _write_results(run_dir, result, job)
        os.unlink(lock)
    for name, path in result.outputs.items():
        echo(f"output {name}: {path}")
    echo(("job succeeded" if result.ok else f"job FAILED: {result.failure}") + f" ({run_dir})")
    return result


def _lock(run_dir: str) -> str:
    """Take the run directory's lock, so two drivers never run the same run at once."""
    path = os.path.join(run_dir, "run.lock")
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    pid = int(f.read().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid):
                raise UserInputError(
                    f"the run {run_dir} is being run by process {pid} right now; wait for it "
                    "to end (or stop it) before resuming"
                ) from None
            os.unlink(path)  # left by a driver that was killed
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return path
    raise UserInputError(f"cannot take the lock {path}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _StepsRunner:
    """Runs the steps of a job in order, for a new run, a resume or a rerun."""

    def __init__(
        self,
        job: Job,
        result: JobResult,
        run_dir: str,
        mode: str,
        record: dict[str, Any],
        echo: Callable[[str], None],
        force: bool,
    ):
        self.job, self.result, self.run_dir, self.mode = job, result, run_dir, mode
        self.record, self.echo, self.force = record, echo, force
        self.handle: Any = None
        self._cm: Any = None

    def run(self, scheduler: str | None, client: Any, n_workers: int) -> None:
        self._cluster_args = {"scheduler": scheduler, "client": client, "n_workers": n_workers}
        try:
            for step in self.job.steps:
                if isinstance(step, CommandStep):
                    failure = self._command(step)
                else:
                    failure = self._parallel(step)
                if failure is not None:
                    self.result.failure = self.result.failure or failure
                    if not self.job.continue_on_step_failure:
                        return
        finally:
            if self._cm is not None:
                self._cm.__exit__(None, None, None)

    def _cluster(self) -> Any:
        if self.handle is None:
            self._cm = open_cluster(**self._cluster_args)
            self.handle = self._cm.__enter__()
            where = "embedded local cluster" if self.handle.local else "cluster"
            self.echo(
                f"{where}: {self.handle.n_workers} worker slots, started in "
                f"{self.handle.start_seconds:.1f} s"
            )
        return self.handle

    def _command(self, step: CommandStep) -> str | None:
        done = os.path.join(self.run_dir, "steps", step.name, "done")
        for out in step.outputs.values():
            self.result.outputs[f"{step.name}.{out.name}"] = out.path
        if self.mode != "run" and os.path.exists(done):
            self.echo(f"[{step.name}] command step already done in an earlier session")
            return None
        failure = _run_command(step, self.run_dir, self.echo)
        if failure is None:
            os.makedirs(os.path.dirname(done), exist_ok=True)
            open(done, "w").close()
        return failure

    def _plan(self, step: ParallelStep) -> Plan:
        step_dir = os.path.join(self.run_dir, "steps", step.name)
        plan_file = os.path.join(step_dir, "plan.pkl")
        fresh = plan_step(step)
        if self.mode != "run" and os.path.exists(plan_file):
            with open(plan_file, "rb") as f:
                saved: Plan = pickle.load(f)
            old = self.record.get("inputs", {}).get(step.name)
            new = fingerprint.input_digest(fresh.batches)
            if old is not None and old != new:
                what = (
                    f"{old['batches']} -> {new['batches']} mini-batches"
                    if old["batches"] != new["batches"]
                    else "the files' sizes or modification times"
                    if old["files"] != new["files"]
                    else "how the input splits into mini-batches"
                )
                if not self.force:
                    from daskprs.errors import ResumeRefused

                    raise ResumeRefused(
                        f"the input of step {step.name} ({step.input_data.path}) changed since "
                        f"the run started ({what}). Run it anew, or add --force to continue "
                        "(mini-batches already done are kept as they are)."
                    )
                self.echo(f"note: the input of step {step.name} changed ({what}); --force given")
            if saved.batches == fresh.batches or not self.force:
                return saved
            self.record.setdefault("inputs", {})[step.name] = new
            ledger_file = os.path.join(step_dir, "ledger.jsonl")
            if os.path.exists(ledger_file):
                # the mini-batch ids no longer mean the same inputs: start the step over
                os.replace(ledger_file, f"{ledger_file}.before-force-{int(time.time())}")
        self.record.setdefault("inputs", {})[step.name] = fingerprint.input_digest(fresh.batches)
        os.makedirs(step_dir, exist_ok=True)
        with open(plan_file, "wb") as f:
            pickle.dump(fresh, f)
        _write_json(os.path.join(self.run_dir, RUN_FILE), self.record)
        return fresh

    def _parallel(self, step: ParallelStep) -> str | None:
        plan = self._plan(step)
        self.echo(
            f"[{step.name}] planned {len(plan.batches)} mini-batches ({plan.kind} input) in "
            f"{plan.seconds:.2f} s"
        )
        for note in plan.notes:
            self.echo(f"note: {note}")
        if not plan.batches:
            raise PlanningError(
                f"step {step.name}: the input {step.input_data.path} gave no mini-batches"
            )
        for out in step.outputs.values():
            if "://" not in out.path:
                folder = (
                    out.path
                    if not (out.explicit and out.type == "uri_file")
                    else (os.path.dirname(out.path))
                )
                os.makedirs(folder, exist_ok=True)
        step_dir = os.path.join(self.run_dir, "steps", step.name)
        ledger_file = os.path.join(step_dir, "ledger.jsonl")
        state = read_ledger(ledger_file)
        todo, prior = _todo(plan, state, self.mode)
        if self.mode != "run":
            self.echo(
                f"[{step.name}] {self.mode}: {len(todo)} of {len(plan.batches)} mini-batches to run"
            )
        if todo:
            handle = self._cluster()
            ship_code = False
            if not handle.local:
                ship_code = check_workers(handle.client, step, self.run_dir)
                if ship_code:
                    self.echo(
                        f"[{step.name}] some workers cannot see the code folder "
                        f"{step.code_dir}; shipping it to them"
                    )
            outcome = run_step(
                handle.client,
                step,
                plan,
                self.run_dir,
                n_workers=handle.n_workers,
                local=handle.local,
                session=state.sessions,
                prior=prior,
                todo=todo,
                echo=self.echo,
                ship_code=ship_code,
            )
        else:
            outcome = _outcome_from_ledger(step, plan, state)
        state = read_ledger(ledger_file)  # once more: now with this session's tries
        outcome.failed = _failed_entries(step.name, plan, state)
        out_path, _ = assemble_output(step, state)
        outcome.output = out_path
        for out in step.outputs.values():
            shown = out.path
            if step.append_row_to and os.path.dirname(step.append_row_to) == out.path:
                shown = step.append_row_to
            self.result.outputs[f"{step.name}.{out.name}"] = shown
        self.result.steps.append(outcome)
        if outcome.failure is not None:
            return f"step {step.name}: {outcome.failure}"
        return None


def check_workers(client: Any, step: ParallelStep, run_dir: str) -> bool:
    """Before running on an external cluster: every worker runs a compatible daskprs and sees
    the run directory and local inputs (DESIGN decision 7).

    Returns True when some worker cannot see the code folder: it is then shipped to the
    workers (:class:`daskprs.worker.CodeFolder`).
    """
    import daskprs
    from daskprs.worker import check_worker

    script = os.path.join(step.code_dir, step.entry_script)
    paths = (run_dir, script, step.input_data.path)
    try:
        answers = client.run(check_worker, paths)
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
        for path in answer["missing"]:
            if path == script:
                ship_code = True
            else:
                problems.append(f"worker {address} cannot see {path}")
    if problems:
        raise UserInputError(
            "the cluster cannot run this job:\n  "
            + "\n  ".join(problems)
            + "\nThe run directory, the code folder and local inputs must be on a filesystem "
            "every worker sees (or use s3:// and other URLs for data), and every worker must "
            "run the same daskprs version."
        )
    return ship_code


def _todo(plan: Plan, state: Any, mode: str) -> tuple[list[int], dict[int, Prior]]:
    """Which mini-batches to run, and the final states the others keep."""
    rerun = {"run": (), "resume": ("PENDING", "RUNNING", "CANCELLED")}.get(
        mode, ("PENDING", "RUNNING", "FAILED", "CANCELLED")
    )
    todo: list[int] = []
    prior: dict[int, Prior] = {}
    for batch in plan.batches:
        entry = state.entries.get(batch.index)
        st = entry.state if entry is not None else "PENDING"
        if mode == "run" or st in rerun:
            todo.append(batch.index)
            continue
        rec = entry.record if entry is not None else None
        prior[batch.index] = Prior(
            st,
            rec.succeeded if rec is not None else 0,
            (rec.failed if st == "DONE" else (rec.total or rec.failed)) if rec is not None else 0,
            rec.error if rec is not None else "",
        )
    return todo, prior


def _outcome_from_ledger(step_obj: ParallelStep, plan: Plan, state: Any) -> StepOutcome:
    """A step with nothing left to run: its outcome as the ledger records it."""
    from daskprs.runner import policy_for
    from daskprs.supervisor import Supervisor

    _, prior = _todo(plan, state, "resume")
    items = {b.index: b.n_items for b in plan.batches}
    sup = Supervisor(items, policy_for(step_obj, 1, None), todo=[], prior=prior)
    sup.start()
    stop = sup.stopped
    return StepOutcome(
        step=step_obj.name,
        failure=stop.failure if stop is not None else None,
        budget=stop.budget if stop is not None else None,
        summary=sup.summary(),
        output=None,
    )
