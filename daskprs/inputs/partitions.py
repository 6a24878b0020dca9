"""Partition formats (``{Store}/{Brand}/{file_name}.csv``, ``{date:yyyy/MM/dd}``): compiling
one into a regex and reading its column values from a file's path.
"""

from __future__ import annotations

import functools
import re

__all__ = ["match_partition_format", "partition_columns", "partition_regex"]

_DATE_TOKENS = [
    ("yyyy", r"\d{4}", "%Y"),
    ("MM", r"\d{2}", "%m"),
    ("dd", r"\d{2}", "%d"),
    ("HH", r"\d{2}", "%H"),
    ("mm", r"\d{2}", "%M"),
    ("ss", r"\d{2}", "%S"),
]


@functools.lru_cache(maxsize=64)
def partition_regex(fmt: str) -> tuple[re.Pattern, tuple[tuple[str, str | None], ...]]:
    """Compile a partition format into a regex matched against the end of a path.

    ``{name}`` matches one path segment (or part of one); ``{name:yyyy/MM/dd}`` a date;
    ``*`` anything within a segment. Returns the regex and ``(name, strptime format)`` pairs.
    """
    body = fmt.lstrip("/")
    out = []
    names: list[tuple[str, str | None]] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "{":
            j = body.find("}", i)
            if j < 0:
                raise ValueError(f"partition format {fmt!r}: '{{' without '}}'")
            inner = body[i + 1 : j]
            name, _, datefmt = inner.partition(":")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ]*", name):
                raise ValueError(f"partition format {fmt!r}: bad column name {name!r}")
            if any(n == name for n, _ in names):
                raise ValueError(f"partition format {fmt!r}: column {name!r} appears twice")
            group = f"g{len(names)}"
            if datefmt:
                rx, strp = _date_pattern(datefmt)
                out.append(f"(?P<{group}>{rx})")
                names.append((name, strp))
            else:
                out.append(f"(?P<{group}>[^/]+?)")
                names.append((name, None))
            i = j + 1
        elif c == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    if not names:
        raise ValueError(f"partition format {fmt!r} names no column ({{Name}})")
    return re.compile(r"(?:^|/)" + "".join(out) + r"$"), tuple(names)


def _date_pattern(datefmt: str) -> tuple[str, str]:
    rx, strp = [], []
    i = 0
    while i < len(datefmt):
        for token, token_rx, token_strp in _DATE_TOKENS:
            if datefmt.startswith(token, i):
                rx.append(token_rx)
                strp.append(token_strp)
                i += len(token)
                break
        else:
            rx.append(re.escape(datefmt[i]))
            strp.append(datefmt[i].replace("%", "%%"))
            i += 1
    return "".join(rx), "".join(strp)


def partition_columns(fmt: str) -> tuple[str, ...]:
    """The column names a partition format defines, in order."""
    return tuple(name for name, _ in partition_regex(fmt)[1])


def match_partition_format(fmt: str, path: str) -> dict[str, str] | None:
    """The values (as written in the path) of the format's columns, or None if ``path`` does
    not end with the format."""
    rx, names = partition_regex(fmt)
    m = rx.search(path)
    if m is None:
        return None
    return {name: m.group(f"g{i}") for i, (name, _) in enumerate(names)}
