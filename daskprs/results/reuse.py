"""Step reuse, like Azure pipelines: a step whose resolved inputs, code folder and settings
are unchanged since an earlier successful run under the same cache is not run again; its
outputs are copied from that run.

The cache is ``--cache DIR``, else the run root (the parent folder of the run directory, e.g.
``./daskprs-runs``); it holds ``.daskprs-reuse/<key>.json``, one small record per successful
step, naming the run and the outputs it made. A step's key (:func:`step_key`) digests the
resolved step (paths inside the run directory written relative to it, so two runs of one job
compare equal), every file of its local data inputs (relative name, size, modification time),
for a parallel step the plan of its mini-batches, and the files of its code folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import Any

from daskprs.inputs.batches import FileBatch, MiniBatch, TableBatch
from daskprs.job.model import CommandStep, DataInput, Output, ParallelStep
from daskprs.results.fingerprint import code_digest

__all__ = [
    "INDEX",
    "MARKER",
    "cache_root",
    "copy_outputs",
    "lookup",
    "remember",
    "step_key",
]

INDEX = ".daskprs-reuse"
MARKER = "reused.json"  # in <run_dir>/steps/<step>/: this run reused the step


def cache_root(run_dir: str, cache: str | os.PathLike | None = None) -> str:
    """Where the reuse records live: ``cache`` if given, else the run directory's parent."""
    return os.path.abspath(os.fspath(cache)) if cache else os.path.dirname(run_dir)


def _relative(text: str, run_dir: str) -> str:
    return text.replace(run_dir + os.sep, "<run>" + os.sep).replace(run_dir, "<run>")


def _tree_digest(path: str, run_dir: str) -> str:
    """Relative names, sizes and modification times of every file at ``path``."""
    h = hashlib.sha256(_relative(path, run_dir).encode() + b"\n")
    if os.path.isfile(path):
        st = os.stat(path)
        h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()
    if not os.path.isdir(path):
        return h.hexdigest() + "-missing"
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            rel = os.path.relpath(full, path)
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _plan_digest(batches: Iterable[MiniBatch], run_dir: str) -> str:
    """The mini-batches of a plan, with the size and time of each file they read (an MLTable
    may read files outside its folder)."""
    h = hashlib.sha256()
    files: dict[str, None] = {}
    for batch in batches:
        described = _relative(json.dumps(batch.describe(), sort_keys=True, default=str), run_dir)
        h.update(described.encode() + b"\n")
        if isinstance(batch, FileBatch):
            files.update(dict.fromkeys(batch.files))
        elif isinstance(batch, TableBatch):
            files.update(dict.fromkeys(p.path for p in batch.pieces))
    for path in files:
        h.update(_tree_digest(path, run_dir).encode())
    return h.hexdigest()


def step_key(
    step: ParallelStep | CommandStep,
    run_dir: str,
    batches: Iterable[MiniBatch] = (),
) -> str | None:
    """The key of a step's resolved inputs, code folder and settings, or None when the step
    cannot be compared (it reads remote data, which is not fingerprinted).

    Parameters
    ----------
    step : ParallelStep or CommandStep
        The resolved step.
    run_dir : str
        This run's directory (paths inside it are compared relative to it).
    batches : iterable of MiniBatch
        A parallel step's planned mini-batches.
    """
    data = [v for v in step.inputs.values() if isinstance(v, DataInput)]
    if isinstance(step, ParallelStep):
        data.append(step.input_data)
    if any("://" in d.path for d in data):
        return None
    h = hashlib.sha256()
    fields = asdict(step)
    fields.pop("depends_on", None)
    h.update(_relative(json.dumps(fields, sort_keys=True, default=str), run_dir).encode())
    h.update(code_digest(step.code_dir).encode())
    for d in sorted(data, key=lambda d: (d.name, d.path)):
        h.update(_tree_digest(d.path, run_dir).encode())
    h.update(_plan_digest(batches, run_dir).encode())
    for d in data:
        if d.type == "mltable":
            h.update(_tree_digest(os.path.join(d.path, "MLTable"), run_dir).encode())
    return h.hexdigest()


def _record_path(root: str, key: str) -> str:
    return os.path.join(root, INDEX, f"{key}.json")


def remember(
    root: str,
    key: str,
    step: ParallelStep | CommandStep,
    run_dir: str,
    outcome: Mapping[str, Any] | None = None,
) -> None:
    """Record that ``step`` succeeded in ``run_dir`` (its outputs and, for a parallel step,
    its outcome), so a later run under ``root`` may reuse it."""
    record = {
        "step": step.name,
        "run_dir": run_dir,
        "created": time.time(),
        "outputs": {name: out.path for name, out in step.outputs.items()},
        "outcome": dict(outcome) if outcome is not None else None,
    }
    path = _record_path(root, key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, default=str)
    os.replace(tmp, path)


def lookup(root: str, key: str, step: ParallelStep | CommandStep) -> dict[str, Any] | None:
    """The record of an earlier successful run of this step whose outputs are all still
    there, or None."""
    try:
        with open(_record_path(root, key), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    outputs = record.get("outputs", {})
    if set(outputs) != set(step.outputs):
        return None
    for name, src in outputs.items():
        dst = step.outputs[name].path
        if "://" in src or "://" in dst:
            if src != dst:
                return None
            continue
        if not os.path.exists(src):
            return None
    return record


def copy_outputs(record: Mapping[str, Any], outputs: Mapping[str, Output]) -> None:
    """Copy a reused step's outputs from the earlier run to this run's output paths (file
    times kept, so the steps after it compare equal too)."""
    for name, out in outputs.items():
        src = record["outputs"][name]
        dst = out.path
        if src == dst:
            continue
        if os.path.isdir(src):
            shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copy2(src, dst)
