"""Reading a run directory back: what ``daskprs status`` and ``daskprs report`` show.

Every path these commands read is named in :class:`RunPaths`, in one place. The ledger
(``steps/<step>/ledger.jsonl``) gives each mini-batch's state and every try with its timings
and session; the plan (``steps/<step>/plan.json``, when readable) only adds each mini-batch's
planned item count, for a failed one whose try never counted its items;
``failed_mini_batches.jsonl`` adds the failed inputs; ``job.json`` the step order and budgets;
``logs/perf`` the resource monitor's samples. A run that is still going, was interrupted or
crashed reads as well as a finished one, and so does a ``map_batches`` call's run directory
(``map_batches.json`` instead of ``run.json`` and ``job.json``; one step, ``map_batches``).
"""

from __future__ import annotations

import calendar
import csv
import glob
import json
import os
import time
from dataclasses import dataclass, field, replace
from typing import Any

from daskprs.errors import PlanningError, UserInputError
from daskprs.results.failures import CANCELLED_ERROR, FailedMiniBatch
from daskprs.results.ledger import LedgerState, ledger_sessions, read_ledger
from daskprs.results.outcome import BatchState, TryRecord, failed_items
from daskprs.rundir import RunDir, pid_alive

__all__ = [
    "PerfSeries",
    "RunPaths",
    "RunView",
    "StepView",
    "failures",
    "inputs_text",
    "read_run",
]


@dataclass(frozen=True)
class RunPaths:
    """The files of a run directory that status and report read (docs/run-directory.md), as
    :class:`~daskprs.rundir.RunDir` names them."""

    root: str

    @property
    def _run(self) -> RunDir:
        return RunDir(self.root)

    @property
    def run_record(self) -> str:
        return self._run.record

    @property
    def job(self) -> str:
        return self._run.resolved_job

    @property
    def result(self) -> str:
        return self._run.logs.job_result

    @property
    def failed(self) -> str:
        return self._run.failed_mini_batches

    @property
    def tries_csv(self) -> str:
        return self._run.logs.processed_report

    @property
    def perf_files(self) -> list[str]:
        return sorted(glob.glob(self._run.logs.perf("*", "*")))

    @property
    def steps_dir(self) -> str:
        return self._run.steps_root

    def ledger(self, step: str) -> str:
        return self._run.step(step).ledger

    def plan(self, step: str) -> str:
        return self._run.step(step).plan

    def command_done(self, step: str) -> str:
        return self._run.step(step).done

    def command_started(self, step: str) -> str:
        return self._run.step(step).command

    @property
    def map_record(self) -> str:
        return self._run.map_record

    def reused(self, step: str) -> str:
        return self._run.step(step).reused


@dataclass
class StepView:
    """One step of a run as its files tell it.

    ``states`` maps each mini-batch id to ``DONE``, ``FAILED``, ``CANCELLED`` or ``PENDING``
    (not final yet: queued, running, or waiting for a retry); ``tries`` has every try the
    ledger recorded, in the order they ended, and ``try_sessions`` the session (0 for the
    first run, 1 for the first resume or rerun, ...) of each. ``planned`` maps a mini-batch id
    to its item count as planned, where the plan knows it.
    """

    name: str
    kind: str  # "parallel" or "command"
    total: int = 0
    states: dict[int, str] = field(default_factory=dict)
    tries: list[TryRecord] = field(default_factory=list)
    try_sessions: list[int] = field(default_factory=list)
    planned: dict[int, int] = field(default_factory=dict)
    finals: dict[int, TryRecord] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    sessions: int = 0
    command_done: bool = False
    # a command step was started (steps/<step>/command.json): not done, it failed or was cut
    command_started: bool = False
    # the tries on record of each CANCELLED mini-batch (a stop cancelled it between tries)
    cancelled_tries: dict[int, int] = field(default_factory=dict)
    # ledger lines that could not be read (cut short by a crash, or of the wrong shape)
    skipped_lines: int = 0
    # the earlier run this run reused the step from (its outputs copied; it did not run here)
    reused_from: str | None = None

    def count(self, state: str) -> int:
        return sum(1 for s in self.states.values() if s == state)

    @property
    def pending(self) -> int:
        return self.total - self.count("DONE") - self.count("FAILED") - self.count("CANCELLED")

    @property
    def succeeded_items(self) -> int:
        return sum(r.succeeded for mb, r in self.finals.items() if self.states[mb] == "DONE")

    @property
    def failed_items(self) -> int:
        """Items failed, by the rule of the budgets and the job's summary
        (:func:`~daskprs.results.outcome.failed_items`, with the plan's item counts)."""
        return sum(
            failed_items(BatchState(self.states[mb]), r, self.planned.get(mb))
            for mb, r in self.finals.items()
        )

    @property
    def uncounted_failed(self) -> int:
        """FAILED mini-batches whose items neither their try nor the plan counted (a table
        cut by bytes whose try was killed before it reported): their items are missing from
        :attr:`failed_items`, as from the job's summary."""
        return sum(
            1
            for mb, r in self.finals.items()
            if self.states[mb] == BatchState.FAILED and r.total is None and mb not in self.planned
        )

    @property
    def short_returns(self) -> list[tuple[int, TryRecord]]:
        """DONE mini-batches with failed items (``run()`` returned fewer rows than it got),
        with the record that says why, in id order."""
        return [
            (mb, r)
            for mb, r in sorted(self.finals.items())
            if self.states.get(mb) == "DONE" and r.failed and r.warning
        ]

    @property
    def finished(self) -> bool:
        if self.reused_from is not None:
            return True
        if self.kind == "command":
            return self.command_done
        return self.total > 0 and self.pending == 0


