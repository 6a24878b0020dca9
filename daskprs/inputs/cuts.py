"""Safe cut points in text files: probing small windows for line ends (:class:`Prober`),
streaming row scans (:func:`row_ends`), the byte ranges they give, and a file's header names.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

from daskprs.errors import PlanningError
from daskprs.inputs.tablemodel import TableRead

__all__ = ["Prober", "cuts_by_probe", "cuts_by_rows", "header_names", "row_ends"]

# Bytes read after a nominal cut point to find the next line end; doubled (up to
# _PROBE_MAX) while no newline is found. Rows are rarely longer than this; a longer probe
# only costs bytes, a shorter one a second request on object stores.
_PROBE_BYTES = 16 * 1024
_PROBE_MAX = 1024 * 1024
# Chunk size of the streaming scans (rows unit, multi-line, global take/skip).
_SCAN_CHUNK = 1024 * 1024


class Prober:
    """Finds line ends near cut points by reading small windows, never the whole file."""

    def __init__(self, fs: Any, path: str, size: int):
        self.fs, self.path, self.size = fs, path, size
        self.buf = b""
        self.buf_start = 0
        self.bytes_read = 0

    def _fill(self, pos: int, n: int) -> None:
        self.buf = self.fs.cat_file(self.path, start=pos, end=min(pos + n, self.size))
        self.buf_start = pos
        self.bytes_read += len(self.buf)

    def _byte(self, pos: int) -> bytes:
        if not self.buf_start <= pos < self.buf_start + len(self.buf):
            self._fill(pos, _PROBE_BYTES)
        i = pos - self.buf_start
        return self.buf[i : i + 1]

    def line_end(self, pos: int) -> int | None:
        """The offset just past the first ``\\n`` at or after ``pos``, moved past any blank
        lines that follow (so the next range starts with a row); None if there is none."""
        window = _PROBE_BYTES
        while pos < self.size:
            if not self.buf_start <= pos < self.buf_start + len(self.buf):
                self._fill(pos, window)
                if not self.buf:
                    return None
                window = min(window * 2, _PROBE_MAX)
            i = self.buf.find(b"\n", pos - self.buf_start)
            if i >= 0:
                return self._skip_blank(self.buf_start + i + 1)
            pos = self.buf_start + len(self.buf)
        return None

    def _skip_blank(self, end: int) -> int:
        while end < self.size:
            b = self._byte(end)
            if b == b"\n":
                end += 1
            elif b == b"\r" and end + 1 < self.size and self._byte(end + 1) == b"\n":
                end += 2
            else:
                break
        return end


_QUOTED = re.compile(rb'"[^"]*(?:"|\Z)|\n')


def row_ends(
    fs: Any, path: str, size: int, *, quoted: bool, counter: list[int] | None = None
) -> Iterator[tuple[int, bool]]:
    """Stream a text file and yield ``(offset past the row end, row is blank)`` per row.

    With ``quoted``, a newline inside a double-quoted field does not end a row. Memory stays
    bounded by the chunk size. A blank row is an empty line (or a lone ``\\r``), which
    :func:`pandas.read_csv` skips.
    """
    row_start = 0
    in_quote = False
    last_byte = b""
    with fs.open(path, "rb") as fh:
        base = 0
        while base < size:
            chunk = fh.read(_SCAN_CHUNK)
            if not chunk:
                break
            if counter is not None:
                counter[0] += len(chunk)
            i = 0
            if quoted:
                if in_quote:
                    j = chunk.find(b'"')
                    if j < 0:
                        base += len(chunk)
                        last_byte = chunk[-1:]
                        continue
                    in_quote = False
                    i = j + 1
                ends = []
                for m in _QUOTED.finditer(chunk, i):
                    tok = m.group()
                    if tok == b"\n":
                        ends.append(m.end())
                    elif len(tok) == 1 or not tok.endswith(b'"'):
                        in_quote = True
            else:
                ends = [m.end() for m in re.finditer(rb"\n", chunk)]
            for e in ends:
                end = base + e
                length = end - row_start
                if length == 1:
                    blank = True
                elif length == 2:
                    prev = chunk[e - 2 : e - 1] if e >= 2 else last_byte
                    blank = prev == b"\r"
                else:
                    blank = False
                yield end, blank
                row_start = end
            base += len(chunk)
            last_byte = chunk[-1:]
    if row_start < size:
        yield size, (size - row_start == 1 and last_byte == b"\r")


def cuts_by_probe(
    prober: Prober, size: int, data_start: int, has_header: bool, max_bytes: int
) -> list[tuple[int, int]]:
    """Byte ranges of about ``max_bytes`` cut just after a newline (never inside a line)."""
    pieces = []
    start, first = 0, True
    while True:
        nominal = start + max_bytes
        if first and has_header:
            nominal = max(nominal, data_start + 1)
        if nominal >= size:
            break
        cut = prober.line_end(nominal - 1)
        if cut is None or cut >= size:
            break
        pieces.append((start, cut))
        start, first = cut, False
    pieces.append((start, size))
    return pieces


def cuts_by_rows(
    rows: Iterator[tuple[int, bool]],
    size: int,
    has_header: bool,
    *,
    max_bytes: int | None = None,
    max_rows: int | None = None,
) -> list[tuple[int, int, int]]:
    """Ranges ``(start, end, rows)`` from a row scan, each holding at least one row."""
    pieces: list[tuple[int, int, int]] = []
    start, n, header = 0, 0, has_header
    for end, blank in rows:
        if header:
            header = False
            continue
        if not blank:
            n += 1
        if n and end < size:
            if (max_rows and n >= max_rows) or (max_bytes and end - start >= max_bytes):
                pieces.append((start, end, n))
                start, n = end, 0
    if pieces and n == 0:  # only blank lines after the last cut: join them to it
        s, _, rows_before = pieces.pop()
        pieces.append((s, size, rows_before))
    else:
        pieces.append((start, size, n))
    return pieces


def header_names(fs: Any, path: str, size: int, read: TableRead) -> tuple[str, ...]:
    """Column names from a file's header line, parsed as pandas parses a whole file."""
    import pandas as pd

    # imported here, as pandas: a file-list job's driver plans without them (issue 23)
    from daskprs.inputs.transforms import csv_read_options

    if read.splittable:
        if read.support_multi_line:
            end = next(iter(row_ends(fs, path, size, quoted=True)), (size, False))[0]
        else:
            end = Prober(fs, path, size).line_end(0) or size
        data = fs.cat_file(path, start=0, end=end)
    else:
        data = fs.cat_file(path)
    opts = csv_read_options(read)
    opts.pop("dtype", None)
    try:
        cols = pd.read_csv(io.BytesIO(data), header=0, nrows=0, **opts).columns
    except pd.errors.EmptyDataError:
        return ()
    except Exception as err:
        raise PlanningError(f"{path}: cannot parse the header line: {err}") from err
    return tuple(str(c) for c in cols)
