"""The messages between a worker slot and its child process, and how they travel.

Each message is a small frozen dataclass, pickled and length-prefixed on a pipe:

- slot -> child: :class:`Setup` (once), then :class:`RunTask` per try, :class:`StopChild`;
- child -> slot: :class:`Done` with the try's :class:`~daskprs.results.outcome.TryRecord`,
  :class:`Stopped` after ``shutdown()``.

Standard library only (and the record, a plain dataclass): the child imports it before
anything else.
"""

from __future__ import annotations

import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from daskprs.results.outcome import TryRecord

__all__ = [
    "ChannelClosed",
    "Done",
    "RunTask",
    "Setup",
    "StopChild",
    "Stopped",
    "encode_message",
    "read_message",
    "write_bytes",
    "write_message",
]

_HEADER = struct.Struct("!Q")


@dataclass(frozen=True)
class Setup:
    """The child's configuration (a :class:`~daskprs.execute.child.ChildConfig`)."""

    config: Any


@dataclass(frozen=True)
class RunTask:
    """Run one try of one mini-batch; write its rows to ``part`` when given (``pack``: append
    them to that file, :mod:`daskprs.results.packs`)."""

    batch: Any
    try_no: int
    part: str | None = None
    pack: bool = False
    # the try's number in its slot, which its phase lines carry (0: one try at a time)
    seq: int = 0
    # the last try of its task: the pack is closed after it (a staged run's is uploaded and
    # removed then, and must not keep its disk space while the process lives)
    last: bool = False


@dataclass(frozen=True)
class Done:
    """The try ended (whatever its status) with this record."""

    record: TryRecord


@dataclass(frozen=True)
class StopChild:
    """Run ``shutdown()`` and exit."""


@dataclass(frozen=True)
class Stopped:
    """``shutdown()`` ran; the child exits."""


class ChannelClosed(EOFError):
    """The other end of the pipe is gone."""


def encode_message(obj: Any) -> bytes:
    """One message's bytes: its header and pickle."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


def write_bytes(fd: int, data: bytes) -> None:
    """Write all of ``data`` (an encoded message) to ``fd``."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_message(fd: int, obj: Any) -> None:
    """Write one message (header and pickle) to ``fd``."""
    write_bytes(fd, encode_message(obj))


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise ChannelClosed("pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> Any:
    """Read one message from ``fd``; raise :class:`ChannelClosed` at end of file."""
    (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size))
    return pickle.loads(_read_exact(fd, size))
