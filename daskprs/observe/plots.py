"""The report's plots, drawn with matplotlib and returned as inline SVG text (pure: values in,
a string out; no file, no pyplot state).

Each try of the timeline is its own SVG group ``id="try-<n>"`` with a ``<title>`` (a tooltip
in the browser), so the page can be checked for every try and read by hovering.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

__all__ = ["STATUS_COLOURS", "Bar", "resources_svg", "throughput_svg", "timeline_svg"]

STATUS_COLOURS = {
    "RUN_DONE": "#2e9e5b",
    "EMPTY": "#9aa5b1",
    "RUN_EXCEPTION": "#d64545",
    "WRONG_RETURN": "#e0707a",
    "RUN_TIMEOUT": "#f08c00",
    "PROCESS_DIED": "#7b4fd6",
    "LOAD_ERROR": "#a0522d",
    "LOAD_TIMEOUT": "#c9822f",
    "INIT_FAILED": "#8b1e3f",
}
_OTHER = "#607080"
_TEXT = "#334155"


@dataclass(frozen=True)
class Bar:
    """One try on the timeline: its lane (``node/process``), start and length in seconds from
    the run's first try, status, and a tooltip. ``retry``: not the mini-batch's first try."""

    lane: str
    start: float
    length: float
    status: str
    retry: bool
    title: str


def _rc() -> dict[RcKeyType, Any]:
    return {
        "svg.fonttype": "none",  # text stays text: smaller, crisp, selectable
        "svg.hashsalt": "daskprs",  # stable ids: the same run gives the same page
        "font.family": ["DejaVu Sans", "sans-serif"],
        "font.size": 9,
        "axes.edgecolor": "#cbd5e1",
        "axes.labelcolor": _TEXT,
        "xtick.color": _TEXT,
        "ytick.color": _TEXT,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }


def _svg(fig: Figure, titles: Mapping[str, str] | None = None) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg") :]  # inline: no XML prolog or doctype
    if titles:

        def add_title(m: re.Match[str]) -> str:
            title = titles.get(m.group(1), "")
            return f"{m.group(0)}<title>{_escape(title)}</title>"

        text = re.sub(r'<g id="(try-\d+)">', add_title, text)
    return text


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# (where on the time axis, a label): the pauses between sessions, cut out of the axis
Pauses = Sequence[tuple[float, str]]


def _mark_pauses(ax: Any, pauses: Pauses, label: bool = True) -> None:
    """A dashed line where each pause between sessions was cut out of the time axis, named
    at the top of the chart (each its own SVG group ``id="pause-<n>"``)."""
    for n, (x, text) in enumerate(pauses):
        line = ax.axvline(x, color="#64748b", linestyle=(0, (4, 3)), linewidth=1.1, zorder=4)
        line.set_gid(f"pause-{n}")
        if label:
            ax.annotate(
                text,
                xy=(x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(-3, -3),
                textcoords="offset points",
                rotation=90,
                ha="right",
                va="top",
                fontsize=8,
                color="#475569",
            )


def _time_label(pauses: Pauses) -> str:
    if pauses:
        return "seconds since the first try started (pauses between sessions cut out)"
    return "seconds since the first try started"


def timeline_svg(
    bars: Sequence[Bar], lanes: Sequence[str], span: float, pauses: Pauses = ()
) -> str:
    """A Gantt-like chart: one row a process, one box a try, coloured by status; retries
    outlined in black, timeouts hatched; the pauses between sessions marked."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    with matplotlib.rc_context(_rc()):
        height = 1.2 + 0.32 * max(1, len(lanes))
        fig = Figure(figsize=(11, min(height, 14)))
        ax = fig.add_subplot()
        row = {lane: i for i, lane in enumerate(lanes)}
        span = max(span, 1e-3)
        titles = {}
        for n, bar in enumerate(bars):
            ok = bar.status in ("RUN_DONE", "EMPTY")
            # a try shorter than a pixel still shows, a failed one a little wider
            width = max(bar.length, span / (150 if ok else 90))
            box = Rectangle(
                (bar.start, row[bar.lane] - 0.38),
                width,
                0.76,
                facecolor=STATUS_COLOURS.get(bar.status, _OTHER),
                edgecolor="#111111" if bar.retry else "white",
                linewidth=0.9 if bar.retry else 0.4,
                hatch="////" if bar.status.endswith("TIMEOUT") else None,
                zorder=2 if ok else 3,  # failures drawn over their neighbours
            )
            box.set_gid(f"try-{n}")
            titles[f"try-{n}"] = bar.title
            ax.add_patch(box)
        ax.set_xlim(0, span * 1.01)
        ax.set_ylim(len(lanes) - 0.5, -0.5)
        ax.set_yticks(range(len(lanes)), labels=list(lanes))
        ax.set_xlabel(_time_label(pauses))
        _mark_pauses(ax, pauses)
        ax.grid(axis="x", color="#e2e8f0", linewidth=0.6)
        ax.set_axisbelow(True)
        seen = sorted({b.status for b in bars}, key=lambda s: (s != "RUN_DONE", s))
        handles = [
            Patch(
                facecolor=STATUS_COLOURS.get(s, _OTHER),
                hatch="////" if s.endswith("TIMEOUT") else None,
                label=s,
            )
            for s in seen
        ]
        if any(b.retry for b in bars):
            handles.append(
                Patch(facecolor="white", edgecolor="#111111", linewidth=0.9, label="a retry")
            )
        ax.legend(
            handles=handles,
            loc="lower left",
            bbox_to_anchor=(0, 1.0),
            ncol=min(len(handles), 7),
            frameon=False,
        )
        return _svg(fig, titles)


def _nice_bin(span: float, bins: int = 40) -> float:
    raw = max(span / bins, 1e-3)
    exp = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * exp:
            return step * exp
    return 10 * exp


