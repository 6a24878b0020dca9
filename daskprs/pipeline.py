"""Running the steps of a job in order: command steps as shell commands, parallel steps
planned and handed to the runner, for a new run, a resume or a rerun of failed mini-batches.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from daskprs.errors import JobFailed, PlanningError, UserInputError
from daskprs.execute.cluster import open_cluster
from daskprs.execute.preflight import check_entry_script
from daskprs.execute.runner import assemble_output, policy_for, run_step
from daskprs.execute.supervisor import Prior, failed_items, verdict_of
from daskprs.inputs.plan import Plan, plan_input
from daskprs.inputs.planfile import read_plan, write_plan
from daskprs.job.model import ClusterSpec, CommandStep, Job, ParallelStep
from daskprs.observe import logs
from daskprs.observe.progress import Progress
from daskprs.results import fingerprint, reuse
from daskprs.results.jobresult import JobResult, StepOutcome
from daskprs.results.ledger import LedgerState, read_ledger
from daskprs.results.outcome import BatchState
from daskprs.rundir import RunDir

PENDING, RUNNING, DONE, FAILED, CANCELLED = BatchState

__all__ = [
    "StepsRunner",
    "check_workers",
    "outcome_from_ledger",
    "plan_step",
    "todo_and_prior",
]


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


def _run_command(step: CommandStep, run: RunDir, echo: Callable[[str], None]) -> str | None:
    """Run a command step in its code folder; return a failure message or None."""
    for out in step.outputs.values():
        if "://" not in out.path:
            target = out.path if out.type != "uri_file" else os.path.dirname(out.path)
            os.makedirs(target, exist_ok=True)
    env = {**os.environ, **{k: str(v) for k, v in step.environment_variables.items()}}
    log_dir = run.logs.command(step.name)
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
        if e.state in (FAILED, CANCELLED) and mb in batches:
            out.append(logs.failed_entry(step, mb, batches[mb].describe(), e.record, e.state))
    return out


class StepsRunner:
    """Runs the steps of a job in order, for a new run, a resume or a rerun."""

    def __init__(
        self,
        job: Job,
        result: JobResult,
        run: RunDir,
        mode: str,
        record: dict[str, Any],
        echo: Callable[[str], None],
        force: bool,
        save_record: Callable[[], None],
        progress: Progress | None = None,
        cache: str | None = None,
        force_rerun: bool = False,
    ):
        self.job, self.result, self.rundir, self.mode = job, result, run, mode
        self.record, self.echo, self.force = record, echo, force
        self.save_record = save_record
        self.progress = progress
        self.reuse_roots = reuse.search_roots(run.root, cache)
        self.force_rerun = force_rerun or job.force_rerun
        self.handle: Any = None
        self._cluster_stack = contextlib.ExitStack()
        # a cluster starting in a thread while the first parallel step plans (see _prestart)
        self._starting: tuple[Any, threading.Thread, dict[str, Any]] | None = None

    def run(
        self,
        scheduler: str | None,
        client: Any,
        n_workers: int,
        security: Any = None,
        cluster_spec: ClusterSpec | None = None,
    ) -> None:
        self._cluster_args = {
            "scheduler": scheduler,
            "client": client,
            "n_workers": n_workers,
            "security": security,
            "cluster_spec": cluster_spec,
        }
        try:
            for step in self.job.steps:
                failure = self._step(step)
                if failure is not None:
                    self.result.failure = self.result.failure or failure
                    if not self.job.continue_on_step_failure:
                        return
        finally:
            self._cluster_stack.close()

    def _prestart(self) -> None:
        """Start the cluster in a thread while the step plans and checks its entry script
        (:meth:`_cluster` takes it over); a cluster given as a client is there already."""
        if self.handle is not None or self._starting is not None:
            return
        if self._cluster_args["client"] is not None:
            return
        opening = open_cluster(**self._cluster_args)
        box: dict[str, Any] = {}

        def start() -> None:
            try:
                box["handle"] = opening.__enter__()
            except BaseException as err:  # raised again by _cluster(), in the main thread
                box["error"] = err

        thread = threading.Thread(target=start, name="daskprs-cluster-start", daemon=True)
        thread.start()
        self._starting = (opening, thread, box)
        self._cluster_stack.callback(self._abandon_start)

    def _abandon_start(self) -> None:
        """At the end of the run: close a cluster started in advance and never used."""
        if self._starting is None:
            return
        opening, thread, box = self._starting
        self._starting = None
        thread.join()
        if "handle" in box:
            opening.__exit__(None, None, None)

    def _cluster(self) -> Any:
        if self.handle is not None:
            return self.handle
        if self._starting is not None:  # started in advance: wait for it
            opening, thread, box = self._starting
            self._starting = None
            thread.join()
            if "error" in box:
                raise box["error"]
            self._cluster_stack.push(opening.__exit__)
            self.handle = box["handle"]
        else:
            self.handle = self._cluster_stack.enter_context(open_cluster(**self._cluster_args))
        where = "embedded local cluster" if self.handle.local else "cluster"
        self.echo(
            f"{where}: {self.handle.n_workers} worker slots, started in "
            f"{self.handle.start_seconds:.1f} s"
        )
        link = _dashboard_link(self.handle.client)
        if link:
            self.echo(f"Dask dashboard: {link}")
        return self.handle

    def _note_concurrency(self, step: ParallelStep, slots: int) -> None:
        """On an existing cluster its worker threads decide how many mini-batches run at
        once; say so when the job file asks for another number."""
        if not step.max_concurrency_per_instance and step.instance_count == 1:
            return
        asked = step.instance_count * step.processes_per_instance
        if asked != slots:
            self.echo(
                f"note: [{step.name}] the cluster runs {slots} mini-batches at once (its worker "
                f"threads); instance_count x max_concurrency_per_instance = {asked} sizes the "
                "embedded cluster only (docs/clusters.md)"
            )

    def _cluster_on_this_machine(self) -> bool:
        """Whether the workers run here (the embedded cluster, or a client of an in-process
        cluster), so that this machine's Python is theirs."""
        args = self._cluster_args
        if args["scheduler"] is not None or args["cluster_spec"] is not None:
            return False
        return args["client"] is None or getattr(args["client"], "cluster", None) is not None

    def _step(self, step: ParallelStep | CommandStep) -> str | None:
        """Run a step, or reuse it (a new run only; see :mod:`daskprs.results.reuse`)."""
        marker = self.rundir.step(step.name).reused
        if self.mode != "run" and os.path.exists(marker):
            with open(marker, encoding="utf-8") as f:
                self._reused(step, json.load(f), marker, copy=False)
            return None
        plan = None
        key = None
        reusable = self.mode == "run" and step.is_deterministic
        if isinstance(step, ParallelStep) and not (reusable and not self.force_rerun):
            self._prestart()  # nothing to look up first: the cluster starts while it plans
        if reusable:
            if isinstance(step, ParallelStep):
                plan = plan_step(step)
            key = reuse.step_key(step, self.rundir.root, plan.batches if plan else ())
            found = None
            if key is not None and not self.force_rerun:
                found = reuse.lookup(self.reuse_roots, key, step, self.rundir.root)
            if found is not None:
                self._reused(step, found, marker, copy=True)
                reuse.remember(self.rundir.root, key, step, found["outcome"])  # a source in turn
                return None
        if isinstance(step, CommandStep):
            failure = self._command(step)
        else:
            self._prestart()
            failure = self._parallel(step, plan)
        if failure is None and key is not None:
            outcome = None
            if isinstance(step, ParallelStep):
                outcome = asdict(next(o for o in self.result.steps if o.step == step.name))
            reuse.remember(self.rundir.root, key, step, outcome)
        return failure

    def _reused(
        self, step: ParallelStep | CommandStep, found: dict[str, Any], marker: str, copy: bool
    ) -> None:
        """Take an earlier run's outputs and outcome of ``step`` as this run's."""
        earlier = found["run_dir"]
        if copy:
            reuse.copy_outputs(found, step.outputs)
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            with open(marker, "w", encoding="utf-8") as f:
                json.dump(found, f, indent=2, default=str)
            self.echo(
                f"[{step.name}] reused: inputs, code and settings unchanged since the run "
                f"{earlier}; its outputs are copied from there (--force-rerun runs it again)"
            )
        else:
            self.echo(f"[{step.name}] reused from the run {earlier} when this run started")
        self.result.reused[step.name] = earlier
        for out in step.outputs.values():
            self.result.outputs[f"{step.name}.{out.name}"] = out.path
        if isinstance(step, ParallelStep):
            saved = dict(found["outcome"] or {})
            outcome = StepOutcome(**saved)
            if step.append_row_to:
                outcome.output = step.append_row_to
                for out in step.outputs.values():
                    if os.path.dirname(step.append_row_to) == out.path:
                        self.result.outputs[f"{step.name}.{out.name}"] = step.append_row_to
            self.result.steps.append(outcome)

    def _command(self, step: CommandStep) -> str | None:
        done = self.rundir.step(step.name).done
        for out in step.outputs.values():
            self.result.outputs[f"{step.name}.{out.name}"] = out.path
        if self.mode != "run" and os.path.exists(done):
            self.echo(f"[{step.name}] command step already done in an earlier session")
            return None
        failure = _run_command(step, self.rundir, self.echo)
        if failure is None:
            os.makedirs(os.path.dirname(done), exist_ok=True)
            open(done, "w").close()
        return failure

    def _plan(self, step: ParallelStep, fresh: Plan | None = None) -> Plan:
        where = self.rundir.step(step.name)
        fresh = fresh or plan_step(step)
        if self.mode != "run" and os.path.exists(where.plan):
            saved = read_plan(where.plan)
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
                self.record.setdefault("inputs", {})[step.name] = new
                self.save_record()
            if saved.batches == fresh.batches or not self.force:
                return saved
            if os.path.exists(where.ledger):
                # the mini-batch ids no longer mean the same inputs: start the step over
                os.replace(where.ledger, f"{where.ledger}.before-force-{int(time.time())}")
        self.record.setdefault("inputs", {})[step.name] = fingerprint.input_digest(fresh.batches)
        os.makedirs(where.root, exist_ok=True)
        write_plan(where.plan, fresh)
        self.save_record()
        return fresh

    def _parallel(self, step: ParallelStep, fresh: Plan | None = None) -> str | None:
        plan = self._plan(step, fresh)
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
        ledger_file = self.rundir.step(step.name).ledger
        state = read_ledger(ledger_file)
        todo, prior = todo_and_prior(plan, state, self.mode)
        if self.mode != "run":
            self.echo(
                f"[{step.name}] {self.mode}: {len(todo)} of {len(plan.batches)} mini-batches to run"
            )
        if todo:
            if self._cluster_on_this_machine():
                check_entry_script(
                    step.name, step.code_dir, step.entry_script, step.python, step.environment
                )
            handle = self._cluster()
            ship_code = False
            if not handle.local:
                self._note_concurrency(step, handle.n_workers)
                ship_code = check_workers(handle.client, step, self.rundir.root)
                if ship_code:
                    self.echo(
                        f"[{step.name}] some workers cannot see the code folder "
                        f"{step.code_dir}; shipping it to them"
                    )
            outcome = run_step(
                handle.client,
                step,
                plan,
                self.rundir,
                n_workers=handle.n_workers,
                local=handle.local,
                session=state.sessions,
                prior=prior,
                todo=todo,
                echo=self.echo,
                ship_code=ship_code,
                progress=self.progress,
            )
        else:
            outcome = outcome_from_ledger(step, plan, state)
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


