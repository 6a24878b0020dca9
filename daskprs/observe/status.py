"""``daskprs status RUN_DIR``: a one-screen summary of a run directory (pure formatting).

What state the run is in, each step's counts, the failed mini-batches (the first few), and
the command to run next: ``daskprs run --resume`` for unfinished work, ``daskprs
rerun-failed`` for failed mini-batches.
"""

from __future__ import annotations

import time

from daskprs.observe.runview import RunView, StepView, inputs_text
from daskprs.observe.runview import failures as failures_of

__all__ = ["format_status", "next_command"]

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
    if step.count("FAILED") or step.count("CANCELLED"):
        return "with failures"
    return "done"


def next_command(view: RunView) -> str | None:
    """What to run next; None when nothing is left to do (or a driver is running it).

    An interrupted or killed run is resumed (``--resume`` runs what is not committed). A run
    that ended with failed or cancelled mini-batches (a budget exceeded cancels the queued
    ones) is rerun for them once the script is fixed: resuming it would only hit the same
    budget again.
    """
    state = view.state
    if state == "running":
        return None
    began = any(s.tries or s.command_done for s in view.steps)
    if state == "failed" and not began and view.job_file:
        # it failed before its first mini-batch: what the failure names is to be fixed, and
        # the job run anew (a resume would meet the same problem)
        return f"daskprs run {view.job_file}"
    if state in ("interrupted", "incomplete"):
        return f"daskprs run --resume {view.root}"
    if any(s.count("FAILED") or s.count("CANCELLED") for s in view.steps):
        return f"daskprs rerun-failed {view.root}"
    unfinished = any(
        s.reused_from is None
        and ((s.kind == "parallel" and s.pending) or (s.kind == "command" and not s.command_done))
        for s in view.steps
    )
    if unfinished:
        return f"daskprs run --resume {view.root}"
    return None


def format_status(view: RunView) -> str:
    """The status screen of a run directory."""
    state = view.state
    lines = [
        f"run {view.name}: {_STATE_WORDS.get(state, state)}",
        f"  directory: {view.root}",
        f"  job file:  {view.job_file}",
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
            tries = f.tries
            lines.append(
                f"  {f.step} #{f.id}  {f.status}"
                f"{f' after {tries} tries' if tries else ''}: {error[-1] if error else ''}"
            )
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
    command = next_command(view)
    if state == "running":
        lines.append("next: wait for it to end (or stop it with Ctrl-C / SIGTERM)")
    elif command is None:
        lines.append("next: nothing left to run")
    elif "--resume" in command:
        lines.append(f"next: {command}    (runs only what is not committed)")
    else:
        lines.append(f"next: {command}    (after fixing the entry script)")
    lines.append(f"      daskprs report {view.root}    (an HTML report of the run)")
    return "\n".join(lines)
