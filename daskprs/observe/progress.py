"""Live progress of a step, fed from the supervisor's counts (never from guesses).

The runner calls one :class:`Progress` sink, chosen once by :func:`choose_progress`:

- :class:`PlainProgress`: one line every few seconds (stderr not a terminal: CI, log files);
- :class:`RichProgress`: a ``rich`` progress bar in a terminal, redrawn several times a second
  (its clock keeps running while a mini-batch hangs: the display never freezes);
- :class:`NotebookProgress`: an HTML display updated in place in Jupyter, ending at 100 %.

:func:`figures` (pure) computes what all three show: finished, done, failed, running,
items, rate and ETA.
"""

from __future__ import annotations

import html
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:  # rich is imported when a terminal shows the progress
    from rich.console import RenderableType

__all__ = [
    "NotebookProgress",
    "PlainProgress",
    "Progress",
    "RichProgress",
    "choose_progress",
    "figures",
    "progress_html",
]


class Progress(Protocol):
    """What the runner calls: ``start`` once a step with the counts it starts from (a resumed
    step starts with mini-batches finished in earlier sessions) and the cluster's worker
    slots, ``update`` as often as it likes (the sink throttles), ``finish`` once at the end
    (also when interrupted)."""

    def start(self, step: str, first: Mapping[str, int], slots: int | None = None) -> None: ...

    def update(self, summary: Mapping[str, int], elapsed: float) -> None: ...

    def finish(self, summary: Mapping[str, int], elapsed: float) -> None: ...


def _finished(summary: Mapping[str, int]) -> int:
    return summary["done"] + summary["failed"] + summary["cancelled"]


def _processed(summary: Mapping[str, int]) -> int:
    """Mini-batches that ran to their end (a cancelled one did not run)."""
    return summary["done"] + summary["failed"]


def figures(
    summary: Mapping[str, int], elapsed: float, slots: int | None = None, before: int = 0
) -> dict[str, Any]:
    """What a progress display shows, from the supervisor's summary and the seconds since the
    step started. ``rate`` is mini-batches processed (done or failed: a cancelled one did not
    run) per second in this session (``before`` were processed in earlier ones); ``eta``
    seconds left (None until something finished).
    Of the tries in flight, at most ``slots`` (the cluster's worker slots) can be running;
    the others are ``queued`` on the cluster."""
    finished = _finished(summary)
    total = summary["total"]
    now = _processed(summary) - before
    rate = now / elapsed if elapsed > 0 and now > 0 else 0.0
    eta = 0.0 if finished >= total else (total - finished) / rate if rate > 0 else None
    return {
        "finished": finished,
        "total": total,
        "done": summary["done"],
        "failed": summary["failed"],
        "cancelled": summary["cancelled"],
        "running": min(summary["running"], slots) if slots else summary["running"],
        "queued": max(0, summary["running"] - slots) if slots else 0,
        "items_ok": summary["succeeded_items"],
        "items_failed": summary["failed_items"],
        # the bar shows what was done: cancelled mini-batches end the step but did not run
        "processed": summary["done"] + summary["failed"],
        "percent": 100.0 * (summary["done"] + summary["failed"]) / total if total else 100.0,
        "rate": rate,
        "eta": eta,
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class PlainProgress:
    """A line every ``every`` seconds and one at the end, through ``echo``."""

    def __init__(
        self,
        echo: Callable[[str], None],
        every: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.echo, self.every, self.clock = echo, every, clock
        self.step = ""
        self.slots: int | None = None
        self.before = 0
        self._last = 0.0

    def start(self, step: str, first: Mapping[str, int], slots: int | None = None) -> None:
        self.step = step
        self.slots, self.before = slots, _processed(first)
        self._last = self.clock()

    def update(self, summary: Mapping[str, int], elapsed: float) -> None:
        if self.clock() - self._last >= self.every:
            self._last = self.clock()
            self.echo(format_progress(self.step, summary, elapsed, self.slots, self.before))

    def finish(self, summary: Mapping[str, int], elapsed: float) -> None:
        self.echo(format_progress(self.step, summary, elapsed, self.slots, self.before))


def format_progress(
    step: str,
    summary: Mapping[str, int],
    elapsed: float,
    slots: int | None = None,
    before: int = 0,
) -> str:
    """A one-line progress report: the counts (tries in flight beyond the ``slots`` are
    queued, not running; cancelled ones when there are), items, elapsed time and an ETA
    from this session's rate (``before`` mini-batches were processed in earlier ones)."""
    f = figures(summary, elapsed, slots, before)
    counts = f"{f['done']} done, {f['failed']} failed"
    if f["cancelled"]:
        counts += f", {f['cancelled']} cancelled"
    counts += f", {f['running']} running"
    if f["queued"]:
        counts += f", {f['queued']} queued"
    eta = f", ETA {f['eta']:.0f} s" if f["eta"] and f["finished"] < f["total"] else ""
    return (
        f"[{step}] {f['processed']}/{f['total']} mini-batches processed ({counts}), "
        f"{f['items_ok']} items succeeded, {f['items_failed']} failed, {elapsed:.1f} s{eta}"
    )


def _rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.1f}" if rate >= 1 else f"{rate:.2f}"


def _two_line_progress() -> type:
    """A rich ``Progress`` drawing each task on two lines (bar and timing; then the counts),
    so that it fits an 80-column terminal."""
    from rich.progress import Progress
    from rich.text import Text

    class TwoLineProgress(Progress):
        def get_renderables(self) -> Iterator[RenderableType]:
            yield self.make_tasks_table(self.tasks)
            for task in self.tasks:
                yield Text.from_markup("  " + str(task.fields.get("counts", "")))

    return TwoLineProgress


class RichProgress:
    """A ``rich`` progress bar on a terminal: mini-batches finished of the total, rate,
    elapsed time and ETA; below it done / failed / running / queued and items. It stays on
    screen when the step ends."""

    def __init__(self, file: TextIO | None = None, width: int | None = None):
        self.file = file if file is not None else sys.stderr
        self.width = width
        self._progress: Any = None
        self._task: Any = None
        self.slots: int | None = None
        self.before = 0

    def start(self, step: str, first: Mapping[str, int], slots: int | None = None) -> None:
        from rich.console import Console
        from rich.markup import escape
        from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn

        self.slots, self.before = slots, _processed(first)
        console = Console(file=self.file, width=self.width)
        self._progress = _two_line_progress()(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("mini-batches"),
            TaskProgressColumn(),
            TextColumn("{task.fields[timing]}"),
            console=console,
            refresh_per_second=4,
        )
        self._task = self._progress.add_task(
            escape(f"[{step}]"), total=first["total"], counts="", timing=""
        )
        self._progress.update(self._task, **self._fields(first, 0.0))
        self._progress.start()

    def _fields(self, summary: Mapping[str, int], elapsed: float) -> dict[str, Any]:
        f = figures(summary, elapsed, self.slots, self.before)
        counts = f"[green]{f['done']} done[/]  [red]{f['failed']} failed[/]  "
        counts += f"[cyan]{f['running']} running[/]  {f['queued']} queued"
        if f["cancelled"]:
            counts += f"  [yellow]{f['cancelled']} cancelled[/]"
        counts += f" · {f['items_ok']} items ok, {f['items_failed']} failed"
        return {
            "completed": f["processed"],
            "counts": counts,
            "timing": f"{_rate(f['rate'])}/s  {_duration(elapsed)}  ETA {_duration(f['eta'])}",
        }

    def update(self, summary: Mapping[str, int], elapsed: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, **self._fields(summary, elapsed))

    def finish(self, summary: Mapping[str, int], elapsed: float) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, **self._fields(summary, elapsed))
        self._progress.stop()
        self._progress = None


