"""The report's figures are the ledger's: no CPU line from samples that measured nothing, a
try killed at its timeout counted with the time it ran, failed items by the one rule (with the
plan's row counts), pauses between sessions cut out of the rates, whole cards and no dangling
heading. Run directories written by hand (sessionruns.py)."""

from __future__ import annotations

import re

from rundirs import SETTINGS
from sessionruns import done, perf_file, timed_out, write_run

from daskprs.execute.resume import Mode, session_of
from daskprs.inputs.planfile import read_plan
from daskprs.observe.report import build_report, render_html
from daskprs.observe.runview import read_run
from daskprs.observe.status import format_status
from daskprs.results.ledger import read_ledger


def facts(data) -> dict[str, str]:
    return dict(data.facts)


def budget(data, setting: str) -> str:
    return next(b["used"] for b in data.budgets if b["setting"] == setting)


# -- 1. the resource monitor -------------------------------------------------------------------


def two_sessions(tmp_path, settings):
    return write_run(
        tmp_path / "r",
        {"score": [[(done(0, 0.0), "DONE")], [(done(1, 3600.0), "DONE")]]},
        batches={"score": 2},
        settings=settings,
        result=["outcome: succeeded"],
    )


def test_samples_that_measured_nothing_draw_no_cpu_line(tmp_path):
    """At the default interval (600 s) each session's monitor looked once, when its slot
    started: psutil's first look is a meaningless 0.0, and no child ran yet. Two sessions
    gave each file two such lines: no chart, not a flat 0 % line and an empty memory chart."""
    root = two_sessions(tmp_path, {**SETTINGS, "resource_monitor_interval": 600.0})
    for process in ("process000", "process001"):
        perf_file(root, process, [(-1, "0.0,5.8,1390.9,24.0,,,"), (3599, "0.0,5.9,1391.0,24.0,,,")])
    data = build_report(read_run(root))
    assert data.node_cpu == {} and data.perf == []
    page = render_html(data)
    assert "<svg" not in page.split('id="resources"')[1]
    assert "not sampled: the resource monitor took fewer than two samples" in page
    assert "every 600 s" in page


def test_a_monitor_that_was_off_says_so(tmp_path):
    root = two_sessions(tmp_path, {**SETTINGS, "resource_monitor_interval": 0.0})
    page = render_html(build_report(read_run(root)))
    assert "not sampled: the resource monitor was off (--resource_monitor_interval 0)" in page


def test_cpu_figures_start_with_the_second_look_at_a_process(tmp_path):
    root = two_sessions(tmp_path, {**SETTINGS, "resource_monitor_interval": 1.0})
    perf_file(
        root,
        "process000",
        [
            (0, "0.0,5.0,1000.0,24.0,,,"),  # the monitor's first look; no child yet
            (1, "40.0,5.0,1000.0,24.0,123,0.0,100.0"),  # the child's first look
            (2, "50.0,5.0,1000.0,24.0,123,90.0,101.0"),
            (3, "60.0,5.0,1000.0,24.0,124,0.0,50.0"),  # a new child (the last was killed)
            (3601, "0.0,5.0,1000.0,24.0,,,"),  # the next session's monitor: a first look
            (3602, "30.0,5.0,1000.0,24.0,125,0.0,60.0"),
        ],
    )
    data = build_report(read_run(root))
    [(label, times, proc_cpu, rss)] = data.perf
    assert label == "node000/process000"
    # where the next session's monitor started, a point without values breaks the curves
    assert proc_cpu == [None, None, 90.0, None, None, None, None]
    assert rss == [None, 100.0, 101.0, 50.0, None, None, 60.0]
    assert data.node_cpu["node000"][1] == [None, 40.0, 50.0, 60.0, None, None, 30.0]
    assert times[4] == times[5]
    # the pause between the sessions is cut out of the time axis
    assert times[-1] - times[3] < 10
    page = render_html(data)
    assert 'id="cpu-chart"' in page and 'id="memory-chart"' in page


