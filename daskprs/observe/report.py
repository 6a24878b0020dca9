"""``daskprs report RUN_DIR``: one self-contained HTML page about a run.

:func:`build_report` turns a :class:`~daskprs.observe.runview.RunView` into plain values (pure),
:func:`render_html` makes the page from them (plots as inline SVG, CSS inline, no script and
no link to the network), :func:`write_report` writes it. Sections: the outcome and budgets, a
timeline of tries per process, throughput over time, the slowest mini-batches, failures with
their error lines and inputs, and the resource monitor's curves when it sampled.

Its figures are those of the ledger and the job's own summary: failed items by the one rule
(:func:`daskprs.results.outcome.failed_items`); a try killed by its timeout counts the time it
ran; the pauses between sessions (an interrupt, then ``--resume``) are cut out of the time axes
and marked, and left out of the rates; a CPU figure the monitor could not measure yet (its
first sample of a process) is left out rather than drawn as 0 %.
"""

from __future__ import annotations

import html
import itertools
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from daskprs.job.model import RuntimeSettings
from daskprs.observe import plots
from daskprs.observe.runview import PerfSeries, RunView, StepView, failures, inputs_text
from daskprs.observe.status import next_command
from daskprs.results.outcome import Status, TryRecord
from daskprs.rundir import replace_file

__all__ = ["ReportData", "build_report", "render_html", "write_report"]

# Rows of the slowest mini-batches table.
_SLOWEST = 10
# Failures listed in full; the rest are counted (failed_mini_batches.jsonl has them all).
_FAILURES = 50


@dataclass
class ReportData:
    """What the page shows, as plain values."""

    title: str
    state: str
    failure: str | None
    next_command: str | None
    facts: list[tuple[str, str]]
    budgets: list[dict[str, str]]
    bars: list[plots.Bar]
    lanes: list[str]
    span: float
    ends_ok: list[float]
    ends_failed: list[float]
    slowest: list[dict[str, str]]
    failures: list[dict[str, str]]
    more_failures: int
    perf: list[tuple[str, list[float], list[float | None], list[float | None]]]
    node_cpu: dict[str, tuple[list[float], list[float | None]]] = field(default_factory=dict)
    generated: str = ""
    # the failed mini-batches the failure's message goes on to name (logs/job_result.txt)
    failure_details: list[str] = field(default_factory=list)
    # pauses between sessions: (where, in seconds of the time axes, and a label)
    pauses: list[tuple[float, str]] = field(default_factory=list)
    # why there is no resource chart (the monitor off, or no sample that measured anything)
    resources_note: str = ""
    # done mini-batches with failed items: run() returned fewer rows or items than it got
    short_returns: list[dict[str, str]] = field(default_factory=list)


def _limit(value: Any) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "no limit" if number < 0 else f"{number:g}"


def _budgets(step: StepView) -> list[dict[str, str]]:
    s = step.settings
    failed_mb = step.count("FAILED")
    finished = step.count("DONE") + failed_mb
    percent = 100.0 * failed_mb / finished if finished else 0.0
    timeout = s.get("timeout")
    overhead = s.get("task_overhead_timeout")
    progress = s.get("progress_update_timeout")
    if progress is None and timeout is not None and overhead is not None:
        defaults = RuntimeSettings(timeout=float(timeout), task_overhead_timeout=float(overhead))
        progress = defaults.effective_progress_update_timeout
    rows = [
        ("failed items", "error_threshold", step.failed_items, s.get("error_threshold")),
        (
            "failed mini-batches",
            "mini_batch_error_threshold",
            failed_mb,
            s.get("mini_batch_error_threshold"),
        ),
        (
            "failed mini-batches, % of finished",
            "allowed_failed_percent",
            f"{percent:.1f}",
            s.get("allowed_failed_percent"),
        ),
        (
            "tries per mini-batch (most used)",
            "1 + max_retries",
            max((t.try_no for t in step.tries), default=0),
            None if s.get("max_retries") is None else 1 + int(s["max_retries"]),
        ),
        ("run() seconds (longest try)", "timeout", _longest(step.tries, timeout), timeout),
        (
            "seconds without a finished try (longest)",
            "progress_update_timeout",
            _longest_gap(step.tries, step.try_sessions),
            progress,
        ),
    ]
    return [
        {"step": step.name, "what": what, "setting": name, "used": str(used), "limit": _limit(lim)}
        for what, name, used, lim in rows
    ]


