"""Exceptions raised by daskprs, and the exit status each one maps to.

::

    DaskprsError                      exit 1: an internal error of daskprs
    ├── UserInputError                exit 2: a problem with what the user gave
    │   ├── JobSpecError              the job file is invalid (all problems listed together)
    │   ├── PlanningError             an input could not be listed or split
    │   ├── SettingsError             a DASKPRS_* variable has a bad value (all listed together)
    │   ├── ResumeRefused             --resume / rerun-failed refused
    │   └── RunLocked                 another live driver is running that run now
    ├── JobFailed                     exit 42: the job ran and failed (a budget, a timeout, ...)
    │   └── StorageFull               no space (or a file-size limit) where the run writes
    └── Interrupted                   exit 130: SIGINT or SIGTERM

Every message says what is wrong and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "DaskprsError",
    "Interrupted",
    "JobFailed",
    "JobSpecError",
    "PlanningError",
    "Problem",
    "ResumeRefused",
    "RunLocked",
    "RunRecordUnreadable",
    "SettingsError",
    "StorageError",
    "StorageFull",
    "UserInputError",
    "close_match",
    "suggest",
]


class DaskprsError(Exception):
    """Base class of every daskprs error; exit status 1 (an internal error)."""

    exit_code = 1


class UserInputError(DaskprsError):
    """A problem with what the user gave, found before the first ``run()``; exit status 2."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem found in a job file.

    Parameters
    ----------
    place : str
        Dotted path of the offending key in the YAML (``jobs.score.retry_settings.timout``),
        prefixed with the file name when the problem is in another file than the one given.
    message : str
        What is wrong.
    hint : str
        How to fix it (closest known key, allowed values, the right form); may be empty.
    """

    place: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.place}: {self.message}" if self.place else self.message
        return f"{text} ({self.hint})" if self.hint else text


class JobSpecError(UserInputError):
    """The job file is invalid; ``problems`` lists every problem found, not only the first.

    ``source`` names the job: its file, or what it was given as when no file of the user's
    holds it (``"the job given to run_job"``, with ``file=False``).
    """

    def __init__(self, source: str, problems: list[Problem], *, file: bool = True):
        self.source = source
        self.problems = list(problems)
        where = " in the job file" if file else ""
        lines = [f"{source}: {len(self.problems)} problem(s){where}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class PlanningError(UserInputError):
    """An input could not be listed or split into mini-batches (the file is named)."""


class SettingsError(UserInputError):
    """``DASKPRS_*`` environment variables with bad values (:mod:`daskprs.settings`).

    ``problems`` maps each such variable to what is wrong with it: its value, the form it
    takes and an example; every bad variable is listed, not only the first.
    """

    def __init__(self, problems: Mapping[str, str]):
        self.problems = dict(problems)
        if len(self.problems) == 1:
            [problem] = self.problems.values()
            message = f"{problem}. Fix it, or unset it for the default."
        else:
            lines = [
                f"{len(self.problems)} DASKPRS_* environment variables have bad values "
                "(fix them, or unset them for the defaults):"
            ]
            message = "\n".join(lines + [f"  - {p}" for p in self.problems.values()])
        super().__init__(message)

    def __reduce__(self) -> tuple[type[SettingsError], tuple[dict[str, str]]]:
        return type(self), (self.problems,)


class ResumeRefused(UserInputError):
    """A resume or rerun was refused (changed job or input, or no run to resume)."""


class RunRecordUnreadable(ResumeRefused):
    """A run directory's ``run.json`` is there but cannot be read (empty or cut short by a
    crash, or changed by hand): the run cannot be resumed."""

    def __init__(self, path: str, why: str):
        self.path, self.why = path, why
        super().__init__(
            f"the run record {path} cannot be read ({why}): it was cut short by a crash or "
            "changed by hand, and the run cannot be resumed without it. Run the job anew in a "
            "new run directory"
        )

    def __reduce__(self) -> tuple[type[RunRecordUnreadable], tuple[str, str]]:
        return type(self), (self.path, self.why)


class RunLocked(UserInputError):
    """Another live process holds the run directory's lock (it is running that run now)."""

    def __init__(self, run_dir: str, pid: int):
        self.run_dir, self.pid = run_dir, pid
        super().__init__(
            f"the run {run_dir} is being run by process {pid} right now; wait for it to end "
            "(or stop it) before resuming it, or give a new run another --run-dir"
        )

    def __reduce__(self) -> tuple[type[RunLocked], tuple[str, int]]:
        return type(self), (self.run_dir, self.pid)


class JobFailed(DaskprsError):
    """The job ran and failed: a budget was exceeded, progress stalled, ``init()`` failed
    everywhere, or no mini-batch succeeded. Exit status 42."""

    exit_code = 42


class StorageError(JobFailed):
    """A disk refused a write under the run directory or an output while the job ran (exit
    status 42); the message names the path, what to fix and the command that continues the
    run once it is fixed."""


class StorageFull(StorageError):
    """A disk or quota filled up under the run directory or an output, or a file there grew
    past the largest size allowed (exit status 42); the message names the path, the cause
    and the command that continues the run once it is fixed."""


class Interrupted(DaskprsError):
    """The run was interrupted by SIGINT or SIGTERM; committed work is kept. Exit status 130."""

    exit_code = 130


def close_match(word: str, known: Iterable[object]) -> str | None:
    """The known name closest to a misspelt ``word``, if one is close enough."""
    close = difflib.get_close_matches(word, sorted(str(k) for k in known), n=1, cutoff=0.6)
    return close[0] if close else None


def suggest(
    word: str, known: Iterable[object], what: str = "key", quote: str = "`", list_known: bool = True
) -> str:
    """A hint for a misspelt name: ``did you mean `timeout`?``, else the known names (or
    nothing, without ``list_known``)."""
    names = sorted(str(k) for k in known)
    close = close_match(word, names)
    if close is not None:
        return f"did you mean {quote}{close}{quote}?"
    return f"known {what}s: {', '.join(names)}" if names and list_known else ""
