"""Split the major input of a parallel step into mini-batch descriptors
(docs/job-files.md#inputs): :func:`plan_input` lists the input (:mod:`daskprs.inputs.listing`)
and cuts it into a :class:`Plan` of file lists, parquet row groups or byte ranges of text files
(:mod:`daskprs.inputs.cuts`). Planning works from metadata
(docs/design.md#plan-from-metadata): file listings and sizes, a small probe window at each cut
point of a text file, parquet footers. Only a row-count split (``5000rows``),
``support_multi_line`` and a global ``take``/``skip`` scan the data, streaming with bounded
memory; :attr:`Plan.scanned` says so. The planner is pure apart from reading the filesystem; it
returns a :class:`Plan` value and writes nothing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from daskprs.errors import PlanningError
from daskprs.inputs.batches import FileBatch, FileBatches, MiniBatch, TableBatch, TablePiece
from daskprs.inputs.cuts import Prober, cuts_by_probe, cuts_by_rows, header_names, row_ends
from daskprs.inputs.filesystems import store_problem
from daskprs.inputs.listing import (
    ListedFile,
    Listing,
    PackedListing,
    Storage,
    list_files,
    list_input,
)
from daskprs.inputs.partitions import match_partition_format, partition_columns
from daskprs.inputs.tablemodel import ROW_PRESERVING, MLTableSpec, TableRead, Transform
from daskprs.job.model import DataInput, MiniBatchSize

__all__ = [
    "DEFAULT_FILES_PER_BATCH",
    "DEFAULT_TABULAR_BYTES",
    "ListedFile",
    "Plan",
    "list_files",
    "plan_input",
    "same_cuts",
]

DEFAULT_FILES_PER_BATCH = 10
DEFAULT_TABULAR_BYTES = 1024 * 1024
_NOT_GIVEN_MODES = (None, "", "direct")


@dataclass(frozen=True)
class Plan:
    """The mini-batches of one input, in mini-batch order (ids 0..n-1), and how they were found."""

    kind: Literal["files", "tabular"]
    # a tuple, or for a file list cut by count a compact :class:`FileBatches`
    batches: Sequence[MiniBatch]
    input_root: str
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    scanned: bool = False

    @functools.cached_property
    def by_index(self) -> Mapping[int, MiniBatch]:
        """The mini-batches by id (made once per plan; for :class:`FileBatches`, whose ids
        are their positions, a view that makes each descriptor when it is read)."""
        if isinstance(self.batches, FileBatches):
            return _Positions(self.batches)
        return {b.index: b for b in self.batches}

    def item_counts(self) -> Mapping[int, int | None]:
        """Each mini-batch's item count when the plan knows it, by id."""
        if isinstance(self.batches, FileBatches):
            return self.batches.item_counts()
        return {b.index: b.n_items for b in self.batches}


class _Positions(Mapping[int, MiniBatch]):
    """:class:`FileBatches` by id (an id is a position)."""

    def __init__(self, batches: FileBatches):
        self._batches = batches

    def __getitem__(self, mb: int) -> MiniBatch:
        if not (isinstance(mb, int) and 0 <= mb < len(self._batches)):
            raise KeyError(mb)
        return self._batches[mb]

    def __contains__(self, mb: object) -> bool:
        return isinstance(mb, int) and 0 <= mb < len(self._batches)

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._batches)))

    def __len__(self) -> int:
        return len(self._batches)

    def item_counts(self) -> Mapping[int, int | None]:
        """Each mini-batch's item count by id, without making the descriptors."""
        return self._batches.item_counts()


def _input_kind(
    data: DataInput, spec: MLTableSpec | None
) -> tuple[Literal["files", "tabular"], list[str]]:
    if data.type != "mltable" or spec is None or spec.read is None:
        return "files", []
    if data.mode in _NOT_GIVEN_MODES:
        return "tabular", []
    reader = {"delimited": "read_delimited", "parquet": "read_parquet"}.get(
        spec.read.reader, "read_json_lines"
    )
    return "files", [
        f"input '{data.name}': the MLTable has {reader} but mode {data.mode} was given, so "
        f"run() receives its files, not a DataFrame (omit the mode or use mode: direct for a "
        f"DataFrame)"
    ]