# Tries whose process was killed (or died) in run(): the child never reported its time.
_KILLED = (Status.RUN_TIMEOUT, Status.PROCESS_DIED)


def _killed(t: TryRecord) -> bool:
    return t.status in _KILLED and t.run_seconds <= 0


def _ran(t: TryRecord, timeout: Any = None) -> float:
    """Seconds a try spent in run(): what the child measured; for a try killed before it
    could report, the wall time it ran in the worker, and for a timed-out one at least its
    timeout."""
    if not _killed(t):
        return t.run_seconds
    if t.status == Status.RUN_TIMEOUT and timeout is not None and float(timeout) > 0:
        return max(t.elapsed, float(timeout))
    return t.elapsed


def _longest(tries: list[TryRecord], timeout: Any = None) -> str:
    if not tries:
        return f"{0.0:.2f}"
    longest = max(tries, key=lambda t: _ran(t, timeout))
    text = f"{_ran(longest, timeout):.2f}"
    if _killed(longest):
        text += f" (mini-batch {longest.mb} try {longest.try_no}, {longest.status}: killed)"
    return text


def _longest_gap(tries: list[TryRecord], sessions: Sequence[int] = ()) -> str:
    """The longest wait between one try ending and the next, from the first start, within a
    session (the pause between two sessions is no wait for a try)."""
    per_session: dict[int, list[TryRecord]] = {}
    for n, t in enumerate(tries):
        if t.start_time > 0:
            per_session.setdefault(sessions[n] if n < len(sessions) else 0, []).append(t)
    gaps = []
    for timed in per_session.values():
        ends = sorted(t.start_time + t.elapsed for t in timed)
        marks = [min(t.start_time for t in timed), *ends]
        gaps.append(max(b - a for a, b in itertools.pairwise(marks)))
    return f"{max(gaps):.2f}" if gaps else ""


def _try_title(step: str, t: TryRecord) -> str:
    where = f"{t.node}/{t.process}" if t.node or t.process else "worker lost"
    run = "killed before run() reported its time" if _killed(t) else f"run() {t.run_seconds:.2f} s"
    text = f"{step} mini-batch {t.mb}, try {t.try_no}: {t.status} after {t.elapsed:.2f} s ({run})"
    text += f" on {where}"
    if t.error:
        text += "\n" + t.error.strip().splitlines()[0]
    return text


@dataclass(frozen=True)
class _Clock:
    """The report's time axis: seconds since the first try started, with the pauses between
    sessions (absolute ``(start, end)`` times, sorted, disjoint) cut out."""

    origin: float
    pauses: tuple[tuple[float, float], ...] = ()

    def at(self, t: float) -> float:
        x = t - self.origin
        for a, b in self.pauses:
            if t >= b:
                x -= b - a
            elif t > a:
                x -= t - a
        return x

    def paused_between(self, a: float, b: float) -> bool:
        """Whether a pause lies between the times ``a`` and ``b`` (a restart between them)."""
        return any(a <= p + 1 and q <= b + 1 for p, q in self.pauses)


