"""Azure's ``append_row_to`` format: how one ``run()`` return value becomes bytes.

Pure functions; pandas is only touched when the value is a DataFrame. The part options
(``to_csv``) carry one reserved key, :data:`PART_FORMAT`, that daskprs sets for
``daskprs.map_batches`` (never read from a settings file): its parts keep the returned rows
as data (:mod:`daskprs.results.structured`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, BinaryIO

__all__ = [
    "PART_FORMAT",
    "first_unwritable",
    "format_rows",
    "result_length",
    "structured_part_options",
    "write_rows",
]

# The reserved key of the part options: "structured" keeps rows as data (parquet or pickle).
PART_FORMAT = "daskprs.part_format"

_DEFAULT_TO_CSV = {"sep": " ", "header": False, "index": False, "lineterminator": "\n"}


def _is_dataframe(value: Any) -> bool:
    cls = type(value)
    return cls.__name__ == "DataFrame" and cls.__module__.startswith("pandas")


def result_length(value: Any) -> int | None:
    """Length of a valid ``run()`` return (list, tuple or pandas DataFrame), else None."""
    if isinstance(value, (list, tuple)) or _is_dataframe(value):
        return len(value)
    return None


def format_rows(value: Any, to_csv: Mapping[str, Any] | None = None) -> bytes:
    """Format a ``run()`` return value as Azure writes it to ``append_row_to``.

    List and tuple elements are written as ``str(element)`` and a newline; a DataFrame with
    ``to_csv(sep=" ", header=False, index=False)``, updated by ``to_csv`` (the options of
    ``parallel_run_step.settings.json``).

    Parameters
    ----------
    value : list, tuple or pandas.DataFrame
        What ``run()`` returned.
    to_csv : mapping, optional
        Overrides of the DataFrame ``to_csv`` options.

    Returns
    -------
    bytes
        UTF-8 text, every row ending in a newline.
    """
    buf = io.BytesIO()
    write_rows(value, buf, to_csv)
    return buf.getvalue()


def structured_part_options() -> dict[str, Any]:
    """The part options under which :func:`write_rows` keeps rows as data."""
    return {PART_FORMAT: "structured"}


def write_rows(value: Any, out: BinaryIO, to_csv: Mapping[str, Any] | None = None) -> None:
    """Write what :func:`format_rows` returns straight into the binary file ``out`` (no
    copy of the whole text in memory: a mini-batch's rows can be large).

    Under :func:`structured_part_options` the value is stored as data instead
    (:func:`daskprs.results.structured.write_structured`).
    """
    if to_csv and to_csv.get(PART_FORMAT) == "structured":
        from daskprs.results.structured import write_structured

        write_structured(value, out)
        return
    if _is_dataframe(value):
        options = {**_DEFAULT_TO_CSV, **(to_csv or {})}
        options.pop("path_or_buf", None)
        encoding = options.pop("encoding", "utf-8") or "utf-8"
        if len(value) == 0:
            return
        from daskprs.results.fastcsv import csv_chunks

        chunks = csv_chunks(value, options)
        if chunks is not None:  # the same text, without pandas' per-value formatting
            for chunk in chunks:
                out.write(chunk.encode(encoding))
            return
        text = io.TextIOWrapper(out, encoding=encoding, newline="")
        try:
            value.to_csv(text, **options)
            text.flush()
        finally:
            text.detach()  # leave ``out`` open for the caller
        return
    out.write("".join(f"{item}\n" for item in value).encode("utf-8"))


def first_unwritable(value: Any, to_csv: Mapping[str, Any] | None = None) -> int | None:
    """The position of the first element or row of ``value`` that :func:`write_rows` cannot
    write, to name it in the try's error.

    Found by halving the value (formatting about twice its rows in all): only called once a
    write has failed.

    Parameters
    ----------
    value : list, tuple or pandas.DataFrame
        What ``run()`` returned, whose write raised.
    to_csv : mapping, optional
        The part options the write used.

    Returns
    -------
    int or None
        The position (0 for the first), or None when the value writes, or when each half
        writes alone (the failure needs the rows together).
    """
    frame = _is_dataframe(value)

    def fails(start: int, stop: int) -> bool:
        piece = value.iloc[start:stop] if frame else value[start:stop]
        try:
            write_rows(piece, io.BytesIO(), to_csv)
        except Exception:
            return True
        return False

    start, stop = 0, len(value)
    if stop == 0 or not fails(start, stop):
        return None
    while stop - start > 1:
        middle = (start + stop) // 2
        if fails(start, middle):
            stop = middle
        elif fails(middle, stop):
            start = middle
        else:
            return None
    return start
