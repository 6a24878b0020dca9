"""Where the workers of one step run leave what the driver reads back: :class:`StepStore`.

Claims, hand-back markers, the driver's lease and, with staging, the parts and the logs. On a
filesystem every worker sees, the store is the step's folder in the run directory (``root`` a
local path; the standard library does the work). With ``--staging URL`` (workers that share no
filesystem with the driver: docs/clusters.md#workers-without-a-shared-filesystem) it is a
folder of that URL, reached through fsspec, one per run and step::

    <staging>/<run name>-<8 hex of its path>/steps/<step>/
        claims/00042.s0t1            one object per started try (an exclusive create)
        handback/00042.s0t1.back     a try handed back by a worker that closed (.rec: a record)
        parts/00042.s0t1.<hex>.part  the rows of a try, uploaded by its worker
        parts/00042.s0t1.<hex>.pack  the rows of the tries of a packed task, uploaded once
        logs/<step run token>/...    each worker's logs/ folder, uploaded as it grows
        lease                        rewritten by the driver while it runs the step

A claim is an exclusive create, so that a try Dask runs twice runs once. Locally that is a
hard link to a per-process file holding the claim's bytes (``claims/.claimant-<pid>-<hex>``, a
dot-name no claim or part takes), falling back to an ``O_EXCL`` create where the filesystem
has no hard links: a link fails like ``O_EXCL`` when the name exists but allocates no inode,
which on ext4 without a journal is slow after many files were deleted (10.4 s for 50,000
creates, 0.67 s for 50,000 links). On an object store it is the store's conditional
create (fsspec's ``"xb"`` mode: S3's ``If-None-Match: *``, a GCS generation match, Azure's
``If-None-Match``), which :meth:`StepStore.check` tries before the first try: a store that
lets a second create through is refused with a message, never used with claims it cannot
keep.

The standard library and fsspec only (imported when a URL is used): worker processes import
this.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = ["StepStore", "claim_name", "pack_name", "part_name", "run_staging", "staging_root"]

_CHUNK = 1 << 20

_log = logging.getLogger(__name__)

# Local claims are hard links to a template: a file of this process holding the claim's bytes,
# in the claim's folder (a link needs the same filesystem), named so that no claim or part
# takes its name and listers that skip dot-files skip it.
_TEMPLATE_PREFIX = ".claimant-"
# (folder, bytes) -> the template claims in that folder link to
_templates: dict[tuple[str, bytes], str] = {}
# folders whose filesystem refused a hard link: exclusive creates there from now on
_no_links: set[str] = set()
_lock = threading.Lock()
# links tried per claim (a template removed or full in between) before an exclusive create
_LINK_ATTEMPTS = 4


def _after_fork() -> None:
    """A forked child starts with its own lock (the parent's may have been held) and its own
    templates."""
    global _lock
    _lock = threading.Lock()
    _templates.clear()


os.register_at_fork(after_in_child=_after_fork)


def _create_exclusive(path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` with ``O_EXCL`` (its folder too): True when this call
    created it, False when it was there."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return _create_exclusive(path, data)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return True


def _new_template(folder: str, data: bytes) -> str:
    """A new template in ``folder`` holding ``data`` whole (FileNotFoundError: no folder)."""
    while True:
        path = os.path.join(folder, f"{_TEMPLATE_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:  # another host's process with the same pid and hex
            continue
        break
    try:
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return path


def _template(folder: str, data: bytes, stale: str | None) -> str:
    """The template of ``data`` in ``folder``: the cached one, or a new one when there is none
    or the cached one is ``stale`` (removed, or at its limit of links)."""
    key = (folder, data)
    with _lock:
        current = _templates.get(key)
        if current is not None and current != stale:
            return current
        try:
            made = _new_template(folder, data)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            made = _new_template(folder, data)
        _templates[key] = made
        return made


def _create_local(path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists, as a hard link to a template where
    the filesystem has them, else with ``O_EXCL``: True when this call created it, False when
    it was there."""
    folder = os.path.dirname(path)
    if folder in _no_links:
        return _create_exclusive(path, data)
    stale: str | None = None
    for _ in range(_LINK_ATTEMPTS):
        try:
            template = _template(folder, data, stale)
        except OSError:  # no template here: the exclusive create does as it did (or says why)
            return _create_exclusive(path, data)
        try:
            os.link(template, path)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the template (maybe with its folder) was removed
            stale = template
            continue
        except OSError as err:
            if err.errno == errno.EMLINK:  # the template has all the links it can have
                stale = template
                continue
            with _lock:
                first = folder not in _no_links
                _no_links.add(folder)
            if first:
                _log.debug(
                    "no hard links in %s (%s): claims there are exclusive creates", folder, err
                )
            return _create_exclusive(path, data)
        return True
    return _create_exclusive(path, data)


def claim_name(mb: int, try_key: str) -> str:
    """The claim of try ``try_key`` of mini-batch ``mb``, relative to the step's folder."""
    return f"claims/{mb:05d}.{try_key}"


def part_name(mb: int, try_key: str) -> str:
    """A new name for the part (rows) of try ``try_key`` of mini-batch ``mb``, relative to the
    step's folder. Each upload gets a name of its own: a try handed back by a closing worker
    runs again elsewhere, and the first worker's late upload must not replace the part the
    rerun's record names (as :func:`pack_name`)."""
    return f"parts/{mb:05d}.{try_key}.{uuid.uuid4().hex[:12]}.part"


def pack_name(mb: int, try_key: str) -> str:
    """A new name for the pack of a task whose first try is ``try_key`` of ``mb``, relative
    to the step's folder (:mod:`daskprs.results.packs`). Each upload gets a name of its own:
    a task Dask runs again elsewhere runs its handed-back tries into a pack of its own, and
    the first worker's late upload must not replace it."""
    return f"parts/{mb:05d}.{try_key}.{uuid.uuid4().hex[:12]}.pack"


def run_staging(staging: str, run_root: str) -> str:
    """The folder of the run in ``run_root`` under the staging URL ``staging``:
    ``<staging>/<run name>-<8 hex of the run directory's path>`` (two runs with the same name
    in different places never share one)."""
    digest = hashlib.sha256(os.path.abspath(run_root).encode()).hexdigest()[:8]
    name = f"{os.path.basename(os.path.normpath(run_root))}-{digest}"
    return f"{staging.rstrip('/')}/{name}"


def staging_root(staging: str, run_root: str, step: str) -> str:
    """The folder of ``step`` of the run in ``run_root`` under the staging URL ``staging``:
    ``<run's staging folder>/steps/<step>`` (:func:`run_staging`)."""
    return f"{run_staging(staging, run_root)}/steps/{step}"


@dataclass(frozen=True)
class StepStore:
    """The step's shared folder: local (``root`` a path) or staged (``root`` an fsspec URL).

    Paths given to the methods are relative to ``root`` (``"claims/00042.s0t1"``).
    """

    root: str

    @property
    def staged(self) -> bool:
        return "://" in self.root and not self.root.startswith("file://")

    def url(self, rel: str) -> str:
        """The full path or URL of ``rel``."""
        if self.staged:
            return f"{self.root}/{rel}"
        return os.path.join(self.root, rel)

    def _fs(self) -> tuple[Any, str]:
        from daskprs.inputs.filesystems import filesystem

        return filesystem(self.root)

    def _path(self, rel: str) -> tuple[Any, str]:
        fs, root = self._fs()
        return fs, f"{root}/{rel}"

    # -- objects -----------------------------------------------------------------------------
    def create(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` holding ``data`` (not empty) unless it exists: True when this call
        created it, False when it was there. Locally a hard link to this process's template
        of ``data`` in that folder (an ``O_EXCL`` create where the filesystem has no links)."""
        if not self.staged:
            return _create_local(self.url(rel), data)
        fs, path = self._path(rel)
        try:
            with fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True

    def put(self, rel: str, data: bytes) -> None:
        """Write ``rel`` whole, replacing it: readers see the old or the new bytes."""
        if not self.staged:
            path = self.url(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return
        fs, path = self._path(rel)
        fs.pipe_file(path, data)

    def get(self, rel: str) -> bytes | None:
        """The bytes of ``rel``, or None when there is none."""
        if not self.staged:
            try:
                with open(self.url(rel), "rb") as f:
                    return f.read()
            except (FileNotFoundError, NotADirectoryError):
                return None
        fs, path = self._path(rel)
        try:
            return fs.cat_file(path)
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        if not self.staged:
            return os.path.exists(self.url(rel))
        fs, path = self._path(rel)
        return bool(fs.exists(path))

    def remove(self, rel: str) -> None:
        """Remove ``rel`` (nothing when it is not there)."""
        if not self.staged:
            try:
                os.unlink(self.url(rel))
            except FileNotFoundError:
                pass
            return
        fs, path = self._path(rel)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass

    def take(self, rel: str) -> bytes | None:
        """Take ``rel`` once among all who try: its bytes for the one that took it, None for
        the others and when it is not there. Locally an atomic rename; staged, the exclusive
        create of ``<rel>.taken``."""
        if not self.staged:
            path = self.url(rel)
            taken = f"{path}.taken-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(path, taken)
            except FileNotFoundError:
                return None
            with open(taken, "rb") as f:
                return f.read()
        data = self.get(rel)
        if data is None or not self.create(f"{rel}.taken", b"taken"):
            return None
        return data

    def upload(self, local: str, rel: str) -> str:
        """Copy the local file ``local`` to ``rel`` and return its URL (or, in a folder every
        worker mounts, its path)."""
        if not self.staged:
            import shutil

            path = self.url(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            shutil.copyfile(local, path)
            return path
        fs, path = self._path(rel)
        fs.put_file(local, path)
        return self.url(rel)

    def files(self, rel: str) -> dict[str, int]:
        """Every file under folder ``rel``: its path relative to that folder, and its size."""
        if not self.staged:
            top = self.url(rel)
            found: dict[str, int] = {}
            for folder, _, names in os.walk(top):
                for name in names:
                    path = os.path.join(folder, name)
                    found[os.path.relpath(path, top)] = os.path.getsize(path)
            return found
        fs, path = self._path(rel)
        try:
            listing = fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        prefix = path.rstrip("/") + "/"
        return {
            name[len(prefix) :]: int(info.get("size") or 0)
            for name, info in listing.items()
            if name.startswith(prefix) and info.get("type") != "directory"
        }

    def read_from(self, rel: str, offset: int, out: Any) -> int:
        """Append the bytes of ``rel`` from ``offset`` on to the open binary file ``out``;
        return how many."""
        fs, path = self._path(rel) if self.staged else (None, self.url(rel))
        opened = fs.open(path, "rb") if fs is not None else open(path, "rb")
        copied = 0
        with opened as f:
            f.seek(offset)
            while chunk := f.read(_CHUNK):
                out.write(chunk)
                copied += len(chunk)
        return copied

    def remove_all(self) -> None:
        """Remove the step's folder and everything in it."""
        if not self.staged:
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)
            return
        fs, root = self._fs()
        try:
            fs.rm(root, recursive=True)
        except FileNotFoundError:
            pass

    # -- before the first try ----------------------------------------------------------------
    def check(self) -> str | None:
        """Whether this store can hold claims: None when it can, else what is wrong.

        Creates a probe object twice with an exclusive create; the second must be refused."""
        probe = f"probe-{uuid.uuid4().hex[:12]}"
        try:
            first = self.create(probe, b"daskprs probe")
            second = self.create(probe, b"daskprs probe")
        except Exception as err:  # anything the store says is the answer
            return f"cannot write there: {type(err).__name__}: {err}"
        finally:
            try:
                self.remove(probe)
                self.remove(f"{probe}.taken")
            except Exception:  # a probe left behind is harmless
                pass
        if not first:
            return "a new object was reported as existing"
        if second:
            return (
                "the store let a second exclusive create of one object through (it has no "
                "conditional create, or fsspec's driver for it does not use it)"
            )
        return None