def _dashboard_link(client: Any) -> str | None:
    """The Dask dashboard's address, when the scheduler serves one."""
    try:
        return client.dashboard_link if client.scheduler_info().get("services") else None
    except Exception:  # no dashboard (bokeh missing, --no-dashboard): nothing to print
        return None


def check_workers(client: Any, step: ParallelStep, run_dir: str) -> bool:
    """Before running on an external cluster: every worker runs a compatible daskprs and sees
    the run directory and local inputs (DESIGN decision 7).

    Returns True when some worker cannot see the code folder: it is then shipped to the
    workers (:class:`daskprs.execute.worker.CodeFolder`).
    """
    import daskprs
    from daskprs.execute.worker import check_worker

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


def todo_and_prior(plan: Plan, state: Any, mode: str) -> tuple[list[int], dict[int, Prior]]:
    """Which mini-batches to run, and the final states the others keep."""
    rerun = {"run": (), "resume": (PENDING, RUNNING, CANCELLED)}.get(
        mode, (PENDING, RUNNING, FAILED, CANCELLED)
    )
    todo: list[int] = []
    prior: dict[int, Prior] = {}
    for batch in plan.batches:
        entry = state.entries.get(batch.index)
        st = BatchState(entry.state) if entry is not None else PENDING
        if mode == "run" or st in rerun:
            todo.append(batch.index)
            continue
        rec = entry.record if entry is not None else None
        prior[batch.index] = Prior(
            st,
            rec.succeeded if rec is not None else 0,
            failed_items(st, rec, batch.n_items),
            rec.error if rec is not None else "",
        )
    return todo, prior


def outcome_from_ledger(step_obj: ParallelStep, plan: Plan, state: Any) -> StepOutcome:
    """A step with nothing left to run: its outcome as the ledger records it."""
    _, prior = todo_and_prior(plan, state, "resume")
    items = {b.index: b.n_items for b in plan.batches}
    stop, summary = verdict_of(items, prior, policy_for(step_obj, 1, None))
    return StepOutcome(
        step=step_obj.name,
        failure=stop.failure,
        budget=stop.budget,
        summary=summary,
        output=None,
    )
