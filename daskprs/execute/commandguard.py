"""The watchdog of a command step: the process its shell runs under, which ends the command
when the driver that started it is gone, and the ending of an earlier session's command.

The driver starts ``python -I -c ... <driver pid> <token> <grace> <command>``
(:func:`guard_argv`) in a session and process group of its own, with
:data:`~daskprs.execute.child.PROCESS_MARK` set to a new token in its environment: the shell
that runs the command is its child, in its group, and every process the command starts
carries the mark, also one that leaves the group (``setsid``, a daemon's double fork). The
watchdog asks Linux for SIGTERM when the driver ends (``PR_SET_PDEATHSIG``; elsewhere it
looks at its parent every second). So a driver killed with SIGKILL leaves no command running:
the watchdog ends it (:func:`end_command`) and then itself. A SIGTERM while the driver lives
is the driver ending the command (Ctrl-C): the watchdog leaves that to it. Otherwise it exits
as the shell did, a death by a signal included.

What survives all that (the watchdog killed with the driver, as by the OOM killer) is found by
the next session through the token that ``steps/<step>/command.json`` records, and ended
the same way, before the command runs again.

The watchdog imports the standard library and ``child`` only, in an interpreter isolated
from the command's environment (``-I``): it starts in tens of milliseconds, and the shell
gets that environment as it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

from daskprs.execute.child import carries_mark, end_marked, marked

__all__ = ["KILLED_SECONDS", "end_command", "guard_argv", "main"]

# How long processes may take to go after SIGKILL (stuck in the kernel otherwise)
KILLED_SECONDS = 5.0
# How often the processes being ended are looked for, and the parent where Linux does not
# signal its end
_POLL_SECONDS = 0.05
_PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1
# Signals that would end the watchdog, sent to the command's group (``kill -INT -<pgid>``)
_LEFT_TO_THE_COMMAND = (
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
# `python -I -c _START ROOT ...`: daskprs from the driver's installation (ROOT), whatever
# the command's environment says
_START = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from daskprs.execute.commandguard import main; sys.exit(main(sys.argv[1:]))"
)


class _Orphaned(Exception):
    """The driver that started the watchdog is gone."""


def guard_argv(driver: int, token: str, grace: float, command: str) -> list[str]:
    """The command line that runs ``command`` (a shell's) under its watchdog.

    Parameters
    ----------
    driver : int
        The pid of the process that starts it: the command ends when that process does.
    token : str
        The ``PROCESS_MARK`` its environment will carry (the caller sets it).
    grace : float
        Seconds the command has after SIGTERM before what is left of it gets SIGKILL.
    command : str
        The shell command.
    """
    from daskprs.execute.slot import package_root

    args = [str(driver), token, str(grace), command]
    return [sys.executable, "-I", "-c", _START, package_root(), *args]


def main(argv: list[str]) -> int:
    """Run the shell command ``argv[3]`` while process ``argv[0]`` lives; end it (and what it
    started, marked ``argv[1]``, given ``argv[2]`` seconds after SIGTERM) when it does not."""
    driver, token, grace, command = int(argv[0]), argv[1], float(argv[2]), argv[3]
    signal.signal(signal.SIGTERM, lambda *_: _check_parent(driver))
    # a signal to the whole group is the command's to act on: we wait for the shell and exit
    # as it did (a handler, not SIG_IGN, which the shell would inherit)
    for signum in _LEFT_TO_THE_COMMAND:
        signal.signal(signum, lambda *_: None)
    told = _die_with_parent()
    try:
        _check_parent(driver)  # it may have ended before Linux was asked
        shell = subprocess.Popen(command, shell=True)
        returncode = shell.wait() if told else _wait_polling(shell, driver)
    except _Orphaned:
        end_command(token, grace, spare=frozenset({os.getpid()}))
        # what is left of our group (a process started without the mark), and us
        os.killpg(os.getpid(), signal.SIGKILL)
        return 1  # (not reached)
    return _exit_as(returncode)


def _check_parent(driver: int) -> None:
    if os.getppid() != driver:
        # from now on the group's SIGTERM (ours, to end it) is not for us, nor a second
        # _Orphaned while we end it
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Orphaned


def _die_with_parent() -> bool:
    """Ask Linux for SIGTERM when the parent ends; whether it will send it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0)
    except (OSError, AttributeError):  # not Linux
        return False


def _wait_polling(shell: subprocess.Popen[Any], driver: int) -> int:
    while True:
        try:
            return shell.wait(timeout=_PARENT_POLL_SECONDS)
        except subprocess.TimeoutExpired:
            _check_parent(driver)


def _exit_as(returncode: int) -> int:
    """The shell's exit status as the watchdog's: a signal that killed it kills us too, so
    that the driver sees the same."""
    if returncode >= 0:
        return returncode
    with contextlib.suppress(OSError, ValueError):  # SIGKILL and SIGSTOP have no handler
        signal.signal(-returncode, signal.SIG_DFL)
    os.kill(os.getpid(), -returncode)
    return 128 - returncode


def end_command(token: str, grace: float, spare: frozenset[int] = frozenset()) -> bool:
    """End the processes of a command marked with ``token``: SIGTERM to the process groups
    they are in, then, ``grace`` seconds later, SIGKILL to what is left of them.

    Only processes whose environment carries the mark are looked for, and only the groups
    they are in are signalled, checked again just before: a pid that another process got
    since is left alone. Linux only (elsewhere nothing is found); a process that started
    with an environment of its own (``env -i``) outside those groups is not found.

    Parameters
    ----------
    token : str
        The command's ``PROCESS_MARK``.
    grace : float
        Seconds after SIGTERM before SIGKILL.
    spare : frozenset of int
        Processes left alone (the watchdog itself, which ignores SIGTERM): their group gets
        SIGTERM only.

    Returns
    -------
    bool
        Whether none is left; False if some were still there :data:`KILLED_SECONDS` after
        SIGKILL.
    """
    _signal_groups(token, signal.SIGTERM, spare)
    if _gone(token, grace, spare):
        return True
    _signal_groups(token, signal.SIGKILL, spare)
    end_marked(token, spare)  # those that left the groups
    return _gone(token, KILLED_SECONDS, spare)


def _signal_groups(token: str, signum: int, spare: frozenset[int]) -> None:
    """Send ``signum`` to each process group a process marked with ``token`` is in (with
    SIGKILL, but those of ``spare``)."""
    groups = set()
    for pid in marked(token):
        if pid in spare:
            continue
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if carries_mark(pid, token):  # still that process: pgid is its group
            groups.add(pgid)
    if signum == signal.SIGKILL:
        groups -= {os.getpgid(pid) for pid in spare}
    for pgid in groups:
        try:
            os.killpg(pgid, signum)
        except (ProcessLookupError, PermissionError):
            pass


def _gone(token: str, timeout: float, spare: frozenset[int]) -> bool:
    """Poll until no process but ``spare`` carries the mark, for at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while any(pid not in spare for pid in marked(token)):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)
    return True
