"""The bytes of ``DataFrame.to_csv`` for plain frames, built column by column.

Writing a mini-batch's rows was most of a tabular try's time: pandas formats every float
through NumPy's ``astype(str)`` and then sends each row through the ``csv`` module. For a
frame whose columns are integers, booleans, 64-bit floats or plain strings, and the options
Azure uses (a separator, no header, no index), the same text comes from Python's own
``repr`` of each float (the digits NumPy prints), one ``str.join`` per row and one per chunk,
in about two thirds of the time.

:func:`csv_chunks` gives that text, or None when the frame or the options are anything else
(another dtype, a string that the ``csv`` module would quote, a float format, a header...);
the caller then uses pandas. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["CHUNK_ROWS", "csv_chunks"]

# Rows formatted at a time: bounds the memory of the per-column string lists.
CHUNK_ROWS = 100_000

# Options this path reproduces, and the values it reproduces them for. Separators and line
# ends are ones no number, boolean or ``na_rep`` here can contain, so that nothing this path
# writes would have been quoted.
_SEPARATORS = frozenset({" ", ",", "\t", ";", "|"})
_LINE_ENDS = frozenset({"\n", "\r\n"})
_KNOWN = frozenset({"sep", "header", "index", "lineterminator", "na_rep"})


def _usable_options(options: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """``(sep, lineterminator, na_rep)`` when the options are ones this path reproduces."""
    if set(options) - _KNOWN:
        return None
    sep = options.get("sep", ",")
    end = options.get("lineterminator", "\n")
    na_rep = options.get("na_rep", "")
    if options.get("header", True) is not False or options.get("index", True) is not False:
        return None
    if sep not in _SEPARATORS or end not in _LINE_ENDS or not isinstance(na_rep, str):
        return None
    if _needs_quotes(na_rep, sep):
        return None
    return sep, end, na_rep


def _needs_quotes(text: str, sep: str) -> bool:
    """Whether the ``csv`` module (QUOTE_MINIMAL) would quote a field holding ``text``."""
    return sep in text or '"' in text or "\n" in text or "\r" in text


class _Column:
    """How one column becomes strings: a formatter over a slice of its values."""

    def __init__(self, values: Any, kind: str, na_rep: str):
        self.values = values
        self.kind = kind
        self.na_rep = na_rep

    def strings(self, start: int, stop: int) -> list[str]:
        part = self.values[start:stop]
        if self.kind == "str":
            return part
        items = part.tolist()
        if self.kind == "float":
            out = list(map(float.__repr__, items))
            if self.na_rep != "nan":
                import numpy as np

                holes = np.flatnonzero(np.isnan(part))
                for i in holes.tolist():
                    out[i] = self.na_rep
            return out
        return list(map(str, items))  # integers; booleans give True / False


def _column(series: Any, sep: str, na_rep: str) -> _Column | None:
    """A formatter for ``series``, or None when pandas might write it differently."""
    import numpy as np
    import pandas as pd

    dtype = series.dtype
    if isinstance(dtype, np.dtype):
        if dtype.kind in "iub":
            return _Column(series.to_numpy(), "int", na_rep)
        if dtype == np.float64:
            return _Column(series.to_numpy(), "float", na_rep)
        if dtype.kind != "O" or pd.api.types.infer_dtype(series, skipna=False) != "string":
            return None
    elif not isinstance(dtype, pd.StringDtype) or series.hasnans:
        return None
    values = series.tolist()  # all strings: the dtype or infer_dtype said so
    if not values or "" in values:
        return None
    if _needs_quotes("".join(values), sep):
        return None
    return _Column(values, "str", na_rep)


def csv_chunks(frame: Any, options: Mapping[str, Any]) -> Iterator[str] | None:
    """The text ``frame.to_csv(**options)`` writes, in chunks, or None when this path cannot
    promise the same text.

    Parameters
    ----------
    frame : pandas.DataFrame
        A non-empty frame.
    options : mapping
        ``to_csv`` options (without ``path_or_buf`` and ``encoding``).

    Returns
    -------
    iterator of str or None
        Chunks whose concatenation equals pandas' text; None: use pandas.
    """
    usable = _usable_options(options)
    n_rows, n_cols = frame.shape
    if usable is None or n_rows == 0 or n_cols == 0:
        return None
    sep, end, na_rep = usable
    columns = []
    for j in range(n_cols):
        column = _column(frame.iloc[:, j], sep, na_rep)
        if column is None:
            return None
        columns.append(column)
    if n_cols == 1 and na_rep == "" and columns[0].kind == "float":
        # a row of one empty field is written as "" by the csv module
        if bool(frame.iloc[:, 0].isna().any()):
            return None
    return _chunks(columns, n_rows, sep, end)


def _chunks(columns: list[_Column], n_rows: int, sep: str, end: str) -> Iterator[str]:
    for start in range(0, n_rows, CHUNK_ROWS):
        stop = min(n_rows, start + CHUNK_ROWS)
        parts = [c.strings(start, stop) for c in columns]
        rows = parts[0] if len(parts) == 1 else map(sep.join, zip(*parts, strict=True))
        yield end.join(rows) + end
