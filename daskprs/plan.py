"""Split the major input of a parallel step into mini-batch descriptors (SPEC section 3).

Planning works from metadata (DESIGN decision 1): file listings and sizes, a small probe
window at each cut point of a text file, parquet footers. Only a row-count split
(``5000rows``), ``support_multi_line`` and a global ``take``/``skip`` scan the data, streaming
with bounded memory; :attr:`Plan.scanned` says so.

The planner is pure apart from reading the filesystem; it returns a :class:`Plan` value and
writes nothing.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, Literal

from daskprs import mltable as mlt
from daskprs.batches import FileBatch, MiniBatch, TableBatch, TablePiece
from daskprs.errors import PlanningError
from daskprs.jobmodel import DataInput, MiniBatchSize

__all__ = [
    "DEFAULT_FILES_PER_BATCH",
    "DEFAULT_TABULAR_BYTES",
    "ListedFile",
    "Plan",
    "list_files",
    "plan_input",
]

DEFAULT_FILES_PER_BATCH = 10
DEFAULT_TABULAR_BYTES = 1024 * 1024

# Bytes read after a nominal cut point to find the next line end; doubled (up to
# _PROBE_MAX) while no newline is found. Rows are rarely longer than this; a longer probe
# only costs bytes, a shorter one a second request on object stores.
_PROBE_BYTES = 16 * 1024
_PROBE_MAX = 1024 * 1024
# Chunk size of the streaming scans (rows unit, multi-line, global take/skip).
_SCAN_CHUNK = 1024 * 1024

_MAGIC = re.compile(r"[*?\[]")
_NOT_GIVEN_MODES = (None, "", "direct")


@dataclass(frozen=True)
class ListedFile:
    """A file of the input: ``url`` is what descriptors carry (an absolute local path or a full
    URL), ``rel`` the path relative to the input root (the sort key), ``size`` in bytes."""

    url: str
    rel: str
    size: int | None = None


@dataclass(frozen=True)
class Plan:
    """The mini-batches of one input, in SPEC order (ids 0..n-1), and how they were found."""

    kind: Literal["files", "tabular"]
    batches: tuple[MiniBatch, ...]
    input_root: str
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    scanned: bool = False


# --------------------------------------------------------------------------------------------
# Filesystems
# --------------------------------------------------------------------------------------------


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


class _Storage:
    """Resolves paths and URLs to (filesystem, path); one filesystem per protocol."""

    def __init__(self, storage_options: Mapping | None, fs: Any):
        self.options = dict(storage_options or {})
        self.given = fs
        self._cache: dict[str, Any] = {}
        self.remote = False

    def resolve(self, url: str) -> tuple[Any, str]:
        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        if protocol == "azureml":
            raise PlanningError(
                f"{url}: an azureml:// URL reached the planner unresolved; map its datastore "
                f"in daskprs.yaml (datastores: {{<name>: <folder or URL>}}) or give a local "
                f"path or an fsspec URL"
            )
        if protocol == "memory":
            raise PlanningError(
                f"{url}: memory:// is not supported as an input (worker processes cannot see "
                f"it); write the data to a folder or an object store"
            )
        if self.given is not None:
            fs = self.given
        elif protocol in self._cache:
            fs = self._cache[protocol]
        else:
            import fsspec.core

            # A fresh instance per plan: fsspec's instance cache is keyed by thread, and a
            # reused thread id would hand back a filesystem built for other credentials or
            # another endpoint (seen with AWS_ENDPOINT_URL changing between runs).
            options = (
                {**self.options, "skip_instance_cache": True}
                if protocol not in ("file", "local")
                else {}
            )
            try:
                fs, _ = fsspec.core.url_to_fs(url, **options)
            except ValueError as err:
                raise PlanningError(
                    f"{url}: unknown protocol '{protocol}'; use a local path or an fsspec URL "
                    f"(s3://, gs://, abfs://, file://)"
                ) from err
            except ImportError as err:
                raise PlanningError(
                    f"{url}: the filesystem for '{protocol}://' is not installed ({err}); "
                    f"install its fsspec package"
                ) from err
            self._cache[protocol] = fs
        if not _is_local(fs):
            self.remote = True
        return fs, fs._strip_protocol(url)

    def public(self, fs: Any, path: str) -> str:
        """The form descriptors carry: a plain absolute path locally, a full URL remotely."""
        return path if _is_local(fs) else fs.unstrip_protocol(path)

    @property
    def descriptor_options(self) -> Mapping[str, Any]:
        return dict(self.options) if self.remote else {}


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern:
    """A regex for a glob relative to its folder: ``*``, ``?``, ``[a-z]``, ``[!a]``, ``**``."""
    comps = pattern.split("/")
    out: list[str] = []
    for i, comp in enumerate(comps):
        last = i == len(comps) - 1
        if comp == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_glob_component(comp))
        if not last:
            out.append("/")
    return re.compile("".join(out))


def _glob_component(comp: str) -> str:
    out, i = [], 0
    while i < len(comp):
        c = comp[i]
        if c == "*":
            while i + 1 < len(comp) and comp[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = comp.find("]", i + 2 if comp[i + 1 : i + 2] in ("!", "^") else i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                inner = comp[i + 1 : j]
                if inner[:1] in ("!", "^"):
                    inner = "^" + inner[1:]
                out.append("[" + inner.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _hidden(rel: str) -> bool:
    parts = rel.split("/")
    return any(p.startswith(".") for p in parts) or parts[-1] == mlt.MLTABLE_FILE


def _plain_local(fs: Any) -> bool:
    """True for fsspec's own local filesystem on a POSIX system, listing methods untouched:
    its listing can then be done with ``os.scandir`` (see :func:`_walk_local`)."""
    if os.sep != "/":
        return False
    from fsspec.implementations.local import LocalFileSystem

    cls = type(fs)
    return (
        isinstance(fs, LocalFileSystem)
        and cls.ls is LocalFileSystem.ls
        and cls.info is LocalFileSystem.info
        and cls.walk is LocalFileSystem.walk
        and cls.find is LocalFileSystem.find
        and cls._strip_protocol.__func__ is LocalFileSystem._strip_protocol.__func__
    )


def _walk_local(folder: str) -> list[tuple[str, str, int | None]]:
    """``(path, rel, size)`` of the files below ``folder`` that :func:`_hidden` keeps: what
    ``LocalFileSystem.find(folder, detail=True)`` lists (filtered), at a fraction of its cost.

    As fsspec's walk, every entry that is not a folder counts as a file, symlinks included
    (a link's size is its target's, 0 when the target is missing); an entry gone before its
    ``lstat`` is skipped; a folder that cannot be read is left out whole. Unlike fsspec, a
    link to a folder is descended like a folder (users link data folders into an input),
    except into a folder it is already inside, so a link cycle ends. Dot-folders are not
    descended at all: every file below them is hidden anyway.
    """
    out: list[tuple[str, str, int | None]] = []
    stack: list[tuple[str, str, frozenset]] = [(folder, "", frozenset())]
    mltable_file = mlt.MLTABLE_FILE
    while stack:
        path, prefix, above = stack.pop()
        try:
            st = os.stat(path)
        except OSError:
            continue
        here = (st.st_dev, st.st_ino)
        if here in above:  # a link back into a folder we are in
            continue
        above = above | {here}
        files: list[tuple[str, str, int | None]] = []
        dirs: list[tuple[str, str, frozenset]] = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    name = entry.name
                    if name[0] == ".":
                        continue
                    if entry.is_dir(follow_symlinks=False) or (
                        entry.is_symlink() and entry.is_dir()
                    ):
                        dirs.append((entry.path, f"{prefix}{name}/", above))
                        continue
                    if name == mltable_file:
                        continue
                    try:
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                    if entry.is_symlink():
                        try:
                            size = entry.stat().st_size
                        except OSError:
                            size = 0
                    files.append((entry.path, prefix + name, size))
        except OSError:
            continue
        out += files
        stack += dirs
    return out


def _find(fs: Any, folder: str) -> list[tuple[str, str, int | None]]:
    """``(path, rel, size)`` of the files below ``folder``, hidden ones (:func:`_hidden`)
    left out; ``rel`` is relative to ``folder``."""
    if _plain_local(fs):
        return _walk_local(fs._strip_protocol(folder))
    base = folder.rstrip("/")
    out = []
    for path, info in fs.find(folder, detail=True).items():
        if info.get("type") == "directory":
            continue
        rel = path[len(base) :].lstrip("/")
        if not _hidden(rel):
            out.append((path, rel, info.get("size")))
    return out


def _list_folder(fs: Any, folder: str, url: str) -> list[tuple[str, str, int | None]]:
    if not fs.exists(folder):
        raise PlanningError(f"{url}: folder not found; check the path (and the MLTable paths)")
    if not fs.isdir(folder):
        raise PlanningError(f"{url}: is a file, not a folder; use 'file:' or type uri_file")
    out = _find(fs, folder)
    if not out:
        raise PlanningError(
            f"{url}: the folder holds no files (dotfiles and MLTable files are not counted); "
            f"put the input files there or fix the path"
        )
    return out


def _list_pattern(fs: Any, pattern: str, url: str) -> list[tuple[str, int | None]]:
    comps = pattern.split("/")
    first = next((i for i, c in enumerate(comps) if _MAGIC.search(c)), None)
    if first is None:  # no glob characters: the path itself
        if fs.exists(pattern):
            if fs.isdir(pattern):
                return [(p, s) for p, _, s in _list_folder(fs, pattern, url)]
            return [(pattern, fs.size(pattern))]
        raise PlanningError(f"{url}: the pattern matches nothing; check the path")
    prefix = "/".join(comps[:first]) or ("/" if pattern.startswith("/") else "")
    rx = _glob_regex("/".join(comps[first:]))
    out = []
    if prefix and fs.isdir(prefix):
        out = [(path, size) for path, rel, size in _find(fs, prefix) if rx.fullmatch(rel)]
    if not out:
        raise PlanningError(
            f"{url}: the pattern matches no file (dotfiles are never matched); check the "
            f"pattern in the MLTable's paths"
        )
    return out


def _list_file(fs: Any, path: str, url: str) -> list[tuple[str, int | None]]:
    try:
        info = fs.info(path)
    except FileNotFoundError as err:
        raise PlanningError(f"{url}: file not found; check the path") from err
    if info.get("type") == "directory":
        raise PlanningError(f"{url}: is a folder, not a file; use 'folder:' or type uri_folder")
    return [(path, info.get("size"))]


@dataclass(frozen=True)
class _Listing:
    files: tuple[ListedFile, ...]
    root: str
    spec: mlt.MLTableSpec | None


def _rel(path: str, root: str) -> str:
    if path == root:
        return posixpath.basename(path)
    if root in ("", "/"):
        return path.lstrip("/")
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1 :]
    return posixpath.relpath(path, root) if path.startswith("/") == root.startswith("/") else path


def _list_input(data: DataInput, storage: _Storage) -> _Listing:
    path = data.path
    if path.startswith("file://"):
        path = path[len("file://") :]
    fs, root = storage.resolve(path)
    entries: list[tuple[Any, str, int | None]] = []
    spec = None
    if data.type == "uri_file":
        entries = [(fs, p, s) for p, s in _list_file(fs, root, path)]
        root_dir = posixpath.dirname(root)
    elif data.type == "uri_folder":
        listed = _list_folder(fs, root, path)
        if _plain_local(fs):
            # One local walk: its paths are unique and already public, and each ``rel`` is
            # relative to ``root`` (unique too, so it alone orders them).
            listed.sort(key=itemgetter(1))
            files = tuple([ListedFile(p, rel, s) for p, rel, s in listed])
            return _Listing(files, root, None)
        entries = [(fs, p, s) for p, _, s in listed]
        root_dir = root
    elif data.type == "mltable":
        if posixpath.basename(root.rstrip("/")) == mlt.MLTABLE_FILE:
            root = posixpath.dirname(root.rstrip("/"))
            path = posixpath.dirname(path.rstrip("/"))
        spec = mlt.load_mltable(path, fs=fs)
        root_dir = root
        for entry in spec.paths:
            efs, epath = storage.resolve(entry.path)
            where = f"{spec.source}: {entry.path}"
            if entry.kind == "folder":
                entries += [(efs, p, s) for p, _, s in _list_folder(efs, epath, where)]
            else:
                lister = _list_file if entry.kind == "file" else _list_pattern
                entries += [(efs, p, s) for p, s in lister(efs, epath, where)]
    else:
        raise PlanningError(
            f"input '{data.name}': type {data.type!r} cannot be split; use uri_file, uri_folder "
            f"or mltable"
        )
    seen: set[str] = set()
    files = []
    for efs, p, size in entries:
        url = storage.public(efs, p)
        if url in seen:
            continue
        seen.add(url)
        rel = _rel(p, root_dir) if efs is fs else url
        files.append(ListedFile(url=url, rel=rel, size=size))
    files.sort(key=lambda f: (f.rel, f.url))
    return _Listing(tuple(files), storage.public(fs, root_dir), spec)


def list_files(
    data: DataInput, *, storage_options: Mapping | None = None, fs: Any = None
) -> tuple[ListedFile, ...]:
    """The files of an input, in plan order (SPEC section 3, "File list").

    Recursive for folders; dotfiles (and files in dot-folders) and ``MLTable`` files are
    excluded; duplicates across MLTable ``paths:`` entries are removed; sorted by the path
    relative to the input root in code-point order.

    Parameters
    ----------
    data : DataInput
        The input; for ``mltable`` its ``paths:`` are resolved.
    storage_options : mapping, optional
        fsspec options for URLs (``{"key": ..., "secret": ..., "client_kwargs": ...}``).
    fs : fsspec filesystem, optional
        Use this filesystem for every path instead of resolving one from the URL.

    Raises
    ------
    PlanningError
        A path is missing, a folder is empty, a pattern matches nothing, a protocol is unknown.
    """
    return _list_input(data, _Storage(storage_options, fs)).files


# --------------------------------------------------------------------------------------------
# Reading a little of a file (probes) and scanning one (streams)
# --------------------------------------------------------------------------------------------


class _Prober:
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


def _row_ends(
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


def _cuts_by_probe(
    prober: _Prober, size: int, data_start: int, has_header: bool, max_bytes: int
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


def _cuts_by_rows(
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


def _header_names(fs: Any, path: str, size: int, read: mlt.TableRead) -> tuple[str, ...]:
    """Column names from a file's header line, parsed as pandas parses a whole file."""
    import pandas as pd

    if read.splittable:
        if read.support_multi_line:
            end = next(iter(_row_ends(fs, path, size, quoted=True)), (size, False))[0]
        else:
            end = _Prober(fs, path, size).line_end(0) or size
        data = fs.cat_file(path, start=0, end=end)
    else:
        data = fs.cat_file(path)
    opts = mlt.csv_read_options(read)
    opts.pop("dtype", None)
    try:
        cols = pd.read_csv(io.BytesIO(data), header=0, nrows=0, **opts).columns
    except pd.errors.EmptyDataError:
        return ()
    except Exception as err:
        raise PlanningError(f"{path}: cannot parse the header line: {err}") from err
    return tuple(str(c) for c in cols)


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