def _file_batches(
    data: DataInput,
    listing: Listing,
    size: MiniBatchSize | None,
    partition_keys: Sequence[str],
    options: Mapping[str, Any],
) -> Sequence[FileBatch]:
    direct = data.mode == "direct"
    if partition_keys:
        groups = _group_by_keys(listing, partition_keys)
        return tuple(
            FileBatch(i, tuple(group), direct, dict(zip(partition_keys, key, strict=True)), options)
            for i, (key, group) in enumerate(groups)
        )
    if size is None:
        count = DEFAULT_FILES_PER_BATCH
    elif size.unit != "count":
        spec = listing.spec
        if spec is not None and spec.read is not None and data.mode not in _NOT_GIVEN_MODES:
            # a table read as files because of its mode: the mode is the likely mistake
            raise PlanningError(
                f"{data.path}: mini_batch_size '{size}' is a size for tables, but input "
                f"'{data.name}' is read as a file list because mode {data.mode} was given: "
                "run() would receive the MLTable's files. Omit the mode (or use mode: direct) "
                "to read it as a table of about that size a mini-batch, or give a number of "
                f'files (mini_batch_size: "10") to keep the files'
            )
        raise PlanningError(
            f"{data.path}: mini_batch_size '{size}' has a unit, but input '{data.name}' is a "
            f"file list, where mini_batch_size counts files; write a number of files "
            f'(mini_batch_size: "10")'
        )
    else:
        count = size.value
    if count <= 0:
        raise PlanningError(
            f"{data.path}: mini_batch_size must be at least 1 file (0 is only allowed with "
            f"partition_keys)"
        )
    # packed: a million one-file mini-batches in tens of MB (docs/clusters.md); a local
    # folder's listing is packed already, and its stats serve the input's digests
    if isinstance(listing.files, PackedListing):
        return FileBatches(listing.files.paths, count, direct, options, listing.files.stats)
    return FileBatches([f.url for f in listing.files], count, direct, options)


def _group_by_keys(
    listing: Listing, partition_keys: Sequence[str]
) -> list[tuple[tuple[str, ...], list[str]]]:
    spec = listing.spec
    fmt = spec.partition_format if spec is not None else None
    where = spec.source if spec is not None else listing.root
    if fmt is None:
        raise PlanningError(
            f"{where}: partition_keys {list(partition_keys)} need an MLTable input with "
            f"'extract_columns_from_partition_format: {{partition_format: "
            f'"{{Store}}/{{Brand}}/{{file_name}}.csv"}}\' naming the keys'
        )
    columns = partition_columns(fmt)
    missing = [k for k in partition_keys if k not in columns]
    if missing:
        raise PlanningError(
            f"{where}: partition key(s) {missing} are not in the partition format {fmt!r} "
            f"(its columns: {list(columns)}); fix partition_keys or the format"
        )
    groups: dict[tuple[str, ...], list[str]] = {}
    for f in listing.files:
        # Matched against the path below the input root, so folders above it never count.
        values = match_partition_format(fmt, f.rel)
        if values is None:
            raise PlanningError(
                f"{f.url}: the path (below {listing.root}) does not match the partition format "
                f"{fmt!r} of {where}; move the file or restrict the MLTable's paths to "
                f"matching files"
            )
        groups.setdefault(tuple(values[k] for k in partition_keys), []).append(f.url)
    return sorted(groups.items())


def _global_window(read: TableRead) -> tuple[int, int | None, tuple[Transform, ...], bool]:
    """Fold the leading take/skip transforms into a global row window ``[lo, hi)``."""
    lo, hi = 0, None
    rest: list[Transform] = []
    changed = False
    found = False
    for t in read.transforms:
        if t.name in ("take", "skip"):
            if changed:
                raise PlanningError(
                    f"{read.source}: {t.name} after filter or take_random_sample is not yet "
                    f"supported (it needs the filtered row count); move it before them"
                )
            found = True
            if t.name == "skip":
                lo = lo + t.args if hi is None else min(lo + t.args, hi)
            else:
                hi = lo + t.args if hi is None else min(hi, lo + t.args)
        else:
            if t.name not in ROW_PRESERVING:
                changed = True
            rest.append(t)
    return lo, hi, tuple(rest), found


