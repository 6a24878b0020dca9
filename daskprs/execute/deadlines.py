"""The deadlines of one try, as a small pure clock: phase lines in, deadline out.

The child process writes a line ``<phase> <monotonic time>`` when it enters a phase of a try
(``init``: importing the script and ``init()``; ``load``: reading the mini-batch's data;
``run``: ``run()``); a try's lines also carry the rows or items ``run()`` was given (``-``
before it) and the try's number in its slot (``run 12.5 100 7``), so that a slot that hands
over the next try while one runs gives each its own lines (:func:`phase_line_seq`). The
slot feeds those bytes to a :class:`DeadlineClock`, which answers when the current phase
must end and, once it has passed, what to report. No processes and no clock reads here:
``now`` is passed in, so the clock is tested with plain values.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from daskprs.results.outcome import Status

__all__ = ["SHUTDOWN_SECONDS", "DeadlineClock", "Deadlines", "Phase", "phase_line_seq"]

# How long a process may take in ``shutdown()`` before it is killed, unless
# ``DASKPRS_SHUTDOWN_TIMEOUT`` says otherwise (the time the slot waited before it was named).
SHUTDOWN_SECONDS = 30.0


class Phase(StrEnum):
    """The phases of a try in the child, in order."""

    INIT = "init"
    LOAD = "load"
    RUN = "run"


@dataclass(frozen=True)
class Deadlines:
    """Per-phase time limits of one try, in seconds (None: no limit).

    ``load`` is ``--task_overhead_timeout``, ``run`` is ``retry_settings.timeout``; ``init``
    bounds loading the entry script and its ``init()`` (by default the two added up);
    ``shutdown`` bounds a process's ``shutdown()`` at the end (``DASKPRS_SHUTDOWN_TIMEOUT``).
    """

    load: float | None = 30.0
    run: float | None = 60.0
    init: float | None = None
    shutdown: float | None = SHUTDOWN_SECONDS

    def limit(self, phase: Phase) -> float | None:
        # the phase's value names its field (a slot asks at each phase line of each try)
        return getattr(self, phase.value)


# phase lines' first words; a name looked up, not an enum call (slots read several a try)
_PHASES = {phase.value.encode(): phase for phase in Phase}


def _parse(line: bytes) -> tuple[Phase, float, int | None] | None:
    """The phase, time and item count of a phase line (None: not a line of the child's)."""
    name, _, rest = line.partition(b" ")
    phase = _PHASES.get(name)
    if phase is None:
        return None
    try:
        started, _, rest = rest.partition(b" ")
        items = rest.partition(b" ")[0]
        return phase, float(started), int(items) if items not in (b"", b"-") else None
    except ValueError:
        return None


def phase_line_seq(line: bytes) -> int | None:
    """The number of the try a phase line is of (None: the process's own, ``init``)."""
    parts = line.split(b" ")
    if len(parts) < 4:
        return None
    try:
        return int(parts[3])
    except ValueError:
        return None


# What each phase was doing, for timeout messages, and the status its timeout gets.
_WHAT = {
    Phase.INIT: ("loading the entry script and init()", Status.INIT_FAILED),
    Phase.LOAD: ("reading the mini-batch's data", Status.LOAD_TIMEOUT),
    Phase.RUN: ("run()", Status.RUN_TIMEOUT),
}


class DeadlineClock:
    """Follows the child's phase lines and says when the current phase must end.

    Parameters
    ----------
    limits : Deadlines
        The limits of this try.
    since : float
        When the try was handed to the process: a phase it entered before (``init()``, which
        a process starts as it starts, before its first try) is timed from here.
    """

    def __init__(self, limits: Deadlines, since: float = float("-inf")):
        self.limits = limits
        self.since = since
        self.phase = Phase.INIT
        self.deadline: float | None = None
        # the rows or items the child said run() was given (None: not said)
        self.items: int | None = None
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """Take bytes read from the phase pipe (any split: partial lines are kept)."""
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            parsed = _parse(line)
            if parsed is None:
                # not a line of the child's (an entry script wrote to the pipe): the phase and
                # its deadline stay as they were
                continue
            phase, since, count = parsed
            self.phase = phase
            if count is not None:
                self.items = count
            limit = self.limits.limit(phase)
            self.deadline = None if limit is None else max(since, self.since) + limit

    def wait(self, now: float, poll: float) -> float:
        """How long to wait for the child before looking again: ``poll`` at most, and never
        past the deadline."""
        if self.deadline is None:
            return poll
        return max(0.0, min(poll, self.deadline - now))

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def timeout(self) -> tuple[Status, str]:
        """The status and message of a try whose current phase ran out of time."""
        what, status = _WHAT[self.phase]
        limit = self.limits.limit(self.phase)
        return status, (
            f"{what} took longer than the timeout of {limit:g} s; its process was killed and "
            "replaced"
        )
