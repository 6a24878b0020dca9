"""Mini-batch descriptors: small, picklable descriptions of what one ``run()`` call receives.

A descriptor names its data (paths, byte ranges, row groups, key values); nothing is read
until a worker loads it (:mod:`daskprs.inputs.readers`). Its ``index`` is the mini-batch id, and its
``repr`` is short enough to appear in logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["BatchLoadError", "FileBatch", "MiniBatch", "StagedBatch", "TableBatch", "TablePiece"]


class BatchLoadError(Exception):
    """Reading a mini-batch's data failed; the message names the file and range."""


@dataclass(frozen=True)
class FileBatch:
    """A mini-batch of whole files (file-list input).

    ``files`` are absolute local paths or URLs, in plan order. With ``direct`` the URLs are
    passed to ``run()`` as they are; otherwise remote files are downloaded to a worker-local
    cache and ``run()`` receives local paths.
    """

    index: int
    files: tuple[str, ...]
    direct: bool = False
    keys: Mapping[str, str] | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int | None:
        return len(self.files)

    def describe(self) -> dict[str, Any]:
        """What the mini-batch covers, for ``failed_mini_batches.jsonl``."""
        out: dict[str, Any] = {"files": list(self.files)}
        if self.keys is not None:
            out["keys"] = dict(self.keys)
        return out

    def __repr__(self) -> str:
        first = self.files[0] if self.files else "-"
        more = f" +{len(self.files) - 1}" if len(self.files) > 1 else ""
        return f"FileBatch({self.index}: {first}{more})"


@dataclass(frozen=True)
class TablePiece:
    """One piece of a tabular mini-batch: a byte range of a text file, or row groups of a
    parquet file.

    For delimited and JSON-lines files ``start``/``end`` are byte offsets cut at line (row)
    boundaries by the planner, so the piece holds whole rows only; ``end`` None means end of
    file. ``skip_header`` says the piece begins with the file's header line. For parquet,
    ``row_groups`` lists the row groups to read (None: all). ``n_rows`` is known when the
    planner learnt it from metadata (parquet footers, a row scan).

    ``file_size`` and ``file_mtime`` are the file's size and modification time when it was
    planned (None: not known, as in plans written before daskprs recorded them): a read checks
    them first, since cuts and row groups of a file rewritten since mean other rows.
    """

    path: str
    start: int = 0
    end: int | None = None
    skip_header: bool = False
    row_groups: tuple[int, ...] | None = None
    n_rows: int | None = None
    file_size: int | None = None
    file_mtime: float | None = None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.path}
        if self.row_groups is not None:
            out["row_groups"] = list(self.row_groups)
        else:
            out["start"] = self.start
            out["end"] = self.end
        if self.n_rows is not None:
            out["rows"] = self.n_rows
        return out


@dataclass(frozen=True)
class TableBatch:
    """A tabular mini-batch: one or more pieces read, concatenated and transformed into one
    pandas DataFrame by :func:`daskprs.inputs.readers.load_batch`.

    ``read`` holds the reader settings and transformations (see :mod:`daskprs.inputs.mltable`).
    ``row_lower_bound`` is the global index of its first row when known.
    """

    index: int
    pieces: tuple[TablePiece, ...]
    read: Any
    keys: Mapping[str, str] | None = None
    row_lower_bound: int | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int | None:
        rows = [p.n_rows for p in self.pieces if p.n_rows is not None]
        if len(rows) < len(self.pieces):  # a piece's row count is not known
            return None
        return sum(rows)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if len(self.pieces) == 1:
            out.update(self.pieces[0].describe())
        else:
            out["pieces"] = [p.describe() for p in self.pieces]
        if self.row_lower_bound is not None:
            out["row_lower_bound"] = self.row_lower_bound
        if self.keys is not None:
            out["keys"] = dict(self.keys)
        return out

    def __repr__(self) -> str:
        if not self.pieces:
            return f"TableBatch({self.index}: empty)"
        p = self.pieces[0]
        where = f"rg{list(p.row_groups)}" if p.row_groups is not None else f"[{p.start}:{p.end}]"
        more = f" +{len(self.pieces) - 1}" if len(self.pieces) > 1 else ""
        return f"TableBatch({self.index}: {p.path}{where}{more})"


@dataclass(frozen=True)
class StagedBatch:
    """One partition of a user's Dask collection, staged to a file (``daskprs.map_batches``).

    ``format`` is ``"parquet"`` (a DataFrame partition), ``"pickle"`` (a bag partition as a
    list, or a DataFrame pyarrow cannot store). ``rows`` is the partition's length, known from
    staging; ``row_lower_bound`` is the global index of its first row (DataFrames).
    """

    index: int
    path: str
    format: Literal["parquet", "pickle"]
    rows: int
    row_lower_bound: int | None = None
    keys: Mapping[str, str] | None = None

    @property
    def n_items(self) -> int | None:
        return self.rows

    def describe(self) -> dict[str, Any]:
        return {"partition": self.index, "file": self.path, "rows": self.rows}

    def __repr__(self) -> str:
        return f"StagedBatch({self.index}: partition {self.index}, {self.rows} rows)"


MiniBatch = FileBatch | TableBatch | StagedBatch