class _TabularPlanner:
    def __init__(
        self,
        storage: Storage,
        listing: Listing,
        read: TableRead,
        size: MiniBatchSize | None,
        partition_keys: Sequence[str],
    ):
        self.storage = storage
        self.listing = listing
        self.read = read
        self.partition_keys = tuple(partition_keys)
        self.notes: list[str] = []
        self.scanned = False
        self.bytes_read = 0
        self.max_bytes: int | None = None
        self.max_rows: int | None = None
        if size is None:
            self.max_bytes = DEFAULT_TABULAR_BYTES
        elif size.unit == "rows":
            self.max_rows = size.value
        else:
            self.max_bytes = size.value
        if not partition_keys and (self.max_bytes or self.max_rows or 0) <= 0:
            raise PlanningError(
                f"{read.source}: mini_batch_size must be above 0 for tabular input (0 is only "
                f"allowed with partition_keys)"
            )
        self.lo, self.hi, self.rest, self.windowed = _global_window(read)

    def _fs(self, url: str) -> tuple[Any, str]:
        return self.storage.resolve(url)

    # -- per file -------------------------------------------------------------------------

    def _parquet_groups(self, f: ListedFile) -> list[tuple[tuple[int, ...], int]]:
        import pyarrow.parquet as pq

        fs, path = self._fs(f.url)
        try:
            with fs.open(path, "rb") as fh:
                md = pq.ParquetFile(fh).metadata
        except Exception as err:
            if self.storage.at is not None and store_problem(f.url, err) is not None:
                raise  # the store's failure, not the file's: Storage.reaching names it
            raise PlanningError(
                f"{f.url}: cannot read the parquet footer ({type(err).__name__}: {err}); "
                f"is it a parquet file? restrict the MLTable's paths to parquet files"
            ) from err
        groups: list[tuple[tuple[int, ...], int]] = []
        cur: list[int] = []
        cur_rows = cur_bytes = 0
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            rg_bytes = sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))
            rg_rows = rg.num_rows
            fits = (self.max_rows is not None and cur_rows + rg_rows <= self.max_rows) or (
                self.max_bytes is not None and cur_bytes + rg_bytes <= self.max_bytes
            )
            if cur and not fits:
                groups.append((tuple(cur), cur_rows))
                cur, cur_rows, cur_bytes = [], 0, 0
            cur.append(i)
            cur_rows += rg_rows
            cur_bytes += rg_bytes
            if self.max_rows is not None and rg_rows > self.max_rows:
                self.notes.append(
                    f"{f.url}: row group {i} has {rg_rows} rows, more than mini_batch_size "
                    f"{self.max_rows}rows; row groups are never split"
                )
        groups.append((tuple(cur), cur_rows))
        return groups

    def _text_pieces(self, f: ListedFile, has_header: bool) -> list[tuple[int, int, int | None]]:
        fs, path = self._fs(f.url)
        size = f.size if f.size is not None else fs.size(path)
        read = self.read
        need_rows = self.max_rows is not None or self.windowed
        if not read.splittable:
            if need_rows:
                raise PlanningError(
                    f"{f.url}: a row count (rows unit or take/skip) is not supported for "
                    f"encoding {read.encoding}; use utf8"
                )
            self.notes.append(f"{f.url}: encoding {read.encoding} files are never cut")
            return [(0, size, None)]
        if need_rows or (read.support_multi_line and size > (self.max_bytes or 0)):
            self.scanned = True
            counter = [0]
            rows = row_ends(fs, path, size, quoted=read.support_multi_line, counter=counter)
            pieces = cuts_by_rows(
                rows, size, has_header, max_bytes=self.max_bytes, max_rows=self.max_rows
            )
            self.bytes_read += counter[0]
            return [(s, e, n) for s, e, n in pieces]
        assert self.max_bytes is not None
        if size <= self.max_bytes:
            return [(0, size, None)]
        prober = Prober(fs, path, size)
        data_start = 0
        if has_header:
            data_start = prober.line_end(0) or size
        cuts = cuts_by_probe(prober, size, data_start, has_header, self.max_bytes)
        self.bytes_read += prober.bytes_read
        return [(s, e, None) for s, e in cuts]

    def _pieces_of(self, f: ListedFile, first: bool) -> list[TablePiece]:
        # The listing's size and mtime, which every read of the file checks before it trusts
        # a byte range or a row group planned here.
        stamp: dict[str, Any] = {"file_size": f.size, "file_mtime": f.mtime}
        if self.read.reader == "parquet":
            if self.partition_keys:
                groups = self._parquet_groups(f)
                rows = sum(n for _, n in groups)
                return [TablePiece(f.url, row_groups=None, n_rows=rows, **stamp)]
            return [
                TablePiece(f.url, row_groups=g, n_rows=n, **stamp)
                for g, n in self._parquet_groups(f)
            ]
        has_header = self.read.has_header(first)
        if self.partition_keys:
            size = f.size
            if size is None:
                fs, path = self._fs(f.url)
                size = fs.size(path)
            return [TablePiece(f.url, 0, size, skip_header=has_header, **stamp)]
        return [
            TablePiece(f.url, s, e, skip_header=has_header and s == 0, n_rows=n, **stamp)
            for s, e, n in self._text_pieces(f, has_header)
        ]

    # -- whole input ----------------------------------------------------------------------

    def plan(self) -> tuple[TableBatch, ...]:
        read = self.read
        files = self.listing.files
        if read.reader == "delimited" and read.header in (
            "all_files_same_headers",
            "from_first_file",
        ):
            first = next((f for f in files if f.size is None or f.size > 0), None)
            if first is not None:
                fs, path = self._fs(first.url)
                size = first.size if first.size is not None else fs.size(path)
                read = replace(read, columns=header_names(fs, path, size, read))
                self.read = read
        options = self.storage.descriptor_options
        if self.partition_keys:
            if self.windowed:
                raise PlanningError(
                    f"{read.source}: take/skip with partition_keys is not yet supported; "
                    f"remove one of them"
                )
            urls_by_key = _group_by_keys(self.listing, self.partition_keys)
            by_url = {f.url: (i, f) for i, f in enumerate(files)}
            batches = []
            for i, (key, urls) in enumerate(urls_by_key):
                keys = dict(zip(self.partition_keys, key, strict=True))
                pieces = []
                for url in urls:
                    pos, f = by_url[url]
                    pieces += self._pieces_of(f, pos == 0)
                batches.append(TableBatch(i, tuple(pieces), read, keys, None, options))
            return tuple(batches)
        pieces = [p for i, f in enumerate(files) for p in self._pieces_of(f, i == 0)]
        if self.windowed:
            return self._windowed_batches(pieces, read, options)
        known = all(p.n_rows is not None for p in pieces)
        batches, row = [], 0
        for i, p in enumerate(pieces):
            batches.append(TableBatch(i, (p,), read, None, row if known else None, options))
            row += p.n_rows or 0
        return tuple(batches)

    def _windowed_batches(
        self, pieces: list[TablePiece], read: TableRead, options: Mapping[str, Any]
    ) -> tuple[TableBatch, ...]:
        """Rewrite a global take/skip into per-mini-batch ones using the piece row counts."""
        batches: list[TableBatch] = []
        row = kept = 0
        for p in pieces:
            n = p.n_rows or 0
            p_start, p_end = row, row + n
            row = p_end
            first = max(self.lo, p_start)
            last = p_end if self.hi is None else min(self.hi, p_end)
            if last <= first:
                continue
            skip, take = first - p_start, last - first
            local: list[Transform] = []
            if skip:
                local.append(Transform("skip", skip))
            if take < n - skip:
                local.append(Transform("take", take))
            piece_read = replace(read, transforms=(*local, *self.rest))
            batch = TableBatch(
                len(batches), (replace(p, n_rows=take),), piece_read, None, kept, options
            )
            batches.append(batch)
            kept += take
        if not batches:
            self.notes.append(f"{read.source}: take/skip leave no rows; nothing to run")
        return tuple(batches)


