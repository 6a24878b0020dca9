"""The deadline clock of a try: phase lines in, deadline out; no processes, no clock."""

from __future__ import annotations

from daskprs.execute.deadlines import DeadlineClock, Deadlines, Phase
from daskprs.results.outcome import Status


def test_each_phase_gets_its_own_limit_from_its_start():
    clock = DeadlineClock(Deadlines(load=5, run=60, init=100))
    assert clock.phase == Phase.INIT and clock.deadline is None
    clock.feed(b"init 10.0\n")
    assert clock.deadline == 110.0
    clock.feed(b"load 12.5\nrun 13.0\n")  # several lines at once: the last one counts
    assert clock.phase == Phase.RUN and clock.deadline == 73.0


def test_a_line_split_across_reads_is_kept_until_complete():
    clock = DeadlineClock(Deadlines(load=5, run=60))
    clock.feed(b"lo")
    assert clock.phase == Phase.INIT
    clock.feed(b"ad 1.25")
    assert clock.phase == Phase.INIT
    clock.feed(b"\n")
    assert clock.phase == Phase.LOAD and clock.deadline == 6.25


def test_waits_never_pass_the_deadline():
    clock = DeadlineClock(Deadlines(load=5, run=2))
    assert clock.wait(now=0.0, poll=0.25) == 0.25  # no deadline yet
    clock.feed(b"run 10.0\n")
    assert abs(clock.wait(now=11.9, poll=0.25) - 0.1) < 1e-9
    assert clock.wait(now=13.0, poll=0.25) == 0.0
    assert not clock.expired(11.99) and clock.expired(12.0)


def test_no_limit_means_no_deadline():
    clock = DeadlineClock(Deadlines(load=None, run=None))
    clock.feed(b"run 1.0\n")
    assert clock.deadline is None and not clock.expired(1e12)


def test_a_timeout_is_reported_by_the_phase_it_happened_in():
    clock = DeadlineClock(Deadlines(load=5, run=2, init=7))
    clock.feed(b"init 0\n")
    status, error = clock.timeout()
    assert status == Status.INIT_FAILED and "init() took longer than the timeout of 7 s" in error
    clock.feed(b"load 1\n")
    assert clock.timeout()[0] == Status.LOAD_TIMEOUT
    clock.feed(b"run 2\n")
    status, error = clock.timeout()
    assert status == Status.RUN_TIMEOUT
    assert error.startswith("run() took longer than the timeout of 2 s; its process was killed")


def test_lines_that_are_not_the_childs_leave_the_phase_and_its_deadline():
    clock = DeadlineClock(Deadlines(load=5, run=60))
    clock.feed(b"run 13.0\n")
    clock.feed(b"junk\nrun soon\n\xff\xfe 1\n")  # an entry script wrote to the pipe
    assert clock.phase == Phase.RUN and clock.deadline == 73.0


def test_the_run_line_says_how_many_rows_run_was_given():
    clock = DeadlineClock(Deadlines(load=5, run=60))
    clock.feed(b"load 1.0\n")
    assert clock.items is None
    clock.feed(b"run 2.0 20000\n")
    assert (clock.phase, clock.deadline, clock.items) == (Phase.RUN, 62.0, 20000)


def test_an_init_begun_before_the_try_is_timed_from_the_try():
    """A process starts init() as it starts; the first try handed to it (at 50.0) gives the
    init() still running its whole limit from then, not from when init() began."""
    clock = DeadlineClock(Deadlines(load=5, run=60, init=100), since=50.0)
    clock.feed(b"init 10.0\n")
    assert clock.phase == Phase.INIT and clock.deadline == 150.0
    clock.feed(b"load 70.0\n")  # phases entered during the try: timed from their start
    assert clock.deadline == 75.0
