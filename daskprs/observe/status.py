"""``daskprs status RUN_DIR``: a one-screen summary of a run directory (pure formatting).

What state the run is in, each step's counts, the failed mini-batches (the first few), and
the command to run next, as the run's records say what happened: ``daskprs run --resume`` for
unfinished work (an interrupt, a kill, a stop for lack of room, a cluster not reached),
``daskprs rerun-failed`` for failed mini-batches or a failed command step.
"""

from __future__ import annotations

import time

from daskprs.observe.runview import RunView, StepView, inputs_text
from daskprs.observe.runview import failures as failures_of

__all__ = ["format_status", "next_command", "next_step"]

# Failed mini-batches listed on the screen; the rest are counted.
_SHOWN_FAILURES = 8

_STATE_WORDS = {
    "running": "RUNNING (a driver is running it now)",
    "succeeded": "SUCCEEDED",
    "failed": "FAILED",
    "interrupted": "INTERRUPTED (committed work is kept)",
    "incomplete": "INCOMPLETE (no driver is running it: it was killed or crashed)",
}


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds)) if seconds else "?"


def _step_state(step: StepView, run_state: str) -> str:
    if step.reused_from is not None:
        return "reused"
    if step.kind == "command":
        return "done" if step.command_done else "not done"
    if step.total == 0 and not step.tries:
        return "not started"
    if step.pending:
        return "running" if run_state == "running" else "unfinished"
    if step.count("CANCELLED") and run_state in ("interrupted", "incomplete"):
        return "interrupted"
    if step.count("FAILED"):
        return "with failures"
    if step.count("CANCELLED"):  # a stop cancelled what was not final; nothing failed
        return "stopped"
    return "done"


# Why, after the command to run next.
_RESUMES = "runs only what is not committed"
_FIX_SCRIPT = "after fixing the entry script"


# The budgets that stopped a run as logs/job_result.txt's "stopped by:" line names them
# (daskprs.execute.supervisor.Budget's values; this layer reads records, it runs nothing)
_RUN_DIRECTORY = "run_directory"
_STORAGE = "storage"


def next_step(view: RunView) -> tuple[str, str] | None:
    """What to run next and why, as the run's records say what happened; None when nothing
    is left to do (or a driver is running it).

    An interrupted or killed run is resumed (``--resume`` runs what is not committed), and
    so is one that a lack of room stopped (the step's budget ``storage`` in
    ``logs/job_result.txt``, or a failure that says to continue so) or that stopped before
    any step began (a cluster not reached): what the failure names is fixed outside the
    run. A run that ended with failed mini-batches or a failed command step is rerun for
    them once the script or the command is fixed, and so is one whose budget cancelled its
    mini-batches (``init()`` failing everywhere, no progress): resuming would only meet the
    same failure. A run whose records were changed while it ran (``run_directory``) cannot
    be continued: it is run again. A map_batches run is continued by calling it again.
    """
    state = view.state
    if state == "running":
        return None
    if view.map_batches:
        return _next_map_batches(view)
    resume = f"daskprs run --resume {view.root}"
    rerun = f"daskprs rerun-failed {view.root}"
    if state in ("interrupted", "incomplete"):
        return resume, _RESUMES
    failed = state == "failed"
    stop = view.stopped_by
    if failed and stop == _RUN_DIRECTORY:
        return (
            f"daskprs run {view.job_file}",
            "in a new run directory: this one's records were changed while it ran, so what "
            "it did is not on record and a resume cannot continue it",
        )
    if failed and (
        stop == _STORAGE or "continue with: daskprs run --resume" in (view.failure or "")
    ):
        return resume, f"after making room as the failure above says; {_RESUMES}"
    if any(s.count("FAILED") for s in view.steps):
        return rerun, _FIX_SCRIPT
    commands = [
        s.name
        for s in view.steps
        if s.kind == "command" and s.reused_from is None and s.command_started
        if not s.command_done
    ]
    if failed and commands:
        return rerun, f"after fixing the command of step {commands[0]}"
    fixed = f"after fixing what the failure above names; {_RESUMES}" if failed else _RESUMES
    began = any(s.tries or s.command_started or s.command_done for s in view.steps)
    if failed and not began:  # (a cluster not reached, an input not there)
        return resume, fixed
    if any(s.count("CANCELLED") for s in view.steps):
        return rerun, _FIX_SCRIPT
    unfinished = any(
        s.reused_from is None
        and ((s.kind == "parallel" and s.pending) or (s.kind == "command" and not s.command_done))
        for s in view.steps
    )
    return (resume, fixed) if unfinished else None