def _unstamped(batch: MiniBatch) -> MiniBatch:
    if not isinstance(batch, TableBatch):
        return batch
    pieces = tuple(replace(p, file_size=None, file_mtime=None) for p in batch.pieces)
    return replace(batch, pieces=pieces)


def same_cuts(a: Sequence[MiniBatch], b: Sequence[MiniBatch]) -> bool:
    """Whether two plans cut the input alike: the same mini-batches over the same byte ranges,
    row groups and files, whatever the files' sizes and times recorded in them (a file touched
    since it was planned). Mini-batch ids then still mean the same inputs."""
    return len(a) == len(b) and all(
        _unstamped(x) == _unstamped(y) for x, y in zip(a, b, strict=True)
    )


def _empty_files_note(listing: Listing, shown: int = 5) -> list[str]:
    """A note naming the tabular input's empty files: they give no rows, so their mini-batches
    end with 0 items and ``run()`` never sees them (an input of only empty files makes an
    empty output)."""
    empty = [f.url for f in listing.files if f.size == 0]
    if not empty:
        return []
    names = ", ".join(empty[:shown]) + (f" and {len(empty) - shown} more" if empty[shown:] else "")
    if len(empty) == len(listing.files):
        return [
            f"every input file is empty (0 bytes), so run() is never called and the "
            f"append_row_to output, if any, is empty: {names}"
        ]
    return [f"{len(empty)} of {len(listing.files)} input files are empty (0 bytes): {names}"]


