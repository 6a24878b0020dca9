"""The watchdog of a command step, and the ending of an earlier session's command: what it
signals and what it leaves alone, without a driver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
from conftest import poll_for

from daskprs.execute.child import PROCESS_MARK
from daskprs.execute.commandguard import guard_argv
from daskprs.job.model import CommandStep
from daskprs.pipeline import end_earlier_command
from daskprs.rundir import RunDir

# blocks SIGTERM, so that one sent to it stays pending (/proc/<pid>/status) for the test to
# see, then says it is ready and waits
BLOCKS_SIGTERM = (
    "import signal, sys, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
    "open(sys.argv[1], 'w').close(); time.sleep(600)"
)


def _pending_sigterm(pid: int) -> bool:
    """Whether SIGTERM waits for process ``pid`` (sent to it or its group, blocked)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":\t", 1) for line in f)
    bit = 1 << (signal.SIGTERM - 1)
    return bool((int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)) & bit)


@pytest.mark.parametrize(
    ("command", "returncode"), [("exit 3", 3), ("true", 0), ("kill -9 $$", -signal.SIGKILL)]
)
def test_the_watchdog_exits_as_the_shell_did(command, returncode):
    """The driver sees the command's own exit status, or its death by a signal."""
    token = uuid.uuid4().hex
    argv = guard_argv(os.getpid(), token, 1.0, command)
    done = subprocess.run(argv, env={**os.environ, PROCESS_MARK: token}, timeout=60)
    assert done.returncode == returncode


def test_a_recorded_process_group_that_is_not_the_commands_is_left_alone(tmp_path):
    """``command.json`` names a process group whose processes do not carry its token (its
    pid reused since by another process): nothing is signalled, nothing said."""
    ready = tmp_path / "ready"
    other = subprocess.Popen(
        [sys.executable, "-c", BLOCKS_SIGTERM, str(ready)], start_new_session=True
    )
    try:
        poll_for(ready.exists, timeout=60)
        run = RunDir(str(tmp_path / "run"))
        step = CommandStep(name="prep", command="true", code_dir=str(tmp_path))
        os.makedirs(run.step("prep").root)
        record = {"pgid": other.pid, "token": uuid.uuid4().hex, "driver": 1, "started": "now"}
        with open(run.step("prep").command, "w") as f:
            json.dump(record, f)
        said: list[str] = []
        end_earlier_command(step, run, said.append)
        assert said == []
        assert not _pending_sigterm(other.pid)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(
    ("signum", "then", "returncode"),
    [
        (signal.SIGINT, "exec sleep 600", -signal.SIGINT),
        (signal.SIGHUP, "trap 'exit 7' HUP; while :; do sleep 0.1; done", 7),
    ],
)
def test_a_signal_to_the_command_group_is_the_commands_to_act_on(
    tmp_path, signum, then, returncode
):
    """The watchdog shares the command's process group: a SIGINT or SIGHUP to the group is
    the command's to act on, and the watchdog exits as the command did, not with a traceback
    or a death of its own (while a command that traps it might live on)."""
    ready = tmp_path / "ready"
    token = uuid.uuid4().hex
    argv = guard_argv(os.getpid(), token, 1.0, f"touch {ready} && {then}")
    proc = subprocess.Popen(
        argv,
        env={**os.environ, PROCESS_MARK: token},
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        poll_for(ready.exists, timeout=60)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == returncode, err
    assert "Traceback" not in err, err
