"""Disks that refuse a write: which errors say so, and what to tell the user.

A full disk or quota, or a file past the largest size allowed, is not a job's fault and not a
mini-batch's: where the driver meets one (its ledger, the output) and where an entry-script
process meets one (the rows of a try), the run stops, keeps every mini-batch done, and says
which file, why and the command that continues it. Light on purpose: the entry-script process
imports it.
"""

from __future__ import annotations

import errno
import os

from daskprs.paths import nearest_existing

__all__ = ["STORAGE_ERRNOS", "full_disk", "no_space", "storage_error", "storage_problem"]

# A disk or quota full, or a file grown past the largest size allowed (the file system's or
# ``ulimit -f``'s)
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# A disk or a file that refuses the write: read-only, permissions, a failing device
REFUSED_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def no_space(err: OSError) -> bool:
    """Whether ``err`` says a disk or a quota is full, or a file grew past the largest size
    allowed (``EFBIG``): the run stops alike for them, saying which (:func:`storage_problem`)."""
    return err.errno in STORAGE_ERRNOS


# Fewer bytes than this free on a disk: no room left on it (a file system keeps a few blocks)
_NO_ROOM_BYTES = 64 * 1024


def full_disk(path: str) -> bool:
    """Whether the disk of ``path`` (or of its nearest folder that exists) has no room left
    for an ordinary user (under 64 KiB free): what explains a failure whose own error was
    lost, such as a command's messages that could not be written."""
    try:
        st = os.statvfs(nearest_existing(path))
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < _NO_ROOM_BYTES


def storage_error(err: BaseException) -> bool:
    """Whether ``err`` is a disk's refusal of a write, full or not (:func:`no_space`, or
    read-only, permissions, an I/O error): the machine's to fix, and no try's fault."""
    return isinstance(err, OSError) and (err.errno in STORAGE_ERRNOS or err.errno in REFUSED_ERRNOS)


def storage_problem(err: OSError, path: str) -> tuple[str, str]:
    """What went wrong and how to fix it, for an error :func:`storage_error` accepts.

    Parameters
    ----------
    err : OSError
        The error.
    path : str
        The file written (the error's own file name is preferred when it has one).

    Returns
    -------
    tuple of str
        The problem (``"no space left on the device of <path> (...)"``) and the fix, to
        be followed by the command that continues the run.
    """
    where = err.filename or path
    if err.errno == errno.EFBIG:
        return (
            f"{where} grew past the largest file allowed there ({err.strerror}): the file "
            "system's file-size limit (FAT32's 4 GiB) or the process's (ulimit -f)",
            "Write it to a file system without that limit (the output's path in the job "
            "file, or the run directory), or raise ulimit -f",
        )
    if err.errno == errno.EIO:
        return f"the disk of {where} failed to read or write ({err.strerror})", "Check it"
    if err.errno in REFUSED_ERRNOS:
        return f"{where}: {err.strerror}", "Fix its permissions or its mount"
    return f"no space left on the device of {where} ({err.strerror})", "Free some space there"