@dataclass
class PerfSeries:
    """The resource monitor's samples of one process: ``logs/perf/<node>/<process>.csv``."""

    node: str
    process: str
    times: list[float] = field(default_factory=list)
    node_cpu: list[float | None] = field(default_factory=list)
    node_mem: list[float | None] = field(default_factory=list)
    proc_cpu: list[float | None] = field(default_factory=list)
    proc_rss_mb: list[float | None] = field(default_factory=list)
    pids: list[int | None] = field(default_factory=list)


@dataclass
class RunView:
    """Everything status and report show about one run directory."""

    root: str
    name: str
    job_file: str
    created: float
    steps: list[StepView]
    driver_pid: int | None  # the pid holding the run's lock, None when no driver holds it
    driver_alive: bool
    result_lines: list[str]
    failed: list[FailedMiniBatch]
    perf: list[PerfSeries]

    # made by map_batches (map_batches.json, no run.json): continued by calling it again
    map_batches: bool = False

    @property
    def running(self) -> bool:
        return self.driver_alive

    @property
    def stopped_by(self) -> str | None:
        """The budget that stopped the run as ``logs/job_result.txt`` says
        (:class:`daskprs.execute.supervisor.Budget`: ``storage``, ``run_directory``, ...), or
        None (it says none: no budget stopped it, or a daskprs before it said so)."""
        return _field(self.result_lines, "stopped by")

    @property
    def result_outcome(self) -> str | None:
        """``succeeded`` or ``FAILED`` as ``logs/job_result.txt`` says, or None."""
        return _field(self.result_lines, "outcome")

    @property
    def failure(self) -> str | None:
        return _field(self.result_lines, "failure")

    @property
    def failure_details(self) -> list[str]:
        """The lines that continue the failure in ``logs/job_result.txt`` (indented: the
        failed mini-batches a budget's message names), without their indent."""
        lines = self.result_lines
        for i, line in enumerate(lines):
            if line.startswith("failure: "):
                details = []
                for more in lines[i + 1 :]:
                    if not more[:1].isspace():
                        break
                    details.append(more.strip())
                return [d for d in details if d]
        return []

    @property
    def state(self) -> str:
        """``running``, ``succeeded``, ``failed``, ``interrupted`` or ``incomplete``.

        ``incomplete``: no driver runs it and it never finished (a killed driver, or a run
        that never got to write its result).
        """
        if self.running:
            return "running"
        unfinished = any(not s.finished for s in self.steps)
        failure = self.failure or ""
        if self.result_outcome == "INTERRUPTED" or failure.startswith("interrupted"):
            return "interrupted"
        # (map_batches writes its result's status: "failed", "succeeded with failures")
        if self.result_outcome in ("FAILED", "failed"):
            return "failed"
        if (self.result_outcome or "").startswith("succeeded") and not unfinished:
            return "succeeded"
        return "incomplete"


def _field(lines: list[str], name: str) -> str | None:
    prefix = f"{name}: "
    for line in lines:
        if line.startswith(prefix):
            return line[len(prefix) :]
    return None


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _tries_by_session(path: str) -> tuple[list[TryRecord], list[int]]:
    """Every try the ledger recorded, in the order they ended, and the session of each (the
    number of ``session`` events before it, less one). Lines of the wrong shape are skipped,
    as replaying the ledger skips them."""
    tries: list[TryRecord] = []
    sessions: list[int] = []
    for number, (_, recorded) in enumerate(ledger_sessions(path)):
        tries += recorded
        sessions += [number] * len(recorded)
    return tries, sessions