def test_a_process_sampled_only_for_memory_draws_no_cpu_chart(tmp_path):
    root = two_sessions(tmp_path, {**SETTINGS, "resource_monitor_interval": 1.0})
    perf_file(
        root,
        "process000",
        [(0, ",5.0,1000.0,24.0,123,,100.0"), (1, ",5.0,1000.0,24.0,123,,101.0")],
    )
    page = render_html(build_report(read_run(root)))
    assert 'id="memory-chart"' in page
    assert 'id="cpu-chart"' not in page


# -- 2. a try killed at its timeout --------------------------------------------------------


def test_a_try_killed_at_its_timeout_counts_the_time_it_ran(tmp_path):
    root = write_run(
        tmp_path / "r",
        {"score": [[(done(0, 0.0, 0.03), "DONE"), (timed_out(1, 0.01, 5.31, rows=2), "FAILED")]]},
        batches={"score": 2},
        result=["outcome: succeeded"],
    )
    data = build_report(read_run(root))
    used = budget(data, "timeout")
    assert used.startswith("5.31 ")
    assert "mini-batch 1 try 1, RUN_TIMEOUT: killed" in used
    slowest = data.slowest[0]
    assert (slowest["mini-batch"], slowest["run() seconds"]) == ("1", "5.31")
    [title] = [b.title for b in data.bars if b.status == "RUN_TIMEOUT"]
    assert "(killed before run() reported its time)" in title


def test_a_timed_out_try_ran_at_least_its_timeout():
    from daskprs.observe.report import _ran

    # a record whose wall time is short of the timeout (a clock step): still the timeout
    assert _ran(timed_out(1, 0.0, 4.0), timeout=5.0) == 5.0
    assert _ran(timed_out(1, 0.0, 5.5), timeout=5.0) == 5.5
    assert _ran(done(0, 0.0, 2.0)) == 1.8  # what the child measured


# -- 3. failed items by the one rule -----------------------------------------------------------


def timed_out_table(tmp_path, plan_rows):
    """Three mini-batches of 20,000 rows; the second's try timed out without counting them."""
    tries = [
        (done(0, 0.0), "DONE"),
        (done(2, 1.0), "DONE"),
        (timed_out(1, 0.0, 5.2, rows=None), "FAILED"),
    ]
    return write_run(
        tmp_path / "r",
        {"score": [tries]},
        batches={"score": 3},
        result=["outcome: succeeded"],
        plan_rows={"score": plan_rows} if plan_rows else None,
    )


def test_failed_items_count_the_planned_rows_of_a_timed_out_mini_batch(tmp_path):
    root = timed_out_table(tmp_path, [20_000, 20_000, 20_000])
    # what the job counts (its summary, budgets and resume): the rule with the plan's counts
    plan = read_plan(str(root / "steps/score/plan.json"))
    ledger = read_ledger(str(root / "steps/score/ledger.jsonl"))
    prior = session_of(plan.batches, ledger, Mode.RESUME).prior.values()
    job_failed = sum(p.failed for p in prior)
    job_ok = sum(p.succeeded for p in prior)
    assert (job_ok, job_failed) == (40_000, 20_000)
    view = read_run(root)
    [step] = view.steps
    assert (step.succeeded_items, step.failed_items) == (job_ok, job_failed)
    data = build_report(view)
    assert facts(data)["items ok"] == "40,000"
    assert facts(data)["items failed"] == "20,000"
    assert budget(data, "error_threshold") == "20000"
    assert "40000/20000" in format_status(view)


def test_rows_nobody_counted_are_named_not_hidden(tmp_path):
    """Without a row count in the plan (a table cut by bytes) the job counts none for the
    timed-out mini-batch; the report shows the same figure and says what it lacks."""
    root = timed_out_table(tmp_path, None)
    data = build_report(read_run(root))
    assert facts(data)["items failed (+ 1 failed mini-batch(es) never counted)"] == "0"


# -- 4. pauses between sessions --------------------------------------------------------------


