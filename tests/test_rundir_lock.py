"""The run's lock (``RunDir.lock``): one driver a run, a killed driver's lock taken over, and
what ``status`` reads of it."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys

import pytest

from daskprs.errors import RunLocked
from daskprs.rundir import RunDir

ROUNDS = 30
RACERS = 8


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _race(root: str, start, tried, wins) -> None:
    """One would-be driver: wait for the start, try the lock, keep it until every racer has
    tried (so a second winner cannot be one that came after a release), then report."""
    run = RunDir(root)
    start.wait()
    try:
        run.lock()
        won = True
    except RunLocked:
        won = False
    tried.wait()
    if won:
        wins.put(os.getpid())
        run.unlock()
    else:
        wins.put(0)


def test_drivers_taking_over_a_stale_lock_at_once_never_both_hold_it(tmp_path):
    """Many drivers start on a run whose driver was killed (its ``run.lock`` names a dead
    process): exactly one of them gets the run, every round."""
    ctx = multiprocessing.get_context("fork")
    for n in range(ROUNDS):
        root = tmp_path / f"run{n}"
        root.mkdir()
        (root / "run.lock").write_text(str(_dead_pid()))  # left by a killed driver
        start, tried, wins = ctx.Barrier(RACERS), ctx.Barrier(RACERS), ctx.Queue()
        procs = [
            ctx.Process(target=_race, args=(str(root), start, tried, wins)) for _ in range(RACERS)
        ]
        for p in procs:
            p.start()
        results = [wins.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        winners = [pid for pid in results if pid]
        assert len(winners) == 1, f"round {n}: {len(winners)} drivers held the run at once"


def _churn(root: str, start, turns: int, overlaps) -> None:
    """Take the lock, stay inside a moment (marked by a file only one may create), release;
    again and again, each release removing ``run.lock`` under the others' feet."""
    run = RunDir(root)
    inside = os.path.join(root, "inside")
    start.wait()
    for _ in range(turns):
        try:
            run.lock()
        except RunLocked:
            continue
        try:
            os.close(os.open(inside, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            overlaps.put(1)  # another driver holds the run too
        else:
            os.unlink(inside)
        run.unlock()
    overlaps.put(0)


def test_drivers_taking_and_releasing_the_lock_over_and_over_never_overlap(tmp_path):
    """A release removes ``run.lock`` while others may have it open: one of them must not
    then hold the removed file while another holds the new one."""
    ctx = multiprocessing.get_context("fork")
    start, overlaps = ctx.Barrier(RACERS), ctx.Queue()
    procs = [
        ctx.Process(target=_churn, args=(str(tmp_path), start, 200, overlaps))
        for _ in range(RACERS)
    ]
    for p in procs:
        p.start()
    seen = []
    while len([x for x in seen if x == 0]) < RACERS:
        seen.append(overlaps.get(timeout=120))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(seen) == 0, f"{sum(seen)} times two drivers held the run at once"


def test_a_live_driver_holds_its_run_and_a_second_one_is_refused(tmp_path):
    run = RunDir(str(tmp_path))
    run.lock()
    try:
        assert run.lock_owner() == os.getpid()
        with pytest.raises(RunLocked, match=f"process {os.getpid()}"):
            RunDir(str(tmp_path)).lock()
    finally:
        run.unlock()
    assert run.lock_owner() is None
    run.lock()  # free again
    run.unlock()


def test_a_lock_file_no_process_holds_means_no_driver(tmp_path):
    """A driver killed with SIGKILL leaves ``run.lock`` behind with its pid in it, but the
    kernel released its lock: ``status`` must not take the file for a driver, even when the
    pid now belongs to another process."""
    (tmp_path / "run.lock").write_text(str(os.getpid()))  # a live pid, but nobody locks
    run = RunDir(str(tmp_path))
    assert run.lock_owner() is None
    run.lock()  # taken over
    run.unlock()


def test_the_lock_of_a_killed_driver_is_released_by_the_kernel(tmp_path):
    code = (
        "import sys, time; from daskprs.rundir import RunDir; RunDir(sys.argv[1]).lock(); "
        "print('locked', flush=True); time.sleep(600)"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout.readline().strip() == "locked"
        run = RunDir(str(tmp_path))
        assert run.lock_owner() == driver.pid
        with pytest.raises(RunLocked):
            run.lock()
    finally:
        driver.kill()
        driver.wait()
        driver.stdout.close()
    assert run.lock_owner() is None
    run.lock()
    assert run.lock_owner() == os.getpid()
    run.unlock()