def _input_kind(data: DataInput, spec: mlt.MLTableSpec | None) -> tuple[str, list[str]]:
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
    listing: _Listing,
    size: MiniBatchSize | None,
    partition_keys: Sequence[str],
    options: Mapping[str, Any],
) -> tuple[FileBatch, ...]:
    direct = data.mode == "direct"
    urls = [f.url for f in listing.files]
    if partition_keys:
        groups = _group_by_keys(listing, partition_keys)
        return tuple(
            FileBatch(i, tuple(group), direct, dict(zip(partition_keys, key, strict=True)), options)
            for i, (key, group) in enumerate(groups)
        )
    if size is None:
        count = DEFAULT_FILES_PER_BATCH
    elif size.unit != "count":
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
    return tuple(
        FileBatch(i, tuple(urls[k : k + count]), direct, None, options)
        for i, k in enumerate(range(0, len(urls), count))
    )


def _group_by_keys(
    listing: _Listing, partition_keys: Sequence[str]
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
    columns = mlt.partition_columns(fmt)
    missing = [k for k in partition_keys if k not in columns]
    if missing:
        raise PlanningError(
            f"{where}: partition key(s) {missing} are not in the partition format {fmt!r} "
            f"(its columns: {list(columns)}); fix partition_keys or the format"
        )
    groups: dict[tuple[str, ...], list[str]] = {}
    for f in listing.files:
        # Matched against the path below the input root, so folders above it never count.
        values = mlt.match_partition_format(fmt, f.rel)
        if values is None:
            raise PlanningError(
                f"{f.url}: the path (below {listing.root}) does not match the partition format "
                f"{fmt!r} of {where}; move the file or restrict the MLTable's paths to "
                f"matching files"
            )
        groups.setdefault(tuple(values[k] for k in partition_keys), []).append(f.url)
    return sorted(groups.items())


def _global_window(read: mlt.TableRead) -> tuple[int, int | None, tuple[mlt.Transform, ...], bool]:
    """Fold the leading take/skip transforms into a global row window ``[lo, hi)``."""
    lo, hi = 0, None
    rest: list[mlt.Transform] = []
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
            if t.name not in mlt.ROW_PRESERVING:
                changed = True
            rest.append(t)
    return lo, hi, tuple(rest), found


class _TabularPlanner:
    def __init__(
        self,
        storage: _Storage,
        listing: _Listing,
        read: mlt.TableRead,
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
            rows = _row_ends(fs, path, size, quoted=read.support_multi_line, counter=counter)
            pieces = _cuts_by_rows(
                rows, size, has_header, max_bytes=self.max_bytes, max_rows=self.max_rows
            )
            self.bytes_read += counter[0]
            return [(s, e, n) for s, e, n in pieces]
        assert self.max_bytes is not None
        if size <= self.max_bytes:
            return [(0, size, None)]
        prober = _Prober(fs, path, size)
        data_start = 0
        if has_header:
            data_start = prober.line_end(0) or size
        cuts = _cuts_by_probe(prober, size, data_start, has_header, self.max_bytes)
        self.bytes_read += prober.bytes_read
        return [(s, e, None) for s, e in cuts]

    def _pieces_of(self, f: ListedFile, first: bool) -> list[TablePiece]:
        if self.read.reader == "parquet":
            if self.partition_keys:
                groups = self._parquet_groups(f)
                return [TablePiece(f.url, row_groups=None, n_rows=sum(n for _, n in groups))]
            return [TablePiece(f.url, row_groups=g, n_rows=n) for g, n in self._parquet_groups(f)]
        has_header = self.read.has_header(first)
        if self.partition_keys:
            size = f.size
            if size is None:
                fs, path = self._fs(f.url)
                size = fs.size(path)
            return [TablePiece(f.url, 0, size, skip_header=has_header)]
        return [
            TablePiece(f.url, s, e, skip_header=has_header and s == 0, n_rows=n)
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
                read = replace(read, columns=_header_names(fs, path, size, read))
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
                    pieces += [
                        replace(p, partition_values=keys) for p in self._pieces_of(f, pos == 0)
                    ]
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
        self, pieces: list[TablePiece], read: mlt.TableRead, options: Mapping[str, Any]
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
            local: list[mlt.Transform] = []
            if skip:
                local.append(mlt.Transform("skip", skip))
            if take < n - skip:
                local.append(mlt.Transform("take", take))
            piece_read = replace(read, transforms=(*local, *self.rest))
            batch = TableBatch(
                len(batches), (replace(p, n_rows=take),), piece_read, None, kept, options
            )
            batches.append(batch)
            kept += take
        if not batches:
            self.notes.append(f"{read.source}: take/skip leave no rows; nothing to run")
        return tuple(batches)


def plan_input(
    data: DataInput,
    mini_batch_size: MiniBatchSize | None,
    partition_keys: Sequence[str] = (),
    *,
    storage_options: Mapping | None = None,
    fs: Any = None,
) -> Plan:
    """Split the input ``data`` into mini-batch descriptors (SPEC section 3).

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
        input; the message names the file and the fix.
    """
    t0 = time.perf_counter()
    storage = _Storage(storage_options, fs)
    listing = _list_input(data, storage)
    kind, notes = _input_kind(data, listing.spec)
    if listing.spec is not None:
        notes = [*listing.spec.notes, *notes]
    scanned = False
    if kind == "files":
        batches: tuple[MiniBatch, ...] = _file_batches(
            data, listing, mini_batch_size, partition_keys, storage.descriptor_options
        )
    else:
        assert listing.spec is not None and listing.spec.read is not None
        planner = _TabularPlanner(
            storage, listing, listing.spec.read, mini_batch_size, partition_keys
        )
        batches = planner.plan()
        notes += planner.notes
        scanned = planner.scanned
        if scanned:
            notes.append(
                f"input '{data.name}': scanned {planner.bytes_read} bytes to count rows or find "
                f"safe cut points"
            )
    return Plan(
        kind=kind,  # type: ignore[arg-type]
        batches=batches,
        input_root=listing.root,
        notes=tuple(dict.fromkeys(notes)),
        seconds=time.perf_counter() - t0,
        scanned=scanned,
    )
