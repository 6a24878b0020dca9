"""Fingerprints of a run: the resolved job, the input listing and the code folder.

``--resume`` refuses a changed job or input (unless ``--force``) and notes a changed code
folder; ``rerun-failed`` expects the code folder to change
(docs/run-directory.md#resume-and-rerun-failed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import Any, TypeVar

from daskprs.inputs.batches import FileBatch, FileBatches, FileStats, MiniBatch, TableBatch
from daskprs.job.model import Job
from daskprs.paths import redact_data

__all__ = [
    "code_digest",
    "diff_jobs",
    "in_chunks",
    "input_digest",
    "job_digest",
    "job_fields",
    "stat_line",
]

T = TypeVar("T")

# Fields that name the run itself; they are the same on a resume by construction.
_RUN_FIELDS = ("run_dir", "name", "notes", "warnings", "staging")


def job_fields(job: Job) -> dict[str, Any]:
    """The resolved job as a flat ``{dotted.key: value}`` mapping (run fields left out),
    secrets masked (:func:`daskprs.paths.redact_data`)."""
    data = asdict(job)
    for key in _RUN_FIELDS:
        data.pop(key, None)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], Mapping):
            for v in value:
                walk(f"{prefix}.{v.get('name', '?')}" if prefix else str(v.get("name")), v)
        else:
            flat[prefix] = (
                value
                if isinstance(value, (str, int, float, bool, type(None)))
                else (json.dumps(value, default=str, sort_keys=True))
            )

    walk("", data)
    # run.json keeps these: secrets are masked (a changed token does not refuse a resume)
    return redact_data(flat)


def job_digest(job: Job) -> str:
    return hashlib.sha256(
        json.dumps(job_fields(job), sort_keys=True, default=str).encode()
    ).hexdigest()


def diff_jobs(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> list[str]:
    """The keys whose values differ between two :func:`job_fields` mappings."""
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    out = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:limit]]
    if len(changed) > limit:
        out.append(f"... and {len(changed) - limit} more")
    return out


def _batch_files(batch: MiniBatch) -> Iterable[str]:
    if isinstance(batch, FileBatch):
        return batch.files
    if isinstance(batch, TableBatch):
        return (p.path for p in batch.pieces)
    return ()


def input_digest(batches: Iterable[MiniBatch]) -> dict[str, Any]:
    """A digest of what a plan covers: its descriptors and each file's size and mtime.

    Paths are digested as the filesystem's bytes (``os.fsencode``: a name that is not UTF-8
    keeps its bytes)."""
    h = hashlib.sha256()
    files: Iterable[str]
    listed = None
    if isinstance(batches, FileBatches):
        # a packed file list: each file once, in order (no set of a million paths), and the
        # listing's stat of each when it took one
        files, listed, n = batches.files, batches.stats, len(batches)
        if batches.per_batch == 1:  # the same digest without a million descriptors
            for chunk in in_chunks(files):
                h.update(os.fsencode("".join(map(_ONE_FILE.__mod__, chunk))))
        else:  # each mini-batch's files are decoded as one slice of the packed list
            for described in batches:
                h.update(repr(described.describe()).encode())
    else:
        seen: dict[str, None] = {}
        n = 0
        for batch in batches:
            n += 1
            h.update(repr(batch.describe()).encode())
            for path in _batch_files(batch):
                seen.setdefault(path, None)
        files = seen
    stats = hashlib.sha256()
    for block in in_chunks(_stat_lines(files, listed)):
        stats.update(os.fsencode("".join(block)))
    return {"batches": n, "plan": h.hexdigest(), "files": stats.hexdigest()}


def _stat_lines(files: Iterable[str], listed: FileStats | None) -> Iterator[str]:
    """Each file's line of the stats digest (digested joined, a block at a time): its path,
    size and mtime, from the stat the listing took when it took one."""
    sizes, times, missing = (
        (listed.sizes, listed.mtime_ns, listed.missing) if listed is not None else ((), (), ())
    )
    for i, path in enumerate(files):
        if "://" in path:
            yield path
        elif listed is not None:
            yield missing_line(path) if i in missing else stat_line(path, sizes[i], times[i])
        else:
            try:
                st = os.stat(path)
            except OSError:
                yield missing_line(path)
                continue
            yield stat_line(path, st.st_size, st.st_mtime_ns)


# repr({"files": [path]}) of a one-file mini-batch
_ONE_FILE = "{'files': [%r]}"


def stat_line(path: str, size: int, mtime_ns: int) -> str:
    """A file's line in the digests of an input: ``path NUL size NUL mtime_ns`` and a
    newline."""
    return f"{path}\0{size}\0{mtime_ns}\n"


def missing_line(path: str) -> str:
    """The line of a file that could not be stat-ed, in the digests of an input."""
    return f"{path}\0missing\n"


def in_chunks(items: Iterable[T], size: int = 8192) -> Iterator[list[T]]:
    """``items`` a list of ``size`` at a time (digested joined: one update, not one a file)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def code_digest(code_dir: str) -> str:
    """A digest of every file's name and content under the code folder."""
    h = hashlib.sha256()
    for root, dirs, names in os.walk(code_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(".pyc"):
                continue
            path = os.path.join(root, name)
            h.update(os.fsencode(os.path.relpath(path, code_dir)) + b"\0")
            try:
                with open(path, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
            except OSError:
                h.update(b"unreadable")
    return h.hexdigest()