def progress_html(
    step: str,
    summary: Mapping[str, int],
    elapsed: float,
    slots: int | None = None,
    before: int = 0,
) -> str:
    """The notebook display of a step's progress: a bar and the same figures as the
    terminal's (pure)."""
    f = figures(summary, elapsed, slots, before)
    colour = "#d64545" if f["failed"] or f["cancelled"] else "#2e9e5b"
    cancelled = f", {f['cancelled']} cancelled" if f["cancelled"] else ""
    return (
        '<div class="daskprs-progress" style="font-family:sans-serif;font-size:13px;'
        'margin:4px 0">'
        f"<b>{html.escape(step)}</b> "
        f'<span style="display:inline-block;width:260px;height:12px;background:#e2e8f0;'
        f'border-radius:6px;vertical-align:middle;overflow:hidden">'
        f'<span style="display:block;height:100%;width:{f["percent"]:.1f}%;'
        f'background:{colour}"></span></span> '
        f"<b>{f['percent']:.0f}%</b> {f['processed']}/{f['total']} mini-batches "
        f"({f['done']} done, {f['failed']} failed, {f['running']} running, "
        f"{f['queued']} queued{cancelled}); "
        f"{f['items_ok']} items ok, {f['items_failed']} failed; {_rate(f['rate'])}/s, "
        f"elapsed {_duration(elapsed)}, ETA {_duration(f['eta'])}"
        "</div>"
    )


class NotebookProgress:
    """An HTML display updated in place (``IPython.display`` with a display id), at most
    every ``every`` seconds and once at the end."""

    def __init__(self, every: float = 0.5, clock: Callable[[], float] = time.monotonic):
        self.every, self.clock = every, clock
        self.step = ""
        self.slots: int | None = None
        self.before = 0
        self._handle: Any = None
        self._last = 0.0

    def start(self, step: str, first: Mapping[str, int], slots: int | None = None) -> None:
        from IPython.display import HTML, display

        self.step, self.slots, self.before = step, slots, _processed(first)
        page = progress_html(step, first, 0.0, slots, self.before)
        self._handle = display(HTML(page), display_id=True)
        self._last = self.clock()

    def _show(self, summary: Mapping[str, int], elapsed: float) -> None:
        from IPython.display import HTML

        if self._handle is not None:
            page = progress_html(self.step, summary, elapsed, self.slots, self.before)
            self._handle.update(HTML(page))

    def update(self, summary: Mapping[str, int], elapsed: float) -> None:
        if self.clock() - self._last >= self.every:
            self._last = self.clock()
            self._show(summary, elapsed)

    def finish(self, summary: Mapping[str, int], elapsed: float) -> None:
        self._show(summary, elapsed)


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (not a terminal IPython)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except Exception:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def choose_progress(
    echo: Callable[[str], None] | None = None, stream: TextIO | None = None
) -> Progress:
    """The progress display for this process: the caller's ``echo`` gets plain lines; else a
    notebook display in Jupyter, a rich bar when ``stream`` (stderr) is a terminal, plain
    lines on ``stream`` otherwise."""
    stream = stream if stream is not None else sys.stderr
    if echo is not None:
        return PlainProgress(echo)
    if _in_notebook():
        return NotebookProgress()
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty() and os.environ.get("TERM", "") != "dumb":
        return RichProgress(stream)
    return PlainProgress(lambda line: print(line, file=stream, flush=True))