def throughput_svg(
    ends_ok: Sequence[float], ends_failed: Sequence[float], span: float, pauses: Pauses = ()
) -> str:
    """Tries finished per second over time (stacked: succeeded, failed), and the cumulative
    count of finished tries. Times are on the axis with the pauses between sessions cut out,
    so no bin counts a pause as time without a finished try. The legend sits above the
    chart (``id="throughput-legend"``), clear of the bars (``id="bar-ok-<n>"``,
    ``id="bar-failed-<n>"``)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(11, 3.2))
        ax = fig.add_subplot()
        width = _nice_bin(span)
        n = max(1, math.ceil(max(span, width) / width))
        ok = [0] * n
        bad = [0] * n
        for t in ends_ok:
            ok[min(n - 1, int(t // width))] += 1
        for t in ends_failed:
            bad[min(n - 1, int(t // width))] += 1
        left = [i * width for i in range(n)]
        succeeded = ax.bar(
            left,
            [c / width for c in ok],
            width=width * 0.92,
            align="edge",
            color=STATUS_COLOURS["RUN_DONE"],
            label="succeeded tries / s",
        )
        failed = ax.bar(
            left,
            [c / width for c in bad],
            bottom=[c / width for c in ok],
            width=width * 0.92,
            align="edge",
            color=STATUS_COLOURS["RUN_EXCEPTION"],
            label="failed tries / s",
        )
        for kind, container in (("ok", succeeded), ("failed", failed)):
            for i, patch in enumerate(container.patches):
                patch.set_gid(f"bar-{kind}-{i}")
        ax.set_ylabel("tries finished per second")
        ax.set_xlabel(f"{_time_label(pauses)} (bins of {width:g} s)")
        _mark_pauses(ax, pauses)
        ax.grid(axis="y", color="#e2e8f0", linewidth=0.6)
        ax.set_axisbelow(True)
        cumulative = ax.twinx()
        ends = sorted([*ends_ok, *ends_failed])
        cumulative.step(
            [0.0, *ends],
            range(len(ends) + 1),
            where="post",
            color="#1d4ed8",
            linewidth=1.4,
            label="finished tries (total)",
        )
        cumulative.set_ylabel("finished tries (total)", color="#1d4ed8")
        cumulative.spines["right"].set_visible(True)
        cumulative.set_ylim(0, max(1, len(ends)) * 1.05)
        ax.set_xlim(0, n * width * 1.01)  # the last bin whole
        lines, labels = ax.get_legend_handles_labels()
        lines2, labels2 = cumulative.get_legend_handles_labels()
        # above the chart, never over its bars
        legend = ax.legend(
            lines + lines2,
            labels + labels2,
            loc="lower left",
            bbox_to_anchor=(0, 1.0),
            ncol=3,
            frameon=False,
        )
        legend.set_gid("throughput-legend")
        return _svg(fig)


def resources_svg(
    series: Sequence[tuple[str, Sequence[float], Sequence[float | None], Sequence[float | None]]],
    node_cpu: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    pauses: Pauses = (),
) -> str:
    """The resource monitor's curves: CPU % (each process, each node dashed) and each
    process's resident memory. A chart is drawn only with a curve of two samples or more
    (``id="cpu-chart"``, ``id="memory-chart"``); a sample without a value (None) is a gap.

    ``series``: (label, times, process CPU %, process RSS MB) per process; ``node_cpu``: per
    node, (times, node CPU %). Times are seconds since the first try started, pauses cut out.
    """
    import matplotlib
    from matplotlib.figure import Figure

    def drawn(values: Sequence[float | None]) -> bool:
        return sum(1 for v in values if v is not None) >= 2

    def nan(values: Sequence[float | None]) -> list[float]:
        return [float("nan") if v is None else v for v in values]

    cpu_lines = [(i, s) for i, s in enumerate(series) if drawn(s[2])]
    mem_lines = [(i, s) for i, s in enumerate(series) if drawn(s[3])]
    nodes = {node: v for node, v in node_cpu.items() if drawn(v[1])}
    charts = (["cpu"] if cpu_lines or nodes else []) + (["memory"] if mem_lines else [])
    if not charts:
        return ""
    with matplotlib.rc_context(_rc()):
        fig = Figure(figsize=(11 if len(charts) == 2 else 7, 3.4))
        axes = dict(zip(charts, fig.subplots(1, len(charts), squeeze=False)[0], strict=True))
        if "cpu" in axes:
            cpu = axes["cpu"]
            cpu.set_gid("cpu-chart")
            for i, (label, times, proc_cpu, _) in cpu_lines:
                cpu.plot(times, nan(proc_cpu), color=f"C{i % 10}", marker=".", ms=3, label=label)
            for node, (times, values) in nodes.items():
                cpu.plot(
                    times,
                    nan(values),
                    linestyle="--",
                    marker=".",
                    ms=3,
                    color="#64748b",
                    label=f"{node} (whole node)",
                )
            cpu.set_title("CPU %", color=_TEXT, loc="left")
            cpu.legend(frameon=False, fontsize=8)
        if "memory" in axes:
            mem = axes["memory"]
            mem.set_gid("memory-chart")
            for i, (label, times, _, rss) in mem_lines:
                mem.plot(times, nan(rss), color=f"C{i % 10}", marker=".", ms=3, label=label)
            mem.set_title("resident memory of each process (MB)", color=_TEXT, loc="left")
        for ax in axes.values():
            ax.set_xlabel(_time_label(pauses))
            _mark_pauses(ax, pauses, label=False)
            ax.grid(color="#e2e8f0", linewidth=0.6)
            ax.set_axisbelow(True)
        fig.tight_layout()
        return _svg(fig)
