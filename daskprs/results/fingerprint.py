"""Fingerprints of a run: the resolved job, the input listing and the code folder.

``--resume`` refuses a changed job or input (unless ``--force``) and notes a changed code
folder; ``rerun-failed`` expects the code folder to change
(docs/run-directory.md#resume-and-rerun-failed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from daskprs.inputs.batches import FileBatch, FileBatches, MiniBatch, TableBatch
from daskprs.job.model import Job
from daskprs.paths import redact_data

__all__ = ["code_digest", "diff_jobs", "input_digest", "job_digest", "job_fields"]

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
    """A digest of what a plan covers: its descriptors and each file's size and mtime."""
    h = hashlib.sha256()
    files: Iterable[str]
    listed = None
    if isinstance(batches, FileBatches):
        # a packed file list: each file once, in order (no set of a million paths), and the
        # listing's stat of each when it took one
        files, listed, n = batches.files, batches.stats, len(batches)
        if batches.per_batch == 1:  # the same digest without a million descriptors
            for path in files:
                h.update(repr({"files": [path]}).encode())
        else:
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
    for i, path in enumerate(files):
        if "://" in path:
            stats.update(path.encode())
            continue
        if listed is not None:
            if i in listed.missing:
                stats.update(f"{path}\0missing\n".encode())
            else:
                stats.update(f"{path}\0{listed.sizes[i]}\0{listed.mtime_ns[i]}\n".encode())
            continue
        try:
            st = os.stat(path)
            stats.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            stats.update(f"{path}\0missing\n".encode())
    return {"batches": n, "plan": h.hexdigest(), "files": stats.hexdigest()}


def code_digest(code_dir: str) -> str:
    """A digest of every file's name and content under the code folder."""
    h = hashlib.sha256()
    for root, dirs, names in os.walk(code_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(names):
            if name.endswith(".pyc"):
                continue
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, code_dir).encode() + b"\0")
            try:
                with open(path, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
            except OSError:
                h.update(b"unreadable")
    return h.hexdigest()
