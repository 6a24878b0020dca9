"""The progress displays, fed summaries by hand (the end-to-end displays are in
``test_progress_e2e.py``)."""

from __future__ import annotations

import io

from daskprs.observe.logs import format_progress_overview
from daskprs.observe.progress import (
    NotebookProgress,
    PlainProgress,
    RichProgress,
    choose_progress,
    figures,
    progress_html,
)


def summary(done=0, failed=0, cancelled=0, running=0, total=10, ok=0, bad=0):
    return {
        "total": total,
        "done": done,
        "failed": failed,
        "cancelled": cancelled,
        "running": running,
        "pending": total - done - failed - cancelled - running,
        "succeeded_items": ok,
        "failed_items": bad,
    }


def test_figures_rate_and_eta_from_the_counts():
    f = figures(summary(done=3, failed=1, running=2, ok=30, bad=10), elapsed=8.0)
    assert (f["finished"], f["percent"], f["rate"], f["eta"]) == (4, 40.0, 0.5, 12.0)
    assert figures(summary(), elapsed=3.0)["eta"] is None  # nothing finished: no guess
    # 5 tries in flight on 2 worker slots: 2 run, 3 wait on the cluster
    f = figures(summary(done=1, running=5), elapsed=1.0, slots=2)
    assert (f["running"], f["queued"]) == (2, 3)
    end = figures(summary(done=9, cancelled=1), elapsed=3.0)
    assert (end["percent"], end["eta"]) == (90.0, 0.0)  # the cancelled one did not run
    # an interrupt cancels what was left: the bar shows what was done, not 100 %
    stopped = figures(summary(done=6, failed=2, cancelled=22, total=30), elapsed=3.0)
    assert (stopped["processed"], stopped["percent"], stopped["eta"]) == (8, 100 * 8 / 30, 0.0)
    # a resumed step: 6 finished in earlier sessions, 2 in the 4 s of this one
    f = figures(summary(done=8), elapsed=4.0, before=6)
    assert (f["percent"], f["rate"], f["eta"]) == (80.0, 0.5, 4.0)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_plain_lines_every_few_seconds_and_at_the_end():
    lines: list[str] = []
    clock = Clock()
    plain = PlainProgress(lines.append, every=5.0, clock=clock)
    plain.start("score", summary())
    plain.update(summary(done=1), 1.0)
    clock.now += 4.9
    plain.update(summary(done=2), 4.9)
    assert lines == []
    clock.now += 0.2
    plain.update(summary(done=3, running=2), 5.1)
    assert lines == [
        "[score] 3/10 mini-batches processed (3 done, 0 failed, 2 running), 0 items succeeded, "
        "0 failed, 5.1 s, ETA 12 s"
    ]
    plain.finish(summary(done=10, ok=20), 9.0)
    assert lines[-1].startswith("[score] 10/10 mini-batches processed (10 done")


def test_rich_bar_shows_the_counts_and_ends_complete():
    out = io.StringIO()
    bar = RichProgress(out, width=80)
    bar.start("score", summary(), slots=2)
    bar.update(summary(done=4, failed=1, running=3, ok=8, bad=2), 2.0)
    bar.finish(summary(done=9, failed=1, ok=18, bad=2), 4.0)
    text = out.getvalue()
    assert "[score]" in text
    first, second = text.splitlines()[-2:]
    assert "10/10 mini-batches 100%" in first
    assert "2.5/s  0:04  ETA 0:00" in first
    assert second == "  9 done  1 failed  0 running  0 queued · 18 items ok, 2 failed"
    bar.finish(summary(), 5.0)  # a second finish (interrupted) does nothing


def test_notebook_html_bar():
    page = progress_html("score", summary(done=5, failed=1, running=2, ok=5, bad=1), 3.0)
    assert "width:60.0%" in page and "<b>60%</b>" in page
    assert "6/10 mini-batches (5 done, 1 failed, 2 running, 0 queued)" in page
    done = progress_html("score", summary(done=10, ok=10), 3.0)
    assert "<b>100%</b>" in done and "ETA 0:00" in done
    resumed = progress_html("score", summary(done=8, ok=8), 4.0, before=6)
    assert "0.50/s" in resumed and "ETA 0:04" in resumed


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_the_display_is_chosen_from_where_output_goes(monkeypatch):
    lines: list[str] = []
    assert isinstance(choose_progress(lines.append, Tty()), PlainProgress)  # the caller's echo
    assert isinstance(choose_progress(None, io.StringIO()), PlainProgress)  # a pipe, a log file
    monkeypatch.setenv("TERM", "xterm-256color")
    assert isinstance(choose_progress(None, Tty()), RichProgress)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(choose_progress(None, Tty()), PlainProgress)
    assert not isinstance(choose_progress(None, Tty()), NotebookProgress)  # no kernel here


def test_plain_lines_count_tries_beyond_the_slots_as_queued_and_say_cancelled():
    lines: list[str] = []
    plain = PlainProgress(lines.append, every=5.0)
    plain.start("score", summary(), slots=2)
    plain.finish(summary(done=3, running=8, cancelled=2), 5.0)
    assert "(3 done, 0 failed, 2 cancelled, 2 running, 6 queued)" in lines[-1]


def test_plain_lines_of_a_resumed_step_rate_this_session_only():
    # 6 mini-batches finished in earlier sessions, 2 in the 4 s of this one: 0.5/s, 4 s left
    # (counting the 6 too made it 2/s and 1 s left)
    lines: list[str] = []
    plain = PlainProgress(lines.append, every=5.0)
    plain.start("score", summary(done=6, ok=6))
    plain.finish(summary(done=8, running=2, ok=8), 4.0)
    assert lines[-1].endswith(", 4.0 s, ETA 4 s")


def test_the_progress_overview_file_shows_what_the_display_shows():
    resumed = format_progress_overview("score", summary(done=8, ok=8), 4.0, 0.1, before=6)
    assert "estimated seconds left: 4" in resumed.splitlines()
    # an interrupt cancelled 22: they were not processed; 5 tries in flight on 2 slots
    stopped = format_progress_overview(
        "score", summary(done=6, failed=2, cancelled=22, total=30), 3.0, 0.1
    ).splitlines()
    assert "mini-batches processed: 8" in stopped
    assert "mini-batches cancelled: 22" in stopped
    assert not [line for line in stopped if line.startswith("estimated")]
    running = format_progress_overview(
        "score", summary(done=2, running=5), 1.0, 0.1, slots=2
    ).splitlines()
    assert "mini-batches running: 2" in running and "mini-batches queued: 3" in running


def test_an_interrupt_does_not_count_the_cancelled_mini_batches_in_the_rate():
    # 9 ran in 10 s, then an interrupt cancelled the 31 left: 0.9/s, not 40 in 10 s
    stopped = summary(done=9, cancelled=31, total=40, ok=9)
    assert figures(stopped, elapsed=10.0)["rate"] == 0.9
    out = io.StringIO()
    bar = RichProgress(out, width=100)
    bar.start("score", summary(total=40), slots=2)
    bar.finish(stopped, 10.0)
    assert "0.90/s  0:10" in out.getvalue()
    page = progress_html("score", stopped, 10.0)
    assert "0.90/s" in page