def _pauses(view: RunView) -> list[tuple[float, float]]:
    """The pauses between sessions: from the last try that ended before a later session's
    first try started, to that start (an interrupt or a kill, then ``--resume`` or
    ``rerun-failed``).

    A step's session runs after the sessions of the steps before it in the job, in the same
    driver session or a later one; the wait before a session k > 0 is a pause unless what ran
    just before it was a step earlier in the job that was in its session k or later (then
    both ran in the same driver session, one after the other).
    """
    order = {s.name: i for i, s in enumerate(view.steps)}
    spans: dict[tuple[str, int], tuple[float, float]] = {}
    for s in view.steps:
        for t, k in zip(s.tries, s.try_sessions, strict=False):
            if t.start_time > 0:
                a, b = spans.get((s.name, k), (math.inf, -math.inf))
                spans[(s.name, k)] = (min(a, t.start_time), max(b, t.start_time + t.elapsed))
    pauses = set()
    for (step, k), (start, _) in spans.items():
        before = [(end, key) for key, (a, end) in spans.items() if a < start and key != (step, k)]
        if k == 0 or not before:
            continue
        end, (other, other_k) = max(before)
        if end < start and (order[other] >= order[step] or other_k < k):
            pauses.add((end, start))
    return sorted(pauses)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _timeline(
    view: RunView, clock: _Clock
) -> tuple[list[plots.Bar], list[str], float, list[float], list[float]]:
    tries = [(s.name, t) for s in view.steps for t in s.tries]
    ends = [t.start_time + t.elapsed for _, t in tries if t.start_time > 0]
    span = max(clock.at(max(ends)) if ends else 0.0, 1e-3)
    # a try lost with its worker has no start: shown where the mini-batch was tried next
    next_start: dict[tuple[str, int], list[float]] = {}
    for step, t in tries:
        if t.start_time > 0:
            next_start.setdefault((step, t.mb), []).append(clock.at(t.start_time))
    bars: list[plots.Bar] = []
    ends_ok: list[float] = []
    ends_failed: list[float] = []
    lost_lane = "(lost with its worker)"
    for step, t in tries:
        if t.start_time > 0:
            start = clock.at(t.start_time)
            length = clock.at(t.start_time + t.elapsed) - start
            lane = f"{t.node}/{t.process}" if t.node or t.process else lost_lane
        else:
            later = next_start.get((step, t.mb), [])
            start, length, lane = (min(later) if later else span), 0.0, lost_lane
        bars.append(plots.Bar(lane, start, length, t.status, t.try_no > 1, _try_title(step, t)))
        (ends_ok if t.ok else ends_failed).append(start + length)
    lanes = sorted({b.lane for b in bars}, key=lambda lane: (lane == lost_lane, lane))
    return bars, lanes, span, ends_ok, ends_failed


def _slowest(view: RunView) -> list[dict[str, str]]:
    per_mb: dict[tuple[str, int], list[TryRecord]] = {}
    for s in view.steps:
        for t in s.tries:
            per_mb.setdefault((s.name, t.mb), []).append(t)
    states = {(s.name, mb): st for s in view.steps for mb, st in s.states.items()}
    steps = {s.name: s for s in view.steps}
    ranked = sorted(per_mb.items(), key=lambda kv: -sum(t.elapsed for t in kv[1]))
    out = []
    for (step, mb), tries in ranked[:_SLOWEST]:
        last = tries[-1]
        timeout = steps[step].settings.get("timeout")
        items = last.total if last.total is not None else steps[step].planned.get(mb)
        out.append(
            {
                "step": step,
                "mini-batch": str(mb),
                "state": states.get((step, mb), "PENDING"),
                "tries": str(len(tries)),
                "seconds (all tries)": f"{sum(t.elapsed for t in tries):.2f}",
                "run() seconds": f"{sum(_ran(t, timeout) for t in tries):.2f}",
                "items": "" if items is None else str(items),
                "last process": f"{last.node}/{last.process}" if last.node else "-",
            }
        )
    return out


def _samples(values: list[float | None]) -> int:
    return sum(1 for v in values if v is not None)


def _monitor_interval(view: RunView) -> float | None:
    """``--resource_monitor_interval`` of the run's parallel steps (the largest), or None."""
    values = []
    for s in view.steps:
        try:
            values.append(float(s.settings["resource_monitor_interval"]))
        except (KeyError, TypeError, ValueError):
            continue
    return max(values) if values else None


_Curves = tuple[list[float], list[float | None], list[float | None], list[float | None]]


