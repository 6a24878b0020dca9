"""Parts packed in one file: the rows of the tries of one Dask task, appended one after the
other to ``steps/<step>/parts/<mb>.<first try key>.pack``, each try's rows a byte range its
record names, ``<pack>:<offset>+<length>`` (docs/run-directory.md#claims-and-parts).

A file per try cost each try an inode, a directory entry and an open by the driver that
assembles the output: a fifth of a short try's overhead, and a million files in one folder
for a million mini-batches. A range counts only once the ledger records its try DONE, like
a part of its own: the bytes of a try cut short stay in the pack, unread, and the next try
appends after them.

The standard library only: entry-script processes import this.
"""

from __future__ import annotations

import re

__all__ = ["is_pack_ref", "pack_ref", "split_ref"]

_REF = re.compile(r"(.+\.pack):(\d+)\+(\d+)")


def pack_ref(pack: str, offset: int, length: int) -> str:
    """The part of a try whose rows are ``length`` bytes at ``offset`` of ``pack``."""
    return f"{pack}:{offset}+{length}"


def is_pack_ref(part: str) -> bool:
    """Whether ``part`` names a range of a pack (else a whole file or object)."""
    return part.endswith(tuple("0123456789")) and _REF.fullmatch(part) is not None


def split_ref(part: str) -> tuple[str, int, int | None]:
    """``(file, offset, length)`` of a part: a pack's range, or ``(part, 0, None)`` for a
    part that is a whole file (or object)."""
    m = _REF.fullmatch(part) if part.endswith(tuple("0123456789")) else None
    if m is None:
        return part, 0, None
    return m.group(1), int(m.group(2)), int(m.group(3))
