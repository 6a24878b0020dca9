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

from daskprs import logs
from daskprs.cluster import open_cluster
from daskprs.errors import JobFailed, PlanningError, UserInputError
from daskprs.jobmodel import CommandStep, Job, ParallelStep
from daskprs.ledger import read_ledger
from daskprs.plan import Plan, plan_input
from daskprs.runner import StepOutcome, assemble_output, run_step

__all__ = ["JobResult", "default_run_dir", "run_job"]


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


def _failed_entries(step: str, plan: Plan, run_dir: str) -> list[dict[str, Any]]:
    state = read_ledger(os.path.join(run_dir, "steps", step, "ledger.jsonl"))
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
    job_file = os.fspath(job_file)
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
    with open(os.path.join(run_dir, "run.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "job_file": os.path.abspath(job_file),
                "sets": list(sets),
                "name": job.name,
                "created": time.time(),
            },
            f,
            indent=2,
        )
    with open(os.path.join(run_dir, "job.json"), "w", encoding="utf-8") as f:
        json.dump(asdict(job), f, indent=2, default=str)

    result = JobResult(run_dir=run_dir, notes=[*job.notes, *job.warnings])
    n_workers = workers or _default_workers(job)
    if workers is None and n_workers > 4 * (os.cpu_count() or 1):
        echo(
            f"note: the embedded cluster starts {n_workers} worker processes on "
            f"{os.cpu_count()} cores; use --workers to start fewer"
        )
    scheduler = scheduler or next((s.compute for s in job.parallel_steps if s.compute), None)
    try:
        _run_steps(job, result, run_dir, scheduler, client, n_workers, echo)
    finally:
        _write_results(run_dir, result, job)
    for name, path in result.outputs.items():
        echo(f"output {name}: {path}")
    echo(("job succeeded" if result.ok else f"job FAILED: {result.failure}") + f" ({run_dir})")
    return result


def _run_steps(
    job: Job,
    result: JobResult,
    run_dir: str,
    scheduler: str | None,
    client: Any,
    n_workers: int,
    echo: Callable[[str], None],
) -> None:
    cluster_cm = None
    handle = None
    try:
        for step in job.steps:
            if isinstance(step, CommandStep):
                failure = _run_command(step, run_dir, echo)
                for out in step.outputs.values():
                    result.outputs[f"{step.name}.{out.name}"] = out.path
                if failure is not None:
                    result.failure = failure
                    if not job.continue_on_step_failure:
                        return
                continue
            plan = plan_step(step)
            echo(
                f"[{step.name}] planned {len(plan.batches)} mini-batches ({plan.kind} input) in "
                f"{plan.seconds:.2f} s"
            )
            for note in plan.notes:
                echo(f"note: {note}")
            if not plan.batches:
                raise PlanningError(
                    f"step {step.name}: the input {step.input_data.path} gave no mini-batches"
                )
            step_dir = os.path.join(run_dir, "steps", step.name)
            os.makedirs(step_dir, exist_ok=True)
            with open(os.path.join(step_dir, "plan.pkl"), "wb") as f:
                pickle.dump(plan, f)
            if handle is None:
                cluster_cm = open_cluster(scheduler=scheduler, client=client, n_workers=n_workers)
                handle = cluster_cm.__enter__()
                where = "embedded local cluster" if handle.local else "cluster"
                echo(
                    f"{where}: {handle.n_workers} worker slots, started in "
                    f"{handle.start_seconds:.1f} s"
                )
            outcome = run_step(
                handle.client,
                step,
                plan,
                run_dir,
                n_workers=handle.n_workers,
                local=handle.local,
                echo=echo,
            )
            outcome.failed = _failed_entries(step.name, plan, run_dir)
            state = read_ledger(os.path.join(step_dir, "ledger.jsonl"))
            out_path, _ = assemble_output(step, state)
            if out_path is not None:
                outcome.output = out_path
            for out in step.outputs.values():
                shown = out.path
                if step.append_row_to and os.path.dirname(step.append_row_to) == out.path:
                    shown = step.append_row_to
                elif step.append_row_to and out.path == step.append_row_to:
                    shown = out.path
                result.outputs[f"{step.name}.{out.name}"] = shown
            result.steps.append(outcome)
            if outcome.failure is not None:
                result.failure = f"step {step.name}: {outcome.failure}"
                if not job.continue_on_step_failure:
                    return
    finally:
        if cluster_cm is not None:
            cluster_cm.__exit__(None, None, None)
