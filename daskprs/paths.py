"""Paths that may be local or URLs: one way to tell them apart and to join them.

Standard library only; every layer uses it.
"""

from __future__ import annotations

import os
import posixpath
import re

__all__ = ["URL", "join_path", "parent_path"]

# An fsspec URL: a scheme and ``://`` (``s3://bucket/key``, ``file:///tmp``).
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def join_path(base: str, *parts: str) -> str:
    """``base`` joined with ``parts``, normalised; ``base`` and the parts may be local paths or
    URLs, and a part that is absolute or a URL starts over (as ``os.path.join`` does).

    >>> join_path("s3://b/data", "../other", "x.csv")
    's3://b/other/x.csv'
    """
    out = base
    for part in parts:
        if not part:
            continue
        if URL.match(part) or part.startswith("/"):
            out = part
        elif URL.match(out):
            scheme, rest = out.split("://", 1)
            out = f"{scheme}://{posixpath.normpath(posixpath.join(rest, part))}"
        else:
            out = os.path.join(out, part)
    if URL.match(out):
        scheme, rest = out.split("://", 1)
        rest = posixpath.normpath(rest) if rest else rest
        return f"{scheme}://{rest}"
    return os.path.normpath(out)


def parent_path(path: str) -> str:
    """The folder holding ``path`` (a local path or a URL)."""
    if URL.match(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(path)