def _planned_items(path: str) -> dict[int, int]:
    """Each mini-batch's item count as planned (files, or rows the planner counted), from
    ``plan.json``; empty when there is none or it cannot be read (the counts then come from
    the tries alone)."""
    from daskprs.inputs.planfile import read_plan  # the plan's classes, only when there is one

    if not os.path.exists(path):
        return {}
    try:
        plan = read_plan(path)
    except (OSError, ValueError, PlanningError):
        return {}
    counts: dict[int, int] = {}
    for batch in plan.batches:
        n = batch.n_items
        if n is not None:
            counts[batch.index] = n
    return counts


def _step_view(paths: RunPaths, name: str, kind: str, settings: dict[str, Any]) -> StepView:
    view = StepView(name=name, kind=kind, settings=settings)
    reused = _read_json(paths.reused(name))
    if isinstance(reused, dict):
        view.reused_from = str(reused.get("run_dir") or "an earlier run")
    if kind == "command":
        view.command_done = os.path.exists(paths.command_done(name))
        view.command_started = os.path.exists(paths.command_started(name))
        return view
    state: LedgerState = read_ledger(paths.ledger(name))
    view.sessions = state.sessions
    view.skipped_lines = state.skipped
    view.total = int(state.header.get("batches", 0)) if state.header else 0
    view.tries, view.try_sessions = _tries_by_session(paths.ledger(name))
    view.planned = _planned_items(paths.plan(name))
    for mb, entry in state.entries.items():
        if entry.state in ("DONE", "FAILED", "CANCELLED"):
            view.states[mb] = entry.state
            if entry.record is not None:
                view.finals[mb] = entry.record
            elif entry.state == "CANCELLED" and entry.tries:
                view.cancelled_tries[mb] = entry.tries
    view.total = max(view.total, len(view.states), max(view.states, default=-1) + 1)
    for mb in range(view.total):
        view.states.setdefault(mb, "PENDING")
    return view


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _perf(path: str) -> PerfSeries:
    node = os.path.basename(os.path.dirname(path))
    series = PerfSeries(node=node, process=os.path.splitext(os.path.basename(path))[0])
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            try:
                stamp = time.strptime(row["Time"], "%Y-%m-%d %H:%M:%S")
            except (KeyError, TypeError, ValueError):
                continue
            series.times.append(float(calendar.timegm(stamp)))
            series.node_cpu.append(_number(row.get("Node CPU Percent") or ""))
            series.node_mem.append(_number(row.get("Node Memory Percent") or ""))
            series.proc_cpu.append(_number(row.get("Process CPU Percent") or ""))
            series.proc_rss_mb.append(_number(row.get("Process RSS MB") or ""))
            pid = _number(row.get("Process Id") or "")
            series.pids.append(None if pid is None else int(pid))
    return series


def _steps_of(paths: RunPaths, job: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, kind, settings) of each step, in the job's order."""
    steps: list[tuple[str, str, dict[str, Any]]] = []
    if isinstance(job, dict):
        for s in job.get("steps", []):
            if not isinstance(s, dict) or "name" not in s:
                continue
            kind = s.get("kind") or ("command" if "command" in s else "parallel")
            steps.append((s["name"], kind, dict(s.get("settings") or {})))
    known = {name for name, _, _ in steps}
    for ledger in sorted(glob.glob(os.path.join(paths.steps_dir, "*", "ledger.jsonl"))):
        name = os.path.basename(os.path.dirname(ledger))
        if name not in known:
            steps.append((name, "parallel", {}))
    return steps


def _planned_totals(steps: list[StepView], inputs: Any) -> None:
    """A planned step whose ledger has no session yet (interrupted or killed between its
    planning and its first try) counts its mini-batches from the run record's fingerprint of
    its plan: they are all PENDING, not "not started"."""
    if not isinstance(inputs, dict):
        return
    for view in steps:
        planned = inputs.get(view.name)
        count = planned.get("batches") if isinstance(planned, dict) else None
        if view.kind == "parallel" and view.total == 0 and isinstance(count, int) and count > 0:
            view.total = count
            for mb in range(count):
                view.states.setdefault(mb, "PENDING")


