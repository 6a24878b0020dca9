"""A Ctrl-C (SIGINT) at any moment of ``daskprs run`` ends with exit 130 and a message that
says how to continue: ``daskprs run --resume <run dir>`` once the run directory holds a run,
and that there is nothing to resume before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import pid_alive, poll_for

from daskprs.cli import _guard

PIPELINE = """\
type: pipeline
jobs:
  prep:
    type: command
    code: ./code
    command: echo $$ > started.tmp && mv started.tmp started && exec sleep 600
    outputs:
      data: {type: uri_folder}
  score:
    type: parallel
    inputs:
      data: ${{parent.jobs.prep.outputs.data}}
    input_data: ${{inputs.data}}
    task:
      type: run_function
      code: ./code
      entry_script: score.py
"""


@pytest.mark.slow
def test_an_interrupt_before_the_first_parallel_step_says_how_to_resume(tmp_path):
    """SIGINT while a command step runs, before any parallel step: the first step's loop has
    not started, yet the run directory holds a run that `--resume` continues."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "job.yml").write_text(PIPELINE)
    run_dir = tmp_path / "run"
    started = tmp_path / "code" / "started"
    proc = subprocess.Popen(
        [sys.executable, "-m", "daskprs", "run", "job.yml", "--run-dir", str(run_dir)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # pytest may run in the background, where the shell started it ignoring SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    sleeper = 0
    try:
        poll_for(started.exists, timeout=120)
        sleeper = int(started.read_text())
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if sleeper and pid_alive(sleeper):
            os.kill(sleeper, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert f"daskprs run --resume {run_dir}" in err, err
    assert "Traceback" not in err, err


def test_an_interrupt_once_the_run_directory_holds_a_run(tmp_path, capsys):
    (tmp_path / "run.json").write_text("{}")

    def interrupted():
        raise KeyboardInterrupt

    assert _guard(interrupted, str(tmp_path)) == 130
    err = capsys.readouterr().err
    assert f"Continue with: daskprs run --resume {tmp_path}" in err


@pytest.mark.parametrize("made", [False, True])
def test_an_interrupt_before_the_run_directory_holds_a_run(tmp_path, capsys, made):
    """Nothing to resume: no run directory yet, or one without its run record."""
    run_dir = tmp_path / "run"
    if made:
        run_dir.mkdir()

    def interrupted():
        raise KeyboardInterrupt

    assert _guard(interrupted, str(run_dir)) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err
    assert textwrap.dedent("nothing to resume") in err


SLOW = """
import os, time

def run(mini_batch):
    open(os.path.join(os.environ["MARKS"], os.path.basename(mini_batch[0])), "w").close()
    time.sleep(600)
    return mini_batch
"""


@pytest.mark.slow
def test_a_ctrl_c_to_the_terminals_process_group_prints_one_message(tmp_path):
    """A terminal's Ctrl-C reaches every process of its foreground group (the driver; the
    entry-script processes have sessions of their own). One clean message, no traceback."""
    from conftest import make_files, write_job

    make_files(tmp_path / "data", 6)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        SLOW,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  MARKS: {marks}",
    )
    run_dir = tmp_path / "run"

    def own_group() -> None:  # as a shell starts a foreground job
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    command = [sys.executable, "-m", "daskprs", "run", str(job), "--workers", "2"]
    proc = subprocess.Popen(
        [*command, "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=own_group,
    )
    try:
        poll_for(lambda: len(list(marks.iterdir())) >= 2, timeout=120)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.count(f"daskprs run --resume {run_dir}") == 1, err


COMMAND_ONLY = """\
type: pipeline
jobs:
  prep:
    type: command
    code: ./code
    command: python work.py ${{outputs.data}}
    outputs:
      data: {type: uri_folder}
"""

# The first session leaves a file in the output, starts a helper process and waits; the
# pids go to `pids` for the test. A rerun (pids there) writes its file and ends.
WORK = """\
import os, subprocess, sys, time

open(os.path.join(sys.argv[1], f"written-by-{os.getpid()}"), "w").close()
if not os.path.exists("pids"):
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open("pids.tmp", "w") as f:
        f.write(f"{os.getpid()} {helper.pid}")
    os.rename("pids.tmp", "pids")
    time.sleep(600)
"""


def _daskprs(*args: str, cwd) -> subprocess.Popen:
    """`python -m daskprs ...` in a session of its own, SIGINT at its default."""
    return _python("-m", "daskprs", *args, cwd=cwd)


def _python(*args: str, cwd, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python ARGS` in a session of its own, SIGINT at its default, ``env`` added to this
    process's environment; its stderr is read by ``communicate``."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _signalled(proc: subprocess.Popen, signum: int, *waits: Path) -> str:
    """Send ``proc`` ``signum`` once each of ``waits`` exists, in turn; return its stderr
    once it ended (killed if it does not)."""
    try:
        for wait in waits:
            poll_for(wait.exists, timeout=120)
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_command_step_ends_before_the_driver_and_reruns_in_empty_outputs(
    tmp_path, signum
):
    """A signal to the driver alone ends the command and what it started before the driver
    exits 130; the resumed run runs the command again in an empty output folder."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "work.py").write_text(WORK)
    (tmp_path / "job.yml").write_text(COMMAND_ONLY)
    run_dir = tmp_path / "run"
    pids_file = tmp_path / "code" / "pids"
    proc = _daskprs("run", "job.yml", "--run-dir", str(run_dir), cwd=tmp_path)
    pids: list[int] = []
    try:
        poll_for(pids_file.exists, timeout=120)
        pids = [int(p) for p in pids_file.read_text().split()]
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        assert "Traceback" not in err, err
        # ended, and reaped by the driver or init, by the time the driver exits
        assert [p for p in pids if pid_alive(p)] == [], err
    finally:
        _end(proc, *pids)
    resumed = _daskprs("run", "--resume", str(run_dir), cwd=tmp_path)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "runs again in empty output folders" in err, err
    written = [p.name for p in (run_dir / "outputs/prep/data").iterdir()]
    assert len(written) == 1 and written != [f"written-by-{pids[0]}"], written


# The first session's command starts a helper that leaves its session, writes the pids to
# `pids` and then writes its file into the output again and again (a copy still running shows
# there) until it is ended. A rerun (pids there) writes its file and ends.
LINGERING = """\
import os, subprocess, sys, time

mine = os.path.join(sys.argv[1], f"written-by-{os.getpid()}")
open(mine, "w").close()
if not os.path.exists("pids"):
    helper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
    )
    with open("pids.tmp", "w") as f:
        f.write(f"{os.getpid()} {helper.pid}")
    os.rename("pids.tmp", "pids")
    while True:
        os.makedirs(sys.argv[1], exist_ok=True)
        open(mine, "w").close()
        time.sleep(0.05)
"""


def _start_lingering_command(tmp_path) -> tuple[subprocess.Popen, list[int]]:
    """`daskprs run` of a command step running LINGERING, and the command's pids once it
    runs."""
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "work.py").write_text(LINGERING)
    (tmp_path / "job.yml").write_text(COMMAND_ONLY)
    proc = _daskprs("run", "job.yml", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    pids_file = tmp_path / "code" / "pids"
    try:
        poll_for(lambda: pids_file.exists() or proc.poll() is not None, timeout=120)
    except BaseException:
        _end(proc)
        raise
    assert pids_file.exists(), proc.communicate()[1]
    return proc, [int(p) for p in pids_file.read_text().split()]


def _end(proc: subprocess.Popen, *pids: int) -> None:
    """Kill what a test started and left running: the driver's session, and ``pids``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in pids:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_driver_killed_with_sigkill_takes_its_command_with_it(tmp_path):
    """The command step's watchdog ends the command, and what it started outside its process
    group, when the driver is killed with SIGKILL (the driver alone, not its group)."""
    proc, pids = _start_lingering_command(tmp_path)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        poll_for(lambda: not any(pid_alive(p) for p in pids), timeout=60)
    finally:
        _end(proc, *pids)


def test_a_resume_ends_the_command_a_killed_driver_left_running_before_running_it_again(
    tmp_path,
):
    """Killed with the driver, the watchdog (the command's process-group leader) cannot end
    the command: the resume finds it by its mark, ends it (its helper that left the group
    too) and says so, then runs the command again; the output is the new copy's alone."""
    proc, pids = _start_lingering_command(tmp_path)
    try:
        # (written as the command starts: this driver may not have got as far yet)
        poll_for((tmp_path / "run/steps/prep/command.json").exists, timeout=60)
        # the driver stopped first: it does not see its command end, and the command does not
        # see it die
        os.kill(proc.pid, signal.SIGSTOP)
        watchdog = os.getpgid(pids[0])
        os.kill(watchdog, signal.SIGKILL)
        poll_for(lambda: not pid_alive(watchdog), timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert all(pid_alive(p) for p in pids)  # left running
        resumed = _daskprs("run", "--resume", str(tmp_path / "run"), cwd=tmp_path)
        _, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        assert [p for p in pids if pid_alive(p)] == [], err
        written = [p.name for p in (tmp_path / "run/outputs/prep/data").iterdir()]
        assert len(written) == 1 and written[0] != f"written-by-{pids[0]}", written
        assert err.count("the command an earlier session started is still running") == 1, err
    finally:
        _end(proc, *pids)


def test_a_command_group_that_ignores_sigterm_is_killed(tmp_path):
    """What is left of an interrupted command's process group after the grace period gets
    SIGKILL, and the call returns once it is gone."""
    from daskprs.pipeline import end_process_group

    ready = tmp_path / "ready"
    script = f"trap '' TERM; sleep 600 & echo $! > {ready}.tmp; mv {ready}.tmp {ready}; wait"
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        poll_for(ready.exists, timeout=60)
        sleeper = int(ready.read_text())
        assert end_process_group(proc, grace=0.2)
        assert proc.returncode == -signal.SIGKILL
        assert not pid_alive(sleeper)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# `python -c HOLD run ...`: `python -m daskprs run ...`, held where HOLD_AT says (a module's
# import, or click parsing the arguments) until the test's signal comes
HOLD = """
import os, runpy, sys, time

def hold(*args, **kwargs):
    open(os.environ["HELD"], "w").close()
    time.sleep(600)

class HoldImport:
    def find_spec(self, name, path=None, target=None):
        if name == os.environ["HOLD_AT"]:
            hold()
        return None

if os.environ["HOLD_AT"] == "parsing":
    import daskprs.cli
    daskprs.cli.cli.make_context = hold
else:
    sys.meta_path.insert(0, HoldImport())
runpy.run_module("daskprs", run_name="__main__")
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize(
    ("args", "hold_at", "said"),
    [
        ("run job.yml", "daskprs.cli", "interrupted before the command began: nothing was done"),
        ("run job.yml", "parsing", "interrupted before the command began: nothing was done"),
        ("run job.yml", "daskprs.api", "interrupted before the run started: nothing to resume"),
        ("run --resume old", "daskprs.api", "Continue with: daskprs run --resume"),
        ("rerun-failed old", "daskprs.api", "Continue with: daskprs run --resume"),
        ("validate job.yml", "daskprs.job.load", "interrupted: nothing was checked"),
        ("status old", "daskprs.observe.status", "interrupted"),
        ("report old", "daskprs.observe.report", "interrupted: no report written"),
    ],
)
def test_an_interrupt_while_the_command_line_loads_exits_130_with_one_line(
    tmp_path, signum, args, hold_at, said
):
    """While a command imports what it needs (Dask: the first second of `daskprs run`) an
    interrupt, SIGTERM too, exits 130 with one line, not click's "Aborted!" (1) or a
    traceback."""
    (tmp_path / "job.yml").write_text(PIPELINE)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text("{}")  # a run to resume
    held = tmp_path / "held"
    env = {"HOLD_AT": hold_at, "HELD": str(held)}
    proc = _python("-c", HOLD, *args.split(), cwd=tmp_path, env=env)
    err = _signalled(proc, signum, held)
    assert proc.returncode == 130, err
    [line] = err.strip().splitlines()
    assert said in line, err


# HOLD, with a thread that stands for a cluster a second Ctrl-C left starting: it logs as
# Dask does once the interpreter shuts down, then keeps the process from ending
LEFT_STARTING = """
import logging, os, threading, time

def still_starting():
    while threading.main_thread().is_alive():
        time.sleep(0.05)
    logging.getLogger("distributed.worker").error("Could not close executor")
    open(os.environ["SHUTTING_DOWN"], "w").close()
    time.sleep(600)

logging.basicConfig()
threading.Thread(target=still_starting).start()
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_after_an_interrupt_dask_is_quiet_and_another_one_ends_the_process(tmp_path, signum):
    """Once the interrupt is said, what Dask logs while the interpreter shuts down is not
    shown, and a second interrupt ends the process at once, with 130 still."""
    (tmp_path / "job.yml").write_text(PIPELINE)
    held, shutting_down = tmp_path / "held", tmp_path / "shutting-down"
    env = {"HOLD_AT": "daskprs.api", "HELD": str(held), "SHUTTING_DOWN": str(shutting_down)}
    args = ("-c", LEFT_STARTING + HOLD, "run", "job.yml", "--run-dir", "run")
    proc = _python(*args, cwd=tmp_path, env=env)
    err = _signalled(proc, signum, held, shutting_down)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        "interrupted before the run started: nothing to resume (run the job again)"
    ]