def plan_input(
    data: DataInput,
    mini_batch_size: MiniBatchSize | None,
    partition_keys: Sequence[str] = (),
    *,
    storage_options: Mapping | None = None,
    fs: Any = None,
) -> Plan:
    """Split the input ``data`` into mini-batch descriptors (docs/job-files.md#inputs).

    Parameters
    ----------
    data : DataInput
        The step's ``input_data`` input, already resolved (absolute path or URL).
    mini_batch_size : MiniBatchSize or None
        None: 10 files for a file list, 1 MB for tabular input.
    partition_keys : sequence of str
        One mini-batch per distinct key combination (overrides ``mini_batch_size``).
    storage_options : mapping, optional
        fsspec options for URLs; copied onto the descriptors of remote inputs so workers can
        read them (never logged).
    fs : fsspec filesystem, optional
        Use this filesystem for every path (tests count the bytes it reads).

    Returns
    -------
    Plan
        ``kind`` "files" (:class:`FileBatch`) or "tabular" (:class:`TableBatch`).

    Raises
    ------
    PlanningError
        Missing path, empty folder, a pattern matching nothing, a corrupt parquet footer,
        an unresolved ``azureml://`` URL, an unknown protocol, a unit that does not fit the
        input, an object store that cannot be reached or refuses the credentials; the
        message names the file and the fix.
    """
    t0 = time.perf_counter()
    storage = Storage(storage_options, fs)
    with storage.reaching():  # a store that cannot be reached: exit 2, naming it
        listing = list_input(data, storage)
    kind, notes = _input_kind(data, listing.spec)
    if listing.spec is not None:
        notes = [*listing.spec.notes, *notes]
    notes = [*listing.skipped, *notes]
    scanned = False
    if kind == "files":
        batches: Sequence[MiniBatch] = _file_batches(
            data, listing, mini_batch_size, partition_keys, storage.descriptor_options
        )
    else:
        assert listing.spec is not None and listing.spec.read is not None
        planner = _TabularPlanner(
            storage, listing, listing.spec.read, mini_batch_size, partition_keys
        )
        with storage.reaching():  # (it reads footers, headers and cut points)
            batches = planner.plan()
        notes += planner.notes
        notes += _empty_files_note(listing)
        scanned = planner.scanned
        if scanned:
            notes.append(
                f"input '{data.name}': scanned {planner.bytes_read} bytes to count rows or find "
                f"safe cut points"
            )
    return Plan(
        kind=kind,
        batches=batches,
        input_root=listing.root,
        notes=tuple(dict.fromkeys(notes)),
        seconds=time.perf_counter() - t0,
        scanned=scanned,
    )
