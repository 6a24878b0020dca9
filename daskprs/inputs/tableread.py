"""Reading a tabular mini-batch: each piece's bytes ``[start, end)`` (or parquet row groups)
are read and parsed, transformed (:func:`daskprs.inputs.transforms.apply_transforms`) and
concatenated into one pandas DataFrame; and reading a staged partition of ``map_batches``.

Imported by :mod:`daskprs.inputs.readers` on the first table a process reads (it imports
pandas; pyarrow only when a parquet piece is read).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from daskprs.inputs.batches import BatchLoadError, StagedBatch, TableBatch, TablePiece
from daskprs.inputs.filesystems import filesystem, modified_time
from daskprs.inputs.tablemodel import TableRead
from daskprs.inputs.transforms import apply_transforms, csv_read_options, infer_dates

__all__ = ["check_unchanged", "load_staged", "load_table", "read_piece"]

# First window read to find a file's header line; doubled until a newline is found.
_HEADER_PROBE = 16 * 1024
_NAMED_HEADERS = ("all_files_same_headers", "from_first_file")


def load_staged(batch: StagedBatch) -> pd.DataFrame | list[Any]:
    import pickle

    try:
        if batch.format == "parquet":
            return pd.read_parquet(batch.path)
        fs, path = filesystem(batch.path)
        with fs.open(path, "rb") as f:
            return pickle.load(f)
    except Exception as err:
        raise BatchLoadError(
            f"reading the staged partition {batch.index} ({batch.path}) failed: "
            f"{type(err).__name__}: {err}"
        ) from err


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def _where(piece: TablePiece) -> str:
    if piece.row_groups is not None:
        return f"{piece.path} row groups {list(piece.row_groups)}"
    end = "end" if piece.end is None else piece.end
    return f"{piece.path} bytes [{piece.start}:{end})"


def _when(mtime: float | None) -> str:
    if mtime is None:
        return "modified at an unknown time"
    return f"modified {datetime.fromtimestamp(mtime, UTC):%Y-%m-%d %H:%M:%S.%f} UTC"


def _stamp(fs: Any, path: str) -> tuple[int | None, float | None]:
    """The size and modification time of ``path`` now, as the listing saw them when planning
    (one ``stat`` locally, one ``info`` call remotely; no data is read)."""
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        st = os.stat(path)  # a link's target, as the local listing stats it
        return st.st_size, st.st_mtime
    # Not from the listing cache: in the process that planned, it still holds what planning saw.
    fs.invalidate_cache(path)
    info = fs.info(path)
    return info.get("size"), modified_time(info)


def check_unchanged(piece: TablePiece, storage_options: Mapping[str, Any] | None = None) -> None:
    """Raise :class:`BatchLoadError` when the file of ``piece`` differs in size or
    modification time from what the plan recorded (nothing to check in a plan without them).

    A file rewritten while the job runs would otherwise be read at byte ranges (or row groups)
    planned for its old content: rows missing, rows twice, rows cut in two, and no error.
    """
    if piece.file_size is None and piece.file_mtime is None:
        return
    try:
        fs, path = filesystem(piece.path, storage_options or {})
        size, mtime = _stamp(fs, path)
    except FileNotFoundError as err:
        raise BatchLoadError(f"{piece.path}: file not found (it was listed when planning)") from err
    except Exception as err:
        raise BatchLoadError(
            f"{piece.path}: cannot check that it is unchanged since planning: "
            f"{type(err).__name__}: {err}"
        ) from err
    if (piece.file_size is None or size == piece.file_size) and (
        piece.file_mtime is None or mtime == piece.file_mtime
    ):
        return
    raise BatchLoadError(
        f"{piece.path}: input changed since planning: planned {piece.file_size} bytes, "
        f"{_when(piece.file_mtime)}; found {size} bytes, {_when(mtime)}. Its mini-batches were "
        f"cut for the old content, so they are not read. Keep the input unchanged while a job "
        f"runs, and run the job anew to process the new content."
    )


def load_table(batch: TableBatch) -> pd.DataFrame:
    frames = []
    for piece in batch.pieces:
        check_unchanged(piece, batch.storage_options)
        try:
            df = read_piece(piece, batch.read, batch.storage_options)
        except Exception as err:
            raise BatchLoadError(
                f"reading {_where(piece)} failed: {type(err).__name__}: {err}"
            ) from err
        # and after: a file rewritten while its range was read (truncated, then written
        # again) gave bytes of neither content, which the check before cannot see
        check_unchanged(piece, batch.storage_options)
        try:
            salt = f"{piece.path}:{piece.start}:{piece.row_groups}"
            df = apply_transforms(df, batch.read, piece.path, salt=salt)
        except Exception as err:
            raise BatchLoadError(
                f"reading {_where(piece)} failed: {type(err).__name__}: {err}"
            ) from err
        frames.append(df)
    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    return pd.concat(frames, ignore_index=True)


def read_piece(
    piece: TablePiece, read: TableRead, storage_options: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """The rows of one piece, parsed but not transformed."""
    fs, path = filesystem(piece.path, storage_options or {})
    if read.reader == "parquet":
        return _read_parquet(fs, path, piece)
    data = fs.cat_file(path, start=piece.start, end=piece.end)
    if read.reader == "json_lines":
        return _parse_json_lines(data, read)
    return _parse_delimited(data, read, piece, fs, path)


def _read_parquet(fs: Any, path: str, piece: TablePiece) -> pd.DataFrame:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        if piece.row_groups is None:
            table = pf.read()
        elif not piece.row_groups:
            table = pf.schema_arrow.empty_table()
        else:
            table = pf.read_row_groups(list(piece.row_groups))
    return table.to_pandas()


def _parse_json_lines(data: bytes, read: TableRead) -> pd.DataFrame:
    records = []
    for n, line in enumerate(data.decode(read.codec).split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError(f"a JSON {type(obj).__name__}, not an object")
        except ValueError as err:
            if read.invalid_lines == "drop":
                continue
            raise ValueError(
                f"line {n} of the range is not a JSON object ({err}); fix it or set "
                f"invalid_lines: drop"
            ) from err
        records.append(obj)
    if not records:
        return pd.DataFrame()
    return pd.DataFrame.from_records(records).infer_objects()


def _file_header(fs: Any, path: str, read: TableRead) -> list[str]:
    """Column names from the header line of ``path`` (read in small windows)."""
    n = _HEADER_PROBE
    while True:
        head = fs.cat_file(path, start=0, end=n)
        if b"\n" in head or len(head) < n:
            head = head.split(b"\n", 1)[0]
            break
        n *= 2
    opts = csv_read_options(read)
    opts.pop("dtype", None)
    try:
        return [str(c) for c in pd.read_csv(io.BytesIO(head), header=0, nrows=0, **opts).columns]
    except pd.errors.EmptyDataError:
        return []


def _parse_delimited(
    data: bytes, read: TableRead, piece: TablePiece, fs: Any, path: str
) -> pd.DataFrame:
    opts = csv_read_options(read)
    names: list[str] | None
    if read.header == "no_header":
        header, names = None, None
    else:
        if read.columns is not None and read.header in _NAMED_HEADERS:
            names = list(read.columns)
        elif piece.skip_header:
            names = None
        else:
            names = _file_header(fs, path, read)
        header = 0 if piece.skip_header else None
    try:
        df = pd.read_csv(io.BytesIO(data), header=header, names=names, **opts)
    except pd.errors.EmptyDataError:
        df = pd.DataFrame(columns=names or [])
    if read.header == "no_header":
        df.columns = [f"Column{i + 1}" for i in range(len(df.columns))]
    return infer_dates(df) if read.infer_column_types else df