def _measured(p: PerfSeries, interval: float | None, clock: _Clock) -> _Curves:
    """(times on the report's axis, node CPU %, process CPU %, process RSS MB) of a
    process's samples, None where a sample measured nothing: psutil gives 0.0 on its first
    look (at a process, or in a worker process), so the first sample of each run of the
    monitor (the file's first line; one taken after a pause between sessions, or not one
    interval after the line before: a new slot's monitor writing to the same file) has no CPU
    figure, nor has a process's first sample (the child was replaced, or not started yet).
    Where the monitor started again, a point without values breaks the curves."""
    times: list[float] = []
    node: list[float | None] = []
    proc: list[float | None] = []
    rss: list[float | None] = []
    for i, t in enumerate(p.times):
        goes_on = i > 0 and not clock.paused_between(p.times[i - 1], t)
        if goes_on and interval is not None and interval > 0:
            gap = t - p.times[i - 1]  # the file's times are whole seconds
            goes_on = interval - 1 <= gap <= 1.5 * interval + 1
        if i > 0 and not goes_on:
            for values in (node, proc, rss):
                values.append(None)
            times.append(clock.at(t))
        pid = p.pids[i] if i < len(p.pids) else None
        same = goes_on and pid is not None and p.pids[i - 1] == pid
        times.append(clock.at(t))
        node.append(p.node_cpu[i] if goes_on else None)
        proc.append(p.proc_cpu[i] if same else None)
        rss.append(p.proc_rss_mb[i])
    return times, node, proc, rss


def _perf(view: RunView, clock: _Clock) -> tuple[list, dict]:
    series = []
    nodes: dict[str, tuple[list[float], list[float | None]]] = {}
    interval = _monitor_interval(view)
    for p in view.perf:
        times, node_cpu, proc_cpu, rss = _measured(p, interval, clock)
        # a curve needs two samples; a run shorter than the interval has one at most
        if _samples(proc_cpu) >= 2 or _samples(rss) >= 2:
            series.append((f"{p.node}/{p.process}", times, proc_cpu, rss))
        if p.node not in nodes and _samples(node_cpu) >= 2:
            nodes[p.node] = (times, node_cpu)
    return series, nodes


def _resources_note(view: RunView) -> str:
    interval = _monitor_interval(view)
    if interval is not None and interval <= 0 and not view.perf:
        return "not sampled: the resource monitor was off (--resource_monitor_interval 0)"
    every = f"every {interval:g} s" if interval else "every --resource_monitor_interval seconds"
    return (
        "not sampled: the resource monitor took fewer than two samples of any process that "
        f"measured something (it samples {every}, and its first look at a process measures no "
        "CPU yet; --resource_monitor_interval sets the interval, 0 turns it off)"
    )


def build_report(view: RunView, now: float | None = None) -> ReportData:
    """The report's content from a run directory's view (pure)."""
    all_tries = [t for s in view.steps for t in s.tries]
    origin = min((t.start_time for t in all_tries if t.start_time > 0), default=view.created)
    pauses = _pauses(view)
    clock = _Clock(origin, tuple(pauses))
    bars, lanes, span, ends_ok, ends_failed = _timeline(view, clock)
    parallel = [s for s in view.steps if s.kind == "parallel"]
    total = sum(s.total for s in parallel)
    done = sum(s.count("DONE") for s in parallel)
    retries = sum(1 for t in all_tries if t.try_no > 1)
    uncounted = sum(s.uncounted_failed for s in parallel)
    facts = [
        ("mini-batches", f"{done} of {total} done"),
        ("failed", str(sum(s.count("FAILED") for s in parallel))),
        ("cancelled", str(sum(s.count("CANCELLED") for s in parallel))),
        ("not finished", str(sum(s.pending for s in parallel))),
        ("items ok", f"{sum(s.succeeded_items for s in parallel):,}"),
        (
            "items failed"
            + (f" (+ {uncounted} failed mini-batch(es) never counted)" if uncounted else ""),
            f"{sum(s.failed_items for s in parallel):,}",
        ),
        ("tries", f"{len(all_tries)} ({retries} retries)"),
        (
            "busy span" + (" (pauses cut out)" if pauses else ""),
            f"{span:.1f} s" if all_tries else "-",
        ),
        ("mini-batches / s", f"{done / span:.2f}" if all_tries else "-"),
    ]
    if pauses:
        paused = sum(b - a for a, b in pauses)
        facts.append((f"paused between sessions ({len(pauses)})", _duration(paused)))
    fails = failures(view)
    shown = []
    for f in fails[:_FAILURES]:
        error = f.error.strip()
        shown.append(
            {
                "step": f.step,
                "id": str(f.id),
                "status": f.status,
                "tries": str(f.tries),
                "error": error.splitlines()[-1] if error else "",
                "inputs": inputs_text(f.inputs, most=5),
                "traceback": f.traceback,
            }
        )
    series, nodes = _perf(view, clock)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now or time.time()))
    return ReportData(
        title=f"daskprs {'map_batches' if view.map_batches else 'run'} {view.name}",
        state=view.state,
        failure=view.failure,
        failure_details=view.failure_details,
        next_command=next_command(view),
        facts=facts,
        budgets=[row for s in parallel for row in _budgets(s)],
        bars=bars,
        lanes=lanes,
        span=span,
        ends_ok=ends_ok,
        ends_failed=ends_failed,
        slowest=_slowest(view),
        failures=shown,
        more_failures=max(0, len(fails) - _FAILURES),
        perf=series,
        node_cpu=nodes,
        generated=f"{view.root} · job {view.job_file or '(map_batches)'} · written {stamp}",
        pauses=[(clock.at(a), f"paused {_duration(b - a)}") for a, b in pauses],
        resources_note="" if series or nodes else _resources_note(view),
        short_returns=[
            {"step": s.name, "mini-batch": str(mb), "failed items": str(r.failed), "why": r.warning}
            for s in view.steps
            for mb, r in s.short_returns
        ][:_FAILURES],
    )


