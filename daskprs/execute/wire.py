"""Length-prefixed pickle messages over a pipe (between a worker slot and its child process).

Standard library only: the child process imports it before anything else.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any

__all__ = ["ChannelClosed", "read_message", "write_message"]

_HEADER = struct.Struct("!Q")


class ChannelClosed(EOFError):
    """The other end of the pipe is gone."""


def write_message(fd: int, obj: Any) -> None:
    """Write one message (header and pickle) to ``fd``."""
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        n = os.write(fd, data)
        data = data[n:]


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
