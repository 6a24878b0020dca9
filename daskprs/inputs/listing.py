"""Listing the files of an input (docs/job-files.md#file-lists): resolving paths and URLs to
fsspec filesystems (:class:`Storage`), walking folders (``os.scandir`` locally), matching globs
and MLTable ``paths:``, into sorted :class:`ListedFile` values.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import re
import stat
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, overload

from daskprs.errors import PlanningError
from daskprs.inputs.batches import FileStats, PackedPaths
from daskprs.inputs.filesystems import (
    AZURE_PROTOCOLS,
    filesystem,
    modified_time,
    store_problem,
    url_options,
)
from daskprs.inputs.mltable import MLTABLE_FILE, MLTableSpec, load_mltable
from daskprs.job.model import DataInput

__all__ = ["ListedFile", "Listing", "PackedListing", "Storage", "list_files", "list_input"]

_MAGIC = re.compile(r"[*?\[]")
# What a listing finds of one file: (path, path below the listed folder, size, mtime)
_Found = tuple[str, str, int | None, float | None]
_SKIP_HINT = "fix it (or its permissions), or move it out of the input"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)  # slots: a million of them in 100 MB less
class ListedFile:
    """A file of the input: ``url`` is what descriptors carry (an absolute local path or a full
    URL), ``rel`` the path relative to the input root (the sort key), ``size`` in bytes,
    ``mtime`` its modification time (:func:`~daskprs.inputs.filesystems.modified_time`) when
    the listing gave one."""

    url: str
    rel: str
    size: int | None = None
    mtime: float | None = None


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


class Storage:
    """Resolves paths and URLs to (filesystem, path); one filesystem per protocol."""

    def __init__(self, storage_options: Mapping | None, fs: Any):
        self.options = dict(storage_options or {})
        # options the caller gave (an Azure URL's account joins self.options, given or not)
        self.options_given = bool(self.options)
        self.given = fs
        self._cache: dict[str, Any] = {}
        self.remote = False
        # the URL last resolved on a remote store (None: a local path): what is read next
        # is read there, and an error reaching it names it (:meth:`reaching`)
        self.at: str | None = None

    @contextlib.contextmanager
    def reaching(self) -> Iterator[None]:
        """Turn an error reaching a remote store or refused by it (a connection refused, no
        such host, a timeout, TLS; no, wrong or refused credentials) into a
        :class:`PlanningError` naming the URL, what went wrong and where the endpoint and
        credentials come from: what the user gave is to fix (exit 2), not daskprs. Any other
        error, and any error of a local path, goes through as it is."""
        try:
            yield
        except Exception as err:
            problem = None if self.at is None else store_problem(self.at, err, self.options_given)
            if problem is None:
                raise
            raise PlanningError(problem) from err

    def resolve(self, url: str) -> tuple[Any, str]:
        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        self.at = None if protocol in ("file", "local") else url
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
            # the account of an Azure URL travels with the descriptors (their URLs lose it)
            self.options = {**url_options(url), **self.options}
            try:
                fs, _ = filesystem(url, self.options)
            except ValueError as err:
                if protocol in AZURE_PROTOCOLS:  # adlfs found no account or credentials
                    raise PlanningError(
                        f"{url}: cannot open the Azure storage account: {err}; name it in the "
                        "URL (abfs://<container>@<account>.dfs.core.windows.net/<path>) or set "
                        "AZURE_STORAGE_ACCOUNT_NAME (and a key, SAS token or connection string)"
                    ) from err
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
        if _is_local(fs):
            self.at = None
        else:
            self.remote = True
        return fs, fs._strip_protocol(url)

    def public(self, fs: Any, path: str) -> str:
        """The form descriptors carry: a plain absolute path locally, a full URL remotely."""
        return path if _is_local(fs) else fs.unstrip_protocol(path)

    @property
    def descriptor_options(self) -> Mapping[str, Any]:
        return dict(self.options) if self.remote else {}


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
    return any(p.startswith(".") for p in parts) or parts[-1] == MLTABLE_FILE


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


def _left_out(skipped: list[str] | None, path: str, what: str, err: OSError) -> None:
    """Note (in ``skipped`` and the log) an entry of the input that was left out, and why."""
    code = errno.errorcode.get(err.errno or 0, type(err).__name__)
    note = f"{path}: {what} ({code}: {err.strerror or err}); {_SKIP_HINT}"
    _note(skipped, note)


def _not_files(skipped: list[str] | None, paths: list[str]) -> None:
    """Note (in ``skipped`` and the log) the entries of the input left out because they are
    neither files nor folders: a named pipe, a socket or a device holds no data to read, and
    opening a pipe would wait for a writer (Azure lists files only)."""
    if not paths:
        return
    shown = ", ".join(paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")
    what, them = ("entry", "it") if len(paths) == 1 else ("entries", "them")
    note = (
        f"{len(paths)} {what} left out of the input: not a regular file (a named pipe, a "
        f"socket or a device): {shown}; move {them} out of the input folder"
    )
    _note(skipped, note)


def _note(skipped: list[str] | None, note: str) -> None:
    """``note`` in ``skipped``, whose notes the caller shows (the run's \"note:\" lines: a
    warning in the log as well showed each twice), else a warning in the log."""
    if skipped is not None:
        skipped.append(note)
        log.debug("%s", note)  # (for the run's own log, logs/sys/daskprs.log)
    else:
        log.warning("%s", note)


def _entries(it: Iterator[os.DirEntry], path: str, skip: Callable) -> Iterator[os.DirEntry]:
    """The entries of the open listing ``it`` of folder ``path``; one that fails part-way
    keeps what it listed before the error, which ``skip`` names."""
    while True:
        try:
            entry = next(it)
        except StopIteration:
            return
        except OSError as err:
            skip(path, "listing this folder failed part-way: the rest is left out", err)
            return
        yield entry


class PackedListing(Sequence[ListedFile]):
    """The files of a plain local folder in listing order, kept packed: their paths
    (:class:`~daskprs.inputs.batches.PackedPaths`) and what their ``stat`` found
    (:class:`~daskprs.inputs.batches.FileStats`), each :class:`ListedFile` made when it is
    read. A million files take about 50 bytes each (a tuple of ``ListedFile`` took 300)."""

    def __init__(self, root: str):
        self.root = root
        self._prefix = len(os.path.join(root, ""))
        self.paths = PackedPaths()
        self.stats = FileStats(array("q"), array("q"))
        self._irregular: set[int] = set()
        self._missing: set[int] = set()
        # nothing below the folder was hidden, left out, linked or odd (FileStats.complete)
        self.complete = True

    def add(self, folder: str, name: str, st: os.stat_result | None) -> None:
        """Add ``folder + name`` (``folder`` ends with ``/``) with its ``stat`` (None: none)."""
        if st is None:
            self.complete = False
            self._missing.add(len(self.paths))
            self.stats.sizes.append(0)
            self.stats.mtime_ns.append(0)
        else:
            if not stat.S_ISREG(st.st_mode):
                self.complete = False
                self._irregular.add(len(self.paths))
            self.stats.sizes.append(st.st_size)
            self.stats.mtime_ns.append(st.st_mtime_ns)
        self.paths.append(folder, name)

    def done(self) -> PackedListing:
        """Seal the listing (the odd entries into its stats)."""
        self.stats = FileStats(
            self.stats.sizes,
            self.stats.mtime_ns,
            frozenset(self._irregular),
            frozenset(self._missing),
            self.complete,
        )
        return self

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, i: int) -> ListedFile: ...
    @overload
    def __getitem__(self, i: slice) -> list[ListedFile]: ...
    def __getitem__(self, i: int | slice) -> ListedFile | list[ListedFile]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        path = self.paths[i]
        if i in self.stats.missing:
            return ListedFile(path, path[self._prefix :], 0, None)
        sec, nsec = divmod(self.stats.mtime_ns[i], 1_000_000_000)
        # the float os.stat_result.st_mtime holds, computed as CPython computes it
        return ListedFile(path, path[self._prefix :], self.stats.sizes[i], sec + nsec * 1e-9)


def _walk_local(folder: str, skipped: list[str] | None = None) -> PackedListing:
    """The files below ``folder`` that :func:`_hidden` keeps, in the order of their path
    below ``folder`` (code points), packed as they are found: each folder's names are sorted
    (a folder's as ``name/``, which orders its files as their paths would be) and its
    sub-folders walked in that order, so no list of the whole input is ever made or sorted.
    What ``LocalFileSystem.find(folder, detail=True)`` lists (filtered), at a fraction of
    its cost.

    As fsspec's walk, every entry that is not a folder counts as a file, symlinks included
    (a link's size and mtime are its target's; size 0 and no mtime when the target is
    missing); an entry gone before its ``stat`` is skipped. Unlike fsspec, a link to a folder
    is descended like a folder (users link data folders into an input), except into a folder
    it is already inside, so a link cycle ends. Dot-folders are not descended at all: every
    file below them is hidden anyway.

    An entry that cannot be examined (a link that loops back to itself, a folder that cannot
    be read) is left out alone, never with the folder around it: each is named in
    ``skipped`` (the plan's notes) and in the log. So are the entries that are neither files
    nor folders (a named pipe, a socket, a device, or a link to one), in one note."""
    out = PackedListing(folder)
    mltable_file = MLTABLE_FILE
    not_files: list[str] = []

    def skip(path: str, what: str, err: OSError) -> None:
        out.complete = False
        _left_out(skipped, path, what, err)

    def open_folder(path: str, above: frozenset) -> list | None:
        """``[folder with /, sorted names (a folder's with /), next index, above]``."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            out.complete = False
            return None  # gone since its folder was listed
        except OSError as err:
            skip(path, "folder left out of the input: it cannot be read", err)
            return None
        here = (st.st_dev, st.st_ino)
        if here in above:  # a link back into a folder we are in
            return None
        try:
            it = os.scandir(path)
        except FileNotFoundError:
            out.complete = False
            return None
        except OSError as err:
            skip(path, "folder left out of the input: it cannot be listed", err)
            return None
        names: list[str] = []
        with it:
            for entry in _entries(it, path, skip):
                name = entry.name
                if name[0] == ".":
                    out.complete = False
                    continue
                try:
                    if entry.is_symlink():
                        out.complete = False
                    if entry.is_dir(follow_symlinks=False) or (
                        entry.is_symlink() and entry.is_dir()
                    ):
                        names.append(name + "/")
                    elif name != mltable_file:
                        names.append(name)
                    else:
                        out.complete = False
                except FileNotFoundError:
                    out.complete = False
                    continue
                except OSError as err:  # ELOOP (a link to itself), EACCES (a locked target)
                    skip(entry.path, "left out of the input: it cannot be examined", err)
        names.sort()
        return [os.path.join(path, ""), names, 0, above | {here}]

    first = open_folder(folder, frozenset())
    stack = [first] if first is not None else []
    while stack:
        frame = stack[-1]
        base, names, i, above = frame
        if i == len(names):
            stack.pop()
            continue
        frame[2] = i + 1
        name = names[i]
        names[i] = ""  # each name goes as it is packed
        if name[-1] == "/":
            sub = open_folder(base + name[:-1], above)
            if sub is not None:
                stack.append(sub)
            continue
        path = base + name
        try:
            st: os.stat_result | None = os.stat(path)
        except FileNotFoundError:
            try:
                os.lstat(path)  # a link to nothing: listed with size 0, as fsspec does
            except FileNotFoundError:
                out.complete = False
                continue  # gone since its folder was listed
            except OSError as err:
                skip(path, "left out of the input: it cannot be examined", err)
                continue
            st = None
        except OSError as err:  # ELOOP (a link to itself), EACCES (a locked target)
            skip(path, "left out of the input: it cannot be examined", err)
            continue
        if st is not None and not stat.S_ISREG(st.st_mode):  # a pipe, socket, device
            out.complete = False
            not_files.append(path)
            continue
        out.add(base, name, st)
    _not_files(skipped, not_files)
    return out.done()


def _find(fs: Any, folder: str, skipped: list[str] | None = None) -> list[_Found]:
    """``(path, rel, size, mtime)`` of the files below ``folder``, hidden ones
    (:func:`_hidden`) left out; ``rel`` is relative to ``folder``."""
    if _plain_local(fs):
        listed = _walk_local(fs._strip_protocol(folder), skipped)
        return [(f.url, f.rel, f.size, f.mtime) for f in listed]
    base = folder.rstrip("/")
    out = []
    not_files = []
    for path, info in fs.find(folder, detail=True).items():
        if info.get("type") == "directory":
            continue
        rel = path[len(base) :].lstrip("/")
        if _hidden(rel):
            continue
        if info.get("type") == "other" and not info.get("islink"):  # a pipe, socket, device
            not_files.append(path)
            continue
        out.append((path, rel, info.get("size"), modified_time(info)))
    _not_files(skipped, not_files)
    return out


def _exists(fs: Any, path: str) -> bool:
    """Whether ``path`` exists; on an object store whose ``exists`` says no, ``info`` is asked
    too: s3fs answers a bucket alone (``s3://bucket``) with False whatever went wrong (an
    endpoint that cannot be reached, refused credentials), where ``info`` raises the error,
    which :meth:`Storage.reaching` names."""
    if fs.exists(path):
        return True
    if _is_local(fs):
        return False
    try:
        fs.info(path)
    except FileNotFoundError:
        return False
    return True


def _check_folder(fs: Any, folder: str, url: str) -> None:
    if not _exists(fs, folder):
        raise PlanningError(f"{url}: folder not found; check the path (and the MLTable paths)")
    if not fs.isdir(folder):
        raise PlanningError(f"{url}: is a file, not a folder; use 'file:' or type uri_file")


def _check_found(found: int, skipped: list[str], url: str) -> None:
    if not found and skipped:
        raise PlanningError(f"{url}: no file of the folder could be listed: " + "; ".join(skipped))
    if not found:
        raise PlanningError(
            f"{url}: the folder holds no files (dotfiles and MLTable files are not counted); "
            f"put the input files there or fix the path"
        )


def _list_folder(fs: Any, folder: str, url: str, skipped: list[str] | None = None) -> list[_Found]:
    _check_folder(fs, folder, url)
    here: list[str] = []
    out = _find(fs, folder, here)
    if skipped is not None:
        skipped += here
    _check_found(len(out), here, url)
    return out


def _list_pattern(
    fs: Any, pattern: str, url: str, skipped: list[str] | None = None
) -> list[_Found]:
    comps = pattern.split("/")
    first = next((i for i, c in enumerate(comps) if _MAGIC.search(c)), None)
    if first is None:  # no glob characters: the path itself
        if _exists(fs, pattern):
            if fs.isdir(pattern):
                return _list_folder(fs, pattern, url, skipped)
            return _list_file(fs, pattern, url)
        raise PlanningError(f"{url}: the pattern matches nothing; check the path")
    prefix = "/".join(comps[:first]) or ("/" if pattern.startswith("/") else "")
    rx = _glob_regex("/".join(comps[first:]))
    out = []
    if prefix and fs.isdir(prefix):
        out = [f for f in _find(fs, prefix, skipped) if rx.fullmatch(f[1])]
    if not out:
        raise PlanningError(
            f"{url}: the pattern matches no file (dotfiles are never matched); check the "
            f"pattern in the MLTable's paths"
        )
    return out


def _list_file(fs: Any, path: str, url: str, skipped: list[str] | None = None) -> list[_Found]:
    try:
        info = fs.info(path)
    except FileNotFoundError as err:
        raise PlanningError(f"{url}: file not found; check the path") from err
    if info.get("type") == "directory":
        raise PlanningError(f"{url}: is a folder, not a file; use 'folder:' or type uri_folder")
    if info.get("type") == "other":  # a link's target is examined: a pipe, socket, device
        raise PlanningError(
            f"{url}: not a regular file (a named pipe, a socket or a device holds no data to "
            "read); point the input at a file"
        )
    return [(path, posixpath.basename(path), info.get("size"), modified_time(info))]


@dataclass(frozen=True)
class Listing:
    """The files of an input, its root, its MLTable and what was left out (``skipped``:
    entries that could not be examined, one note each)."""

    files: Sequence[ListedFile]
    root: str
    spec: MLTableSpec | None
    skipped: tuple[str, ...] = ()


def _rel(path: str, root: str) -> str:
    if path == root:
        return posixpath.basename(path)
    if root in ("", "/"):
        return path.lstrip("/")
    if path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1 :]
    return posixpath.relpath(path, root) if path.startswith("/") == root.startswith("/") else path


def list_input(data: DataInput, storage: Storage) -> Listing:
    path = data.path
    if path.startswith("file://"):
        path = path[len("file://") :]
    fs, root = storage.resolve(path)
    entries: list[tuple[Any, _Found]] = []
    skipped: list[str] = []
    spec = None
    if data.type == "uri_file":
        entries = [(fs, f) for f in _list_file(fs, root, path)]
        root_dir = posixpath.dirname(root)
    elif data.type == "uri_folder":
        if _plain_local(fs):
            # One local walk, packed as it goes: its paths are unique and already public, and
            # in the order of their path relative to ``root`` (the plan's order)
            local = fs._strip_protocol(root)
            _check_folder(fs, root, path)
            packed = _walk_local(local, skipped)
            _check_found(len(packed), skipped, path)
            return Listing(packed, root, None, tuple(skipped))
        listed = _list_folder(fs, root, path, skipped)
        entries = [(fs, f) for f in listed]
        root_dir = root
    elif data.type == "mltable":
        if posixpath.basename(root.rstrip("/")) == MLTABLE_FILE:
            root = posixpath.dirname(root.rstrip("/"))
            path = posixpath.dirname(path.rstrip("/"))
        spec = load_mltable(path, fs=fs)
        root_dir = root
        for entry in spec.paths:
            efs, epath = storage.resolve(entry.path)
            where = f"{spec.source}: {entry.path}"
            lister = {"folder": _list_folder, "file": _list_file}.get(entry.kind, _list_pattern)
            entries += [(efs, f) for f in lister(efs, epath, where, skipped)]
    else:
        raise PlanningError(
            f"input '{data.name}': type {data.type!r} cannot be split; use uri_file, uri_folder "
            f"or mltable"
        )
    seen: set[str] = set()
    found: list[ListedFile] = []
    for efs, (p, _, size, mtime) in entries:
        url = storage.public(efs, p)
        if url in seen:
            continue
        seen.add(url)
        rel = _rel(p, root_dir) if efs is fs else url
        found.append(ListedFile(url=url, rel=rel, size=size, mtime=mtime))
    found.sort(key=lambda f: (f.rel, f.url))
    return Listing(tuple(found), storage.public(fs, root_dir), spec, tuple(dict.fromkeys(skipped)))


def list_files(
    data: DataInput, *, storage_options: Mapping | None = None, fs: Any = None
) -> tuple[ListedFile, ...]:
    """The files of an input, in plan order (docs/job-files.md#file-lists).

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
        A path is missing, a folder is empty, a pattern matches nothing, a protocol is unknown,
        an object store cannot be reached or refuses the credentials.
    """
    storage = Storage(storage_options, fs)
    with storage.reaching():
        return tuple(list_input(data, storage).files)