_CSS = """
:root { --ink:#1e293b; --muted:#64748b; --line:#e2e8f0; --card:#f8fafc; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  color: var(--ink); margin: 0; background: #fff; }
header { padding: 22px 32px 18px; border-bottom: 1px solid var(--line); background: var(--card); }
h1 { font-size: 22px; margin: 0 0 4px; display: flex; align-items: center; gap: 12px; }
h2 { font-size: 17px; margin: 30px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid var(--line); }
main { padding: 4px 32px 40px; max-width: 1240px; }
.badge { font-size: 13px; padding: 3px 10px; border-radius: 999px; color: #fff;
  text-transform: uppercase; letter-spacing: .04em; }
.succeeded { background: #2e9e5b; } .failed { background: #d64545; }
.running { background: #1d4ed8; } .interrupted, .incomplete { background: #f08c00; }
.sub { color: var(--muted); font-size: 12px; word-break: break-all; }
.failure { margin-top: 8px; color: #b42318; } .failure ul { margin: 4px 0 0; padding-left: 20px; }
.next { margin-top: 6px; } code { background: #eef2f7; padding: 1px 5px; border-radius: 4px; }
.facts { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 10px;
  margin: 18px 0 6px; }
.fact { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 8px 12px; min-width: 0; overflow-wrap: anywhere; }
.fact b { display: block; font-size: 16px; } .fact span { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--card); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figure svg { width: 100%; height: auto; }
details pre { background: #0f172a; color: #e2e8f0; padding: 8px 10px; border-radius: 6px;
  overflow-x: auto; font-size: 12px; margin: 6px 0 0; }
.empty { color: var(--muted); font-style: italic; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(rows: list[dict[str, str]], numeric: tuple[str, ...] = ()) -> str:
    if not rows:
        return '<p class="empty">none</p>'
    head = "".join(f"<th>{_e(k)}</th>" for k in rows[0])
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_e(v)}</td>' if k in numeric else f"<td>{_e(v)}</td>"
            for k, v in r.items()
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _short_returns_html(data: ReportData) -> str:
    if not data.short_returns:
        return ""
    return (
        "<h3>Done with failed items</h3><p class='sub'>the rows or items run() did not return "
        "count as failed items</p>"
        + _table(data.short_returns, numeric=("mini-batch", "failed items"))
    )


def _failures_html(data: ReportData) -> str:
    if not data.failures:
        return '<p class="empty">no failed or cancelled mini-batch</p>'
    rows = []
    for f in data.failures:
        tb = (
            f"<details><summary>traceback</summary><pre>{_e(f['traceback'])}</pre></details>"
            if f["traceback"]
            else ""
        )
        rows.append(
            f"<tr><td>{_e(f['step'])}</td><td class='num'>{_e(f['id'])}</td>"
            f"<td>{_e(f['status'])}</td><td class='num'>{_e(f['tries'])}</td>"
            f"<td>{_e(f['error'])}{tb}</td><td>{_e(f['inputs'])}</td></tr>"
        )
    more = (
        f"<p class='sub'>... and {data.more_failures} more in failed_mini_batches.jsonl</p>"
        if data.more_failures
        else ""
    )
    return (
        "<table><thead><tr><th>step</th><th>mini-batch</th><th>status</th><th>tries</th>"
        "<th>error</th><th>inputs</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + more
    )


_NUMERIC = ("mini-batch", "tries", "seconds (all tries)", "run() seconds", "items")

# The heading a budget's message ends with before the list of the mini-batches it names.
_LIST_HEADING = re.compile(r"[.:;]?\s*Failed mini-batches:\s*$")


def _failure_html(failure: str | None, details: list[str]) -> str:
    """The failure's message, with the failed mini-batches it names as a list; a heading
    whose list was not written is left out."""
    if not failure:
        return ""
    if not details:
        head = _LIST_HEADING.sub("", failure)
        return f'<div class="failure">{_e(head)}</div>'
    items = "".join(f"<li>{_e(d)}</li>" for d in details)
    return f'<div class="failure">{_e(failure)}<ul>{items}</ul></div>'


def render_html(data: ReportData) -> str:
    """The report page: one string of HTML with everything inline."""
    facts = "".join(
        f'<div class="fact"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for k, v in data.facts
    )
    failure = _failure_html(data.failure, data.failure_details)
    next_line = (
        f'<div class="next">next: <code>{_e(data.next_command)}</code></div>'
        if data.next_command
        else ""
    )
    if data.bars:
        timeline = plots.timeline_svg(data.bars, data.lanes, data.span, data.pauses)
        throughput = plots.throughput_svg(data.ends_ok, data.ends_failed, data.span, data.pauses)
    else:
        timeline = throughput = '<p class="empty">no try has ended yet</p>'
    resources = (
        plots.resources_svg(data.perf, data.node_cpu, data.pauses)
        if data.perf or data.node_cpu
        else f'<p class="empty">{_e(data.resources_note or "not sampled")}</p>'
    )
    pause_note = (
        f" The {len(data.pauses)} pause(s) between sessions (an interrupt, then a resume) are "
        "cut out of the time axes and marked with a dashed line; rates leave them out."
        if data.pauses
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(data.title)}</title>
<style>{_CSS}</style></head>
<body>
<header>
<h1>{_e(data.title)} <span class="badge {_e(data.state)}">{_e(data.state)}</span></h1>
<div class="sub">{_e(data.generated)}</div>
{failure}{next_line}
<div class="facts">{facts}</div>
</header>
<main>
<h2>Budgets</h2>
{_table(data.budgets)}
<h2>Timeline of tries per process</h2>
<p class="sub">One box a try ({len(data.bars)} tries), coloured by its outcome; retries are
outlined, timeouts hatched. Hover a box for the mini-batch, try and error.{pause_note}</p>
<div class="figure" id="timeline">{timeline}</div>
<h2>Throughput</h2>
<div class="figure" id="throughput">{throughput}</div>
<h2>Slowest mini-batches</h2>
{_table(data.slowest, numeric=_NUMERIC)}
<h2>Failures</h2>
{_failures_html(data)}
{_short_returns_html(data)}
<h2>Resources</h2>
<div class="figure" id="resources">{resources}</div>
</main>
</body></html>
"""


def write_report(view: RunView, path: str) -> None:
    """Write the report of ``view`` to ``path`` (replaced atomically).

    Raises
    ------
    OSError
        ``path`` cannot be written (a read-only filesystem, missing permissions, a full
        disk); no temporary file is left beside it.
    """
    text = render_html(build_report(view))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    replace_file(path, text)