def test_a_pause_between_sessions_is_cut_out_of_the_rates_and_marked(tmp_path):
    session0 = [(done(0, 0.0), "DONE"), (done(1, 1.0), "DONE")]
    session1 = [(done(2, 7200.0), "DONE"), (done(3, 7201.0), "DONE")]  # resumed 2 h later
    root = write_run(
        tmp_path / "r",
        {"score": [session0, session1]},
        batches={"score": 4},
        result=["outcome: succeeded"],
    )
    data = build_report(read_run(root))
    f = facts(data)
    assert f["busy span (pauses cut out)"] == "4.0 s"
    assert f["mini-batches / s"] == "1.00"
    assert f["paused between sessions (1)"] == "2.0 h"
    assert data.pauses == [(2.0, "paused 2.0 h")]
    assert sorted(data.ends_ok) == [1.0, 2.0, 3.0, 4.0]
    assert budget(data, "progress_update_timeout") == "1.00"  # not the 7198 s pause
    page = render_html(data)
    for figure in ("timeline", "throughput"):
        section = page.split(f'id="{figure}"')[1].split("</div>")[0]
        assert '<g id="pause-0">' in section
    assert "paused 2.0 h" in page


def test_steps_one_after_the_other_are_no_pause(tmp_path):
    """Two steps of one session with time between them (the second planned, a command step):
    not a pause. A resume that reruns both pauses once, before the first."""
    first = {
        "a": [[(done(0, 0.0), "DONE")], [(done(1, 5000.0), "DONE")]],
        "score": [[(done(0, 600.0), "DONE")], [(done(1, 5600.0), "DONE")]],
    }
    root = write_run(tmp_path / "r", first, batches={"a": 2, "score": 2})
    data = build_report(read_run(root))
    assert [label for _, label in data.pauses] == ["paused 73 min"]  # 601 s to 5000 s
    assert facts(data)["busy span (pauses cut out)"] == f"{601.0 + 601.0:.1f} s"
    one_session = {"a": [[(done(0, 0.0), "DONE")]], "score": [[(done(0, 600.0), "DONE")]]}
    root = write_run(tmp_path / "r2", one_session, batches={"a": 1, "score": 1})
    data = build_report(read_run(root))
    assert data.pauses == []
    assert facts(data)["busy span"] == "601.0 s"


# -- 5. the page: whole cards, no dangling heading ---------------------------------------------


def test_items_have_a_card_each(tmp_path):
    tries = [(done(mb, mb * 0.5, rows=20_000), "DONE") for mb in range(6)]
    root = write_run(tmp_path / "r", {"score": [tries]}, batches={"score": 6})
    f = facts(build_report(read_run(root)))
    assert (f["items ok"], f["items failed"]) == ("120,000", "0")


FAILURE = (
    "failure: step score: 4 mini-batches failed, over mini_batch_error_threshold (3) by 1. "
    "Failed mini-batches:"
)


def test_the_failed_mini_batches_a_failure_names_are_listed(tmp_path):
    details = [f"  mini-batch {mb}: ValueError: mini-batch {mb} is bad" for mb in (1, 2, 4, 5)]
    root = write_run(
        tmp_path / "r",
        {"score": [[(done(0, 0.0), "DONE")]]},
        batches={"score": 6},
        result=["outcome: FAILED", FAILURE, *details, "look first at: failed_mini_batches.jsonl"],
    )
    view = read_run(root)
    assert view.failure_details == [d.strip() for d in details]
    page = render_html(build_report(view))
    listed = re.findall(r"<li>(mini-batch \d: [^<]*)</li>", page)
    assert listed == [d.strip() for d in details]


def test_a_failure_heading_without_its_list_is_left_out(tmp_path):
    root = write_run(
        tmp_path / "r",
        {"score": [[(done(0, 0.0), "DONE")]]},
        batches={"score": 6},
        result=["outcome: FAILED", FAILURE],
    )
    page = render_html(build_report(read_run(root)))
    failure = re.search(r'<div class="failure">(.*?)</div>', page, re.S).group(1)
    assert failure == "step score: 4 mini-batches failed, over mini_batch_error_threshold (3) by 1"