def _next_map_batches(view: RunView) -> tuple[str, str] | None:
    """A map_batches run: the same call with its ``run_dir`` runs what is not done (as
    ``--resume``: a fixed ``run()`` too); its failed partitions stay failed there and count
    toward the budgets, so only a new run directory runs them again."""
    failed = any(s.count("FAILED") for s in view.steps)
    fresh = (
        "map_batches(..., run_dir=<a new folder>)",
        "after fixing run(): failed partitions stay failed in this run directory",
    )
    if failed and view.state == "failed":  # a budget stopped it: the same call meets it again
        return fresh
    if any(s.pending or s.count("CANCELLED") for s in view.steps):
        return (
            f"map_batches(..., run_dir={view.root!r})",
            "the same call again: it runs only the partitions not done",
        )
    return fresh if failed else None


def next_command(view: RunView) -> str | None:
    """The command of :func:`next_step` (None: nothing to run)."""
    step = next_step(view)
    return step[0] if step else None


def format_status(view: RunView) -> str:
    """The status screen of a run directory."""
    state = view.state
    lines = [
        f"run {view.name}: {_STATE_WORDS.get(state, state)}",
        f"  directory: {view.root}",
        f"  job file:  {view.job_file or '(none: a map_batches run)'}",
        f"  started:   {_when(view.created)}",
    ]
    if view.running and view.driver_pid:
        lines.append(f"  driver:    process {view.driver_pid}")
    if view.failure and state != "running":
        details = view.failure_details
        failure = view.failure
        if not details and failure.endswith(":"):  # a heading whose list is not there
            failure = failure.rsplit(". ", 1)[0]
        lines.append(f"  failure:   {failure}")
        lines += [f"             {line}" for line in details]
    lines.append("")
    width = max([len(s.name) for s in view.steps] + [4])
    lines.append(
        f"  {'step':<{width}}  {'state':<13} {'done':>7} {'failed':>7} {'cancel':>7} "
        f"{'pending':>7} {'total':>7}  items ok/failed"
    )
    for s in view.steps:
        st = _step_state(s, state)
        if s.reused_from is not None:
            lines.append(f"  {s.name:<{width}}  {st:<13} (from the run {s.reused_from})")
            continue
        if s.kind == "command":
            lines.append(f"  {s.name:<{width}}  {st:<13} (command step)")
            continue
        lines.append(
            f"  {s.name:<{width}}  {st:<13} {s.count('DONE'):>7} {s.count('FAILED'):>7} "
            f"{s.count('CANCELLED'):>7} {s.pending:>7} {s.total:>7}  "
            f"{s.succeeded_items}/{s.failed_items}"
        )
    for s in view.steps:
        if s.skipped_lines:
            lines.append(
                f"  note: {s.skipped_lines} unreadable line(s) of steps/{s.name}/ledger.jsonl "
                "skipped (cut short by a crash, or changed by hand)"
            )
    if not view.steps:
        lines.append("  (no step has started yet)")
    failures = failures_of(view)
    if failures:
        lines += ["", f"failed or cancelled mini-batches ({len(failures)}):"]
        for f in failures[:_SHOWN_FAILURES]:
            error = f.error.strip().splitlines()
            tries = f" after {f.tries} {'try' if f.tries == 1 else 'tries'}" if f.tries else ""
            lines.append(f"  {f.step} #{f.id}  {f.status}{tries}: {error[-1] if error else ''}")
            shown = inputs_text(f.inputs)
            if shown:
                lines.append(f"      inputs: {shown}")
        if len(failures) > _SHOWN_FAILURES:
            lines.append(
                f"  ... and {len(failures) - _SHOWN_FAILURES} more in "
                f"{view.root}/failed_mini_batches.jsonl"
            )
    short = [(s.name, mb, r) for s in view.steps for mb, r in s.short_returns]
    if short:
        lines += ["", f"mini-batches done with failed items ({len(short)}):"]
        for step, mb, r in short[:_SHOWN_FAILURES]:
            lines.append(f"  {step} #{mb}  {r.failed} failed: {r.warning}")
        if len(short) > _SHOWN_FAILURES:
            lines.append(f"  ... and {len(short) - _SHOWN_FAILURES} more")
    lines.append("")
    then = next_step(view)
    if state == "running":
        lines.append("next: wait for it to end (or stop it with Ctrl-C / SIGTERM)")
    elif then is None:
        lines.append("next: nothing left to run")
    else:
        lines.append(f"next: {then[0]}    ({then[1]})")
    lines.append(f"      daskprs report {view.root}    (an HTML report of the run)")
    return "\n".join(lines)
