"""Mini-batch descriptors: small, picklable descriptions of what one ``run()`` call receives.

A descriptor names its data (paths, byte ranges, row groups, key values); nothing is read
until a worker loads it (:mod:`daskprs.inputs.readers`). Its ``index`` is the mini-batch id, and its
``repr`` is short enough to appear in logs.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

__all__ = [
    "BatchLoadError",
    "FileBatch",
    "FileBatches",
    "FileStats",
    "MiniBatch",
    "PackedPaths",
    "StagedBatch",
    "TableBatch",
    "TablePiece",
]


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


_ITER_BLOCK = 16384  # paths decoded at once by PackedPaths.__iter__


class PackedPaths(Sequence[str]):
    """Paths in one buffer, their folders kept once: a million one-file paths in about 25 MB
    where a tuple of strings took 90 MB. Made from ``paths``, or grown with :meth:`append`
    (a local listing adds each file as it finds it)."""

    def __init__(self, paths: Iterable[str] = ()):
        self._index: dict[str, int] = {}
        self._folders: list[str] = []
        self._folder = array("I")
        self._ends = array("q")
        self._names = bytearray()
        for path in paths:
            cut = path.rfind("/") + 1
            self.append(path[:cut], path[cut:])

    def append(self, folder: str, name: str) -> None:
        """Add the path ``folder + name`` (``folder`` ends with ``/``, ``name`` has none)."""
        at = self._index.get(folder)
        if at is None:
            at = self._index[folder] = len(self._folders)
            self._folders.append(folder)
        self._folder.append(at)
        self._names += name.encode("utf-8", "surrogateescape")
        self._ends.append(len(self._names))

    def __len__(self) -> int:
        return len(self._ends)

    def by_folder(self) -> list[tuple[str, array]]:
        """Each folder (with its ``/``) and the indices of its paths, in order."""
        if len(self._folders) == 1:
            return [(self._folders[0], array("q", range(len(self))))]
        groups: list[array] = [array("q") for _ in self._folders]
        for i, at in enumerate(self._folder):
            groups[at].append(i)
        return list(zip(self._folders, groups, strict=True))

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            lo, hi, step = i.indices(len(self))
            if step != 1:
                return [self[k] for k in range(lo, hi, step)]
            return list(self._decoded(lo, hi)) if hi > lo else []
        if i < 0:
            i += len(self)
        start = self._ends[i - 1] if i > 0 else 0
        name = self._names[start : self._ends[i]].decode("utf-8", "surrogateescape")
        return self._folders[self._folder[i]] + name

    def __iter__(self) -> Iterator[str]:
        """The paths in order, their names decoded a block at a time (reading each by
        index decodes one name a call: the input's digests read every path)."""
        n = len(self._ends)
        for lo in range(0, n, _ITER_BLOCK):
            yield from self._decoded(lo, min(n, lo + _ITER_BLOCK))

    def _decoded(self, lo: int, hi: int) -> Iterator[str]:
        """Paths ``lo`` to ``hi - 1`` (``lo < hi``), their names decoded in one call (a
        mini-batch's files are read as a slice: one decode, not one a name)."""
        folders, at, ends, names = self._folders, self._folder, self._ends, self._names
        base = ends[lo - 1] if lo else 0
        raw = names[base : ends[hi - 1]]
        text = raw.decode("utf-8", "surrogateescape")
        if len(text) != len(raw):  # a name beyond ASCII: its offsets are not the text's
            yield from (self[i] for i in range(lo, hi))
            return
        start = 0
        for i in range(lo, hi):
            end = ends[i] - base
            yield folders[at[i]] + text[start:end]
            start = end

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedPaths):
            return (
                self._names == other._names
                and self._ends == other._ends
                and [self._folders[i] for i in self._folder]
                == [other._folders[i] for i in other._folder]
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class FileStats:
    """What a local listing's ``stat`` found of each file, in listing order: its size and
    modification time in nanoseconds, the indices of the entries that are not regular files
    and of those no ``stat`` could be taken of (a link to nothing: size 0). The input's
    digests (``--resume``'s check, the step's reuse key) use them instead of a ``stat`` of
    their own."""

    sizes: array
    mtime_ns: array
    irregular: frozenset[int] = frozenset()
    missing: frozenset[int] = frozenset()
    # every entry below the listed folder is one of these files or a folder: none hidden,
    # left out or linked (the step's reuse key then digests the folder from them)
    complete: bool = False


class FileBatches(Sequence[FileBatch]):
    """The mini-batches of a file list, ``count`` files each (``per_batch``; the last may hold
    fewer), ids ``0..n-1``: a sequence of :class:`FileBatch` kept as one packed list of
    paths, each descriptor made when it is read.

    A tuple of a million ``FileBatch`` took about 350 bytes a mini-batch in the driver; this
    takes about 25 (``python -m benchmarks scale``). Equal to any sequence of the same
    descriptors.
    """

    def __init__(
        self,
        files: Iterable[str],
        count: int,
        direct: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        stats: FileStats | None = None,
    ):
        if count < 1:
            raise ValueError(f"a mini-batch holds at least one file, not {count}")
        self.files = files if isinstance(files, PackedPaths) else PackedPaths(files)
        self.per_batch = count
        self.direct = direct
        self.storage_options: Mapping[str, Any] = storage_options or {}
        self.stats = stats

    def __len__(self) -> int:
        return -(-len(self.files) // self.per_batch)

    @overload
    def __getitem__(self, i: int) -> FileBatch: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[FileBatch, ...]: ...
    def __getitem__(self, i: int | slice) -> FileBatch | tuple[FileBatch, ...]:
        if isinstance(i, slice):
            return tuple(self[k] for k in range(*i.indices(len(self))))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"mini-batch {i} of {n}")
        first = i * self.per_batch
        files = self.files[first : min(first + self.per_batch, len(self.files))]
        return FileBatch(i, tuple(files), self.direct, None, self.storage_options)

    def __iter__(self) -> Iterator[FileBatch]:
        return (self[i] for i in range(len(self)))

    def item_counts(self) -> Mapping[int, int | None]:
        """Each mini-batch's file count by id, without making the descriptors."""
        return _ItemCounts(len(self.files), self.per_batch)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FileBatches):
            return (
                self.per_batch == other.per_batch
                and self.direct == other.direct
                and dict(self.storage_options) == dict(other.storage_options)
                and self.files == other.files
            )
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash((len(self.files), self.per_batch, self.direct))

    def __repr__(self) -> str:
        return f"FileBatches({len(self)} of {self.per_batch} file(s))"


class _ItemCounts(Mapping[int, int | None]):
    """Item counts of :class:`FileBatches` by id, made when read."""

    def __init__(self, files: int, count: int):
        self._files, self._count = files, count
        self._n = -(-files // count)

    def __getitem__(self, i: int) -> int:
        if not (isinstance(i, int) and 0 <= i < self._n):
            raise KeyError(i)
        return min(self._count, self._files - i * self._count)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._n))

    def __len__(self) -> int:
        return self._n