def read_run(run_dir: str | os.PathLike) -> RunView:
    """Read a run directory (finished, failed, interrupted or still running).

    Raises
    ------
    UserInputError
        The folder is not a daskprs run directory.
    """
    root = os.path.abspath(os.fspath(run_dir))
    paths = RunPaths(root)
    if not os.path.isdir(root):
        raise UserInputError(f"{root} does not exist; give the run directory `daskprs run` made")
    record = _read_json(paths.run_record)
    mapped = not isinstance(record, dict) and os.path.exists(paths.map_record)
    if mapped:
        # a map_batches call's: one step and its ledger, logs and failures as a job's, and
        # map_batches.json instead of run.json (no job file)
        record = _map_batches_record(paths)
    if not isinstance(record, dict):
        raise UserInputError(
            f"{root} is not a daskprs run directory (no readable run.json, nor the "
            "map_batches.json of a map_batches call); give the folder that `daskprs run` or "
            "map_batches created (by default under ./daskprs-runs/)"
        )
    job = _read_json(paths.job)
    steps = [_step_view(paths, n, k, s) for n, k, s in _steps_of(paths, job)]
    _planned_totals(steps, record.get("inputs"))
    pid = RunDir(paths.root).lock_owner()
    lines: list[str] = []
    if os.path.exists(paths.result):
        with open(paths.result, encoding="utf-8") as f:
            lines = f.read().splitlines()
    failed: list[FailedMiniBatch] = []
    if os.path.exists(paths.failed):
        with open(paths.failed, encoding="utf-8") as f:
            for line in f:
                try:
                    failed.append(FailedMiniBatch.from_json(json.loads(line)))
                except (json.JSONDecodeError, TypeError, ValueError, AttributeError):
                    continue
    return RunView(
        root=root,
        name=str(record.get("name", os.path.basename(root))),
        job_file=str(record.get("job_file", "")),
        created=float(record.get("created", 0.0) or 0.0),
        steps=steps,
        driver_pid=pid,
        driver_alive=pid is not None and pid_alive(pid),
        result_lines=lines,
        failed=failed,
        perf=[_perf(p) for p in paths.perf_files],
        map_batches=mapped,
    )


# The step of a map_batches run (daskprs.mapping.run.STEP, not imported: it brings in Dask).
_MAP_STEP = "map_batches"


def _map_batches_record(paths: RunPaths) -> dict[str, Any] | None:
    """What status and report need of a map_batches run's ``map_batches.json`` in the shape
    of a run record: its name, when it was made, and its partitions as the step's planned
    mini-batches (counted before the first try is on record)."""
    record = _read_json(paths.map_record)
    if not isinstance(record, dict):
        return None
    count, created = record.get("npartitions"), record.get("created")
    return {
        "name": os.path.basename(paths.root),
        "created": created if isinstance(created, (int, float)) else 0.0,
        "inputs": {_MAP_STEP: {"batches": count}} if isinstance(count, int) else {},
    }


def inputs_text(inputs: Any, most: int = 3) -> str:
    """A short line naming a mini-batch's inputs (``failed_mini_batches.jsonl``'s ``inputs``)."""
    if not inputs:
        return ""
    if not isinstance(inputs, dict):
        return str(inputs)
    if inputs.get("files"):
        files = [str(f) for f in inputs["files"]]
        more = f" (+{len(files) - most} more)" if len(files) > most else ""
        return ", ".join(files[:most]) + more
    if "file" in inputs:
        where = (
            f"row groups {inputs['row_groups']}"
            if "row_groups" in inputs
            else f"bytes {inputs.get('start', 0)}-{inputs.get('end') or 'end'}"
        )
        return f"{inputs['file']} {where}"
    if inputs.get("pieces"):
        pieces = [inputs_text(p) for p in inputs["pieces"]]
        more = f" (+{len(pieces) - most} more)" if len(pieces) > most else ""
        return "; ".join(pieces[:most]) + more
    return ", ".join(f"{k}={v}" for k, v in inputs.items())


def failures(view: RunView) -> list[FailedMiniBatch]:
    """Failed and cancelled mini-batches, as ``failed_mini_batches.jsonl`` lists them.

    From that file where it lists them; from the ledgers for the others (a run still going,
    or one killed before it wrote the file), without their inputs.
    """
    listed = {(f.step, f.id) for f in view.failed}
    current = {
        (s.name, mb)
        for s in view.steps
        for mb, st in s.states.items()
        if st in (BatchState.FAILED, BatchState.CANCELLED)
    }
    tried = {(s.name, mb): n for s in view.steps for mb, n in s.cancelled_tries.items()}
    # a rerun may have fixed some since the file was written
    out = [f for f in view.failed if (f.step, f.id) in current]
    for step in view.steps:
        for mb, state in sorted(step.states.items()):
            if state in (BatchState.FAILED, BatchState.CANCELLED) and (step.name, mb) not in listed:
                rec = step.finals.get(mb)
                tries = step.cancelled_tries.get(mb, 0)
                out.append(FailedMiniBatch.of(step.name, mb, BatchState(state), rec, {}, tries))
    # a cancelled one as this daskprs says it (an older one wrote "cancelled before it ran"
    # also of those a stop cut short), with the tries the ledger holds of it
    return [
        replace(f, error=CANCELLED_ERROR, tries=max(f.tries, tried.get((f.step, f.id), 0)))
        if f.state == BatchState.CANCELLED and f.status == BatchState.CANCELLED
        else f
        for f in out
    ]
