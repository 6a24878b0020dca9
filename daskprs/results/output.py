"""Assembling the ``append_row_to`` output from committed parts, in mini-batch order.

Workers write each successful try's rows to its own part file; the driver streams the
committed parts, in mini-batch order, into the output
(docs/design.md#results-never-travel-through-the-client). The output appears only when
complete: it is written beside its destination and renamed over it (on an object store,
uploaded in one piece once complete), so a crash never leaves a half-written output looking
finished. Driver memory stays flat: parts are copied in chunks.

While a fresh step runs, a :class:`PartialOutput` appends each committed part beside the
destination as soon as every mini-batch before it has ended, in a thread of its own, so the
copy overlaps the work instead of following it. :func:`assemble` continues that file when its
manifest shows the same leading parts (parts never change once committed), and starts over
otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import logging
import os
import queue
import threading
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from daskprs.inputs.filesystems import (
    AZURE_PROTOCOLS,
    filesystem,
    store_missing,
    store_problem,
)
from daskprs.results.packs import split_ref
from daskprs.rundir import write_json

__all__ = [
    "PartialOutput",
    "assemble",
    "discard",
    "is_url",
    "output_written",
    "partial_path",
    "record_output",
    "store_refusal",
    "store_unwritable",
    "temporary_path",
]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def is_url(path: str) -> bool:
    """True for fsspec URLs (``s3://...``), False for local paths."""
    return "://" in path and not path.startswith("file://")


def _open_part(part: str):
    """A part to read: a local file, or a staged one (an fsspec URL: ``--staging``)."""
    if not is_url(part):
        return open(part, "rb")
    fs, path = filesystem(part)
    try:
        return fs.open(path, "rb")
    except FileNotFoundError as err:  # named by its URL, as the ledger names it
        raise FileNotFoundError(errno.ENOENT, "no such part", part) from err


def _ranges(parts: Iterable[str]) -> Iterator[tuple[str, int, int | None]]:
    """``(file, offset, length)`` to copy for each part in turn (None: the whole file), the
    consecutive ranges of one pack joined into one (:mod:`daskprs.results.packs`)."""
    held: tuple[str, int, int] | None = None
    for part in parts:
        path, offset, length = split_ref(part)
        if held is not None:
            if length is not None and path == held[0] and offset == held[1] + held[2]:
                held = (path, held[1], held[2] + length)
                continue
            yield held
            held = None
        if length is None:
            yield path, offset, None
        else:
            held = (path, offset, length)
    if held is not None:
        yield held


def _copy_parts(parts: Iterable[str], out, local: bool = True, held: list | None = None) -> int:
    """Append each part to the open binary file ``out``; return the bytes copied.

    Where ``out`` and a part are local files the kernel copies (``os.copy_file_range``: no
    trip through Python, and a reflink on filesystems that have them); otherwise in chunks,
    so memory stays flat for parts and outputs on object stores too. A part that is a range
    of a pack is copied from its offset; a pack's consecutive ranges in one go, the pack
    opened once while its ranges follow one another. ``held`` (``[path, file]``), when
    given, is the file the last call left open, taken and left open for the next one (the
    caller closes it: :class:`PartialOutput` copies a pack's ranges over many calls).
    """
    written = 0
    in_kernel = local and hasattr(os, "copy_file_range")
    src: Any = None
    src_path = None
    if held:
        src_path, src = held
        held.clear()
    try:
        for path, offset, length in _ranges(parts):
            if src is None or path != src_path:
                if src is not None:
                    src.close()
                src, src_path = _open_part(path), path
            done = 0
            if in_kernel and not is_url(path):
                done, in_kernel = _kernel_copy(src, out, offset, length)
            if not in_kernel or is_url(path):
                left = None if length is None else length - done
                done += _python_copy(src, out, offset + done, left)
            if length is not None and done < length:
                raise OSError(
                    errno.EIO, f"the pack holds {done} of the {length} bytes at {offset}", path
                )
            written += done
    except BaseException:
        if src is not None:
            src.close()
        raise
    if src is not None:
        if held is not None:
            held[:] = [src_path, src]
        else:
            src.close()
    return written


def _kernel_copy(src: Any, out: Any, offset: int, length: int | None) -> tuple[int, bool]:
    """Copy ``length`` bytes (None: to its end) of ``src`` from ``offset`` to the end of
    ``out`` with ``os.copy_file_range``: the bytes copied, and False when the kernel could
    not copy between these files (the rest is for :func:`_python_copy`)."""
    out.flush()
    done = 0
    while length is None or done < length:
        want = _CHUNK * 64 if length is None else min(length - done, _CHUNK * 64)
        try:
            n = os.copy_file_range(src.fileno(), out.fileno(), want, offset_src=offset + done)
        except OSError:  # not on this filesystem pair
            out.seek(0, os.SEEK_END)
            return done, False
        if n == 0:
            break
        done += n
    return done, True


def _python_copy(src: Any, out: Any, offset: int, length: int | None) -> int:
    """Copy ``length`` bytes (None: to its end) of ``src`` from ``offset`` to ``out`` in
    chunks; the bytes copied."""
    src.seek(offset)
    done = 0
    while length is None or done < length:
        chunk = src.read(_CHUNK if length is None else min(length - done, _CHUNK))
        if not chunk:
            break
        out.write(chunk)
        done += len(chunk)
    return done


def store_refusal(dest: str, err: BaseException) -> str | None:
    """What to say when writing the output ``dest`` failed with ``err`` because of its object
    store (one that cannot be reached, refuses the credentials or the write, a bucket or
    container that does not exist: the user's to fix); None for a local ``dest`` and for
    any other error."""
    if not is_url(dest):
        return None
    return store_missing(dest, err) or store_problem(dest, err)


def store_unwritable(url: str, is_file: bool) -> str | None:
    """Why the output ``url`` on an object store cannot be written with the credentials the
    environment gives, or None: a store that cannot be reached, refuses the credentials or
    the write, or whose bucket (container) does not exist.

    An empty object is written where the output goes (beside it for a file, as its temporary
    copy is; inside it for a folder) and removed: the one check that answers for the write
    itself (an account or a key may read and list and not write, or be granted one prefix
    only), and the removal is needed too (a file output is moved into place from its
    temporary copy). What was created only as a path of the probe stays on a store with
    real folders (ADLS Gen2), as the run would make it.

    Raises
    ------
    Exception
        Any error that is not a store's (a bug of daskprs).
    """
    import uuid

    try:
        fs, path = filesystem(url)
        path = path.rstrip("/")
        folder = path.rsplit("/", 1)[0] if is_file and "/" in path else path
        probe = f"{folder}/.daskprs-check-{uuid.uuid4().hex[:12]}"
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except ValueError as err:  # adlfs found no account (or an unknown protocol)
        return (
            f"{url}: cannot open the Azure storage account: {err}; name it in the URL "
            "(abfs://<container>@<account>.dfs.core.windows.net/<path>) or set "
            "AZURE_STORAGE_ACCOUNT_NAME (and a key, SAS token or connection string)"
            if url.partition("://")[0].lower() in AZURE_PROTOCOLS
            else f"{url}: cannot open its store ({err})"
        )
    except Exception as err:
        problem = store_refusal(url, err)
        if problem is None:
            raise
        return problem
    return None


def partial_path(dest: str) -> str:
    """Where the output ``dest`` (a local path) is assembled while its step runs: a hidden
    file beside it, so that the finished file is renamed into place, never copied again."""
    if dest.startswith("file://"):
        dest = dest[len("file://") :]
    return _beside(dest, "daskprs-partial")


def temporary_path(dest: str) -> str:
    """Where the output ``dest`` (a local path) is written before it is renamed into place
    (a resume, a rerun, or a step whose growing output could not be continued)."""
    return _beside(dest, "daskprs-tmp")


# A file name's most bytes on the file systems daskprs writes to (NAME_MAX).
_NAME_MAX = 255


def _beside(dest: str, kind: str) -> str:
    """A hidden file of ``kind`` beside ``dest``: ``.<name>.<kind>``, with room for the
    ``.json`` of its manifest. A name too long for that keeps its start and a digest of the
    whole (an output's name may take all 255 bytes its file system allows)."""
    folder, name = os.path.split(os.path.abspath(dest))
    hidden = f".{name}.{kind}"
    room = _NAME_MAX - len(".json")
    raw = hidden.encode("utf-8", "surrogateescape")
    if len(raw) > room:
        digest = hashlib.sha256(raw).hexdigest()[:16]
        keep = room - len(f".~{digest}.{kind}")
        start = name.encode("utf-8", "surrogateescape")[:keep].decode("utf-8", "ignore")
        hidden = f".{start}~{digest}.{kind}"
    return os.path.join(folder, hidden)


def _manifest_path(partial: str) -> str:
    return f"{partial}.json"


class PartialOutput:
    """The output of a fresh step, assembled while the step runs.

    The runner calls :meth:`ended` when a mini-batch reaches its final state; a thread
    appends the committed parts to :func:`partial_path` in mini-batch order, as far as every
    earlier mini-batch has ended. :meth:`close` waits for it and writes a manifest (the parts
    appended and the bytes) that :func:`assemble` checks before continuing the file.

    Parameters
    ----------
    dest : str
        The local output path.
    order : sequence of int
        Every mini-batch index of the step, in output order.
    """

    def __init__(self, dest: str, order: Sequence[int]):
        self.dest = dest
        self.path = partial_path(dest)
        self._order = array("q", order)  # 8 bytes a mini-batch: a million in one driver
        self._next = 0
        self._ended: dict[int, str | None] = {}
        # the parts appended, as a count and a digest of their names (the manifest's check)
        self.count = 0
        self._names = hashlib.sha256()
        self.size = 0
        self._failed: BaseException | None = None
        self._queue: queue.Queue = queue.Queue()
        self._held: list = []  # the part (a pack) the last copy left open
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for old in (self.path, _manifest_path(self.path)):
            if os.path.exists(old):
                os.unlink(old)
        self._out = open(self.path, "wb")  # closed by the thread
        self._thread = threading.Thread(target=self._work, name="daskprs-output", daemon=True)
        self._thread.start()

    def ended(self, mb: int, part: str | None) -> None:
        """Mini-batch ``mb`` ended: ``part`` holds its rows (None: nothing to write)."""
        self._queue.put((mb, part))

    def _work(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                if self._failed is not None:
                    continue
                mb, part = item
                self._ended[mb] = part
                ready = []
                while self._next < len(self._order) and self._order[self._next] in self._ended:
                    done = self._ended.pop(self._order[self._next])
                    if done is not None:
                        ready.append(done)
                    self._next += 1
                if ready:
                    try:
                        self.size += _copy_parts(ready, self._out, held=self._held)
                        self.count += len(ready)
                        for name in ready:
                            self._names.update(name.encode() + b"\0")
                    except OSError as err:  # the final assembly starts over; say why
                        log.warning("assembling %s while the step runs failed: %s", self.dest, err)
                        self._failed = err
        finally:
            if self._held:
                self._held[1].close()
                self._held.clear()
            try:
                self._out.close()
            except OSError as err:  # its last bytes did not fit: the final assembly starts over
                self._failed = self._failed or err

    def close(self, keep: bool = True) -> None:
        """Wait for the parts handed so far, then write the manifest :func:`assemble` reads
        (``keep``), or remove the partial output (an interrupted step leaves none behind)."""
        self._queue.put(None)
        self._thread.join()
        if self._failed is not None or not keep:
            _remove(self.path)
            return
        manifest = {"count": self.count, "names": self._names.hexdigest(), "size": self.size}
        with open(_manifest_path(self.path), "w", encoding="utf-8") as f:
            json.dump(manifest, f)


def discard(dest: str) -> None:
    """Remove what was assembled for ``dest`` so far (a step whose output is not written)."""
    for path in (partial_path(dest), temporary_path(dest)):
        _remove(path)


def _remove(path: str) -> None:
    for p in (path, _manifest_path(path)):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def _started(partial: str, parts: Iterable[str]) -> int:
    """How many leading ``parts`` the partial output already holds (0: none, or not usable)."""
    try:
        with open(_manifest_path(partial), encoding="utf-8") as f:
            manifest = json.load(f)
        done, size = int(manifest["count"]), int(manifest["size"])
        if os.path.getsize(partial) != size:
            return 0
        if _parts_digest(itertools.islice(parts, done)) != (done, manifest["names"]):
            return 0
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return done


def assemble(parts: Iterable[str], dest: str, storage_options: dict | None = None) -> int:
    """Concatenate ``parts`` (local files or staged URLs, in order) into ``dest``; return the
    bytes written.

    ``dest`` is a local path (its folder is created) or an fsspec URL. The destination is
    replaced only once the whole output is written. A partial output that a
    :class:`PartialOutput` left for ``dest`` is continued when it holds the leading parts,
    and removed in any case.
    """
    if is_url(dest):
        # streamed to a temporary object beside it, then moved into place (on S3 a copy
        # inside the store): no local copy of the whole output, and no half of it at `dest`
        fs, path = filesystem(dest, storage_options)
        folder, name = path.rsplit("/", 1) if "/" in path else ("", path)
        tmp = f"{folder}/.{name}.daskprs-tmp" if folder else f".{name}.daskprs-tmp"
        try:
            with fs.open(tmp, "wb") as out:
                written = _copy_parts(parts, out, local=False)
            fs.mv(tmp, path)
        except BaseException:
            try:
                fs.rm_file(tmp)
            except Exception:  # (the store that failed the write may refuse this too)
                pass
            raise
        return written
    if dest.startswith("file://"):
        dest = dest[len("file://") :]
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    if iter(parts) is parts:  # read twice below: a collection, not a one-pass iterator
        parts = list(parts)
    # (a collection is read as it goes: a million part paths are never all made at once)
    partial = partial_path(dest)
    if os.path.exists(partial):
        start = _started(partial, parts)
        if start:
            try:
                with open(partial, "r+b") as out:  # not "ab": copy_file_range refuses O_APPEND
                    out.seek(0, os.SEEK_END)
                    written = out.tell() + _copy_parts(itertools.islice(parts, start, None), out)
                os.replace(partial, dest)
                return written
            finally:
                _remove(partial)
        _remove(partial)
    # one name per destination, so that a later run finds and replaces what a killed one
    # left; opened as any file is (the umask decides its mode, as for an uninterrupted run)
    tmp_path = temporary_path(dest)
    try:
        with open(tmp_path, "wb") as out:
            written = _copy_parts(parts, out)
        os.replace(tmp_path, dest)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise
    return written


def _parts_digest(parts: Iterable[str]) -> tuple[int, str]:
    names = hashlib.sha256()
    count = 0
    for name in parts:
        names.update(name.encode() + b"\0")
        count += 1
    return count, names.hexdigest()


def _stamp(dest: str) -> tuple[int, Any] | None:
    """The size of the output ``dest`` and when it was last written (a local file's
    modification time in nanoseconds; an object's as its store reports it); None when the
    store reports no time."""
    if not is_url(dest):
        st = os.stat(dest.removeprefix("file://"))
        return st.st_size, st.st_mtime_ns
    from daskprs.inputs.filesystems import modified_time

    fs, path = filesystem(dest)
    fs.invalidate_cache(path)
    info = fs.info(path)
    when = modified_time(info)
    return (int(info["size"]), when) if when is not None else None


def record_output(record: str, dest: str, parts: Iterable[str]) -> None:
    """Note in ``record`` the output ``dest`` as just assembled from ``parts``: its size,
    when it was written and a digest of the parts' names (:func:`output_written`)."""
    try:
        os.unlink(record)
    except FileNotFoundError:
        pass
    try:
        stamp = _stamp(dest)
    except (OSError, KeyError, TypeError, ValueError):  # not noted: assembled again later
        return
    if stamp is None:
        return
    count, names = _parts_digest(parts)
    noted = {"dest": dest, "size": stamp[0], "written": stamp[1]}
    write_json(record, {**noted, "count": count, "names": names})


def output_written(record: str, dest: str, parts: Iterable[str]) -> bool:
    """Whether ``dest`` is still the output :func:`record_output` noted, assembled from these
    ``parts`` (same size, written at the same time): a session that ran nothing then leaves
    it as it is, and a later step that reads it finds it unchanged."""
    try:
        with open(record, encoding="utf-8") as f:
            noted = json.load(f)
        if noted["dest"] != dest or _stamp(dest) != (noted["size"], noted["written"]):
            return False
        return _parts_digest(parts) == (noted["count"], noted["names"])
    except (OSError, KeyError, TypeError, ValueError):
        return False
    except Exception as err:  # a store that cannot be reached: the output is written again
        if store_refusal(dest, err) is None:
            raise
        return False
