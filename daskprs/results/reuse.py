"""Step reuse, like Azure pipelines: a step whose resolved inputs, code folder and settings
are unchanged since an earlier successful run is not run again; its outputs are copied from
that run.

Each successful step leaves a record, ``<run_dir>/steps/<step>/reuse.json`` (its key, the
outputs it made, its outcome). A new run looks for a record with the same key in the other
run directories of its run root (the parent folder of its run directory, e.g.
``./daskprs-runs``) and of ``--cache DIR`` if given, and takes the newest whose outputs still
exist. Deleting a run directory deletes its records with it.

A step's key (:func:`step_key`) digests the resolved step (paths inside the run directory
written relative to it, so two runs of one job compare equal), every file of its local data
inputs (relative name, size, modification time), for a parallel step the plan of its
mini-batches, and the files of its code folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from typing import Any

from daskprs.inputs.batches import FileBatch, FileBatches, MiniBatch, TableBatch
from daskprs.job.model import CommandStep, DataInput, Output, ParallelStep
from daskprs.results.fingerprint import code_digest, in_chunks, stat_line
from daskprs.results.output import temporary_path
from daskprs.rundir import RunDir, write_json

__all__ = [
    "copy_outputs",
    "lookup",
    "recorded",
    "remember",
    "remember_again",
    "search_roots",
    "step_key",
]


def search_roots(run_dir: str, cache: str | os.PathLike | None = None) -> list[str]:
    """The folders whose run directories a new run may reuse steps from: the run root (the
    run directory's parent) and ``cache`` if given."""
    roots = [os.path.dirname(run_dir)]
    if cache:
        extra = os.path.abspath(os.fspath(cache))
        if extra not in roots:
            roots.append(extra)
    return roots


def _relative(text: str, run_dir: str) -> str:
    return text.replace(run_dir + os.sep, "<run>" + os.sep).replace(run_dir, "<run>")


def _tree_digest(path: str, run_dir: str) -> str:
    """Relative names, sizes and modification times of every file at ``path``.

    One ``stat`` per file and one relative path per folder: a plan's every file goes through
    here before the step starts (the key of a step over 20,000 images took 0.45 s with
    ``isfile`` + ``stat`` + ``relpath`` per file, 0.17 s now; issue 23). The digests are
    the ones the earlier walk gave, so earlier runs' records still match.
    """
    h = hashlib.sha256(os.fsencode(_relative(path, run_dir)) + b"\n")
    try:
        st = os.stat(path)
    except OSError:
        return h.hexdigest() + "-missing"
    if stat.S_ISREG(st.st_mode):
        h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()
    if not stat.S_ISDIR(st.st_mode):
        return h.hexdigest() + "-missing"
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs.sort()
        rel_root = os.path.relpath(root, path)
        prefix = "" if rel_root == os.curdir else rel_root + os.sep
        for name in sorted(names):
            try:
                st = os.stat(os.path.join(root, name))
            except OSError:
                continue
            h.update(os.fsencode(stat_line(prefix + name, st.st_size, st.st_mtime_ns)))
    return h.hexdigest()


def _listed_tree_digest(path: str, run_dir: str, batches: FileBatches) -> str | None:
    """What :func:`_tree_digest` gives the folder ``path`` that ``batches`` list, from the
    listing's own stats: os.walk's order (each folder's files by name, then its folders by
    name, depth first) without a second walk and ``stat`` of every file (at a million files,
    4.6 s and 80 MB). None when the listing is not the whole folder (hidden, linked or odd
    entries, or another folder): the walk then gives it."""
    listed = batches.stats
    if listed is None or not listed.complete or not len(batches.files):
        return None
    root = os.path.join(os.path.abspath(path), "")
    groups = batches.files.by_folder()
    if any(not folder.startswith(root) for folder, _ in groups):
        return None
    h = hashlib.sha256(os.fsencode(_relative(path, run_dir)) + b"\n")
    # os.walk's top-down order, its folders sorted at each level: by their components
    groups.sort(key=lambda g: g[0][len(root) :].split("/"))
    files, sizes, times, cut = batches.files, listed.sizes, listed.mtime_ns, len(root)
    if len(groups) == 1:  # one folder: its files in order, a chunk of lines at a time
        lines = ((path[cut:], size, ns) for path, size, ns in zip(files, sizes, times, strict=True))
    else:
        lines = ((files[i][cut:], sizes[i], times[i]) for _, ix in groups for i in ix)
    for chunk in in_chunks(lines):
        h.update(os.fsencode("".join(itertools.starmap(stat_line, chunk))))
    return h.hexdigest()


def _plan_digest(batches: Iterable[MiniBatch], run_dir: str) -> str:
    """The mini-batches of a plan, with the size and time of each file they read (an MLTable
    may read files outside its folder)."""
    h = hashlib.sha256()
    packed = isinstance(batches, FileBatches)
    files: dict[str, None] = {}
    for batch in batches:
        described = _relative(json.dumps(batch.describe(), sort_keys=True, default=str), run_dir)
        h.update(described.encode() + b"\n")
        if packed:
            continue  # its files are each listed once, in order
        if isinstance(batch, FileBatch):
            files.update(dict.fromkeys(batch.files))
        elif isinstance(batch, TableBatch):
            files.update(dict.fromkeys(p.path for p in batch.pieces))
    if isinstance(batches, FileBatches):
        listed = batches.stats
        for i, path in enumerate(batches.files):
            if listed is None or i in listed.irregular or "://" in path:
                h.update(_tree_digest(path, run_dir).encode())
                continue
            # what _tree_digest gives a regular file (or one it cannot stat), from the stat
            # the listing took
            one = hashlib.sha256(os.fsencode(_relative(path, run_dir)) + b"\n")
            if i in listed.missing:
                h.update((one.hexdigest() + "-missing").encode())
                continue
            one.update(f"{listed.sizes[i]}\0{listed.mtime_ns[i]}".encode())
            h.update(one.hexdigest().encode())
        return h.hexdigest()
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
    trees: dict[str, str] = {}  # a folder that is both an input and input_data: walked once
    # the folder the plan lists: digested from the listing's stats
    listed = batches if isinstance(batches, FileBatches) else None
    planned = step.input_data.path if isinstance(step, ParallelStep) else None
    for d in sorted(data, key=lambda d: (d.name, d.path)):
        if d.path not in trees:
            digest = None
            if listed is not None and d.type == "uri_folder" and d.path == planned:
                digest = _listed_tree_digest(d.path, run_dir, listed)
            trees[d.path] = digest or _tree_digest(d.path, run_dir)
        h.update(trees[d.path].encode())
    h.update(_plan_digest(batches, run_dir).encode())
    for d in data:
        if d.type == "mltable":
            h.update(_tree_digest(os.path.join(d.path, "MLTable"), run_dir).encode())
    return h.hexdigest()


def _record_path(run_dir: str, step: str) -> str:
    return RunDir(run_dir).step(step).reuse_record


def remember(
    run_dir: str,
    key: str,
    step: ParallelStep | CommandStep,
    outcome: Mapping[str, Any] | None = None,
) -> None:
    """Record that ``step`` succeeded (or was reused) in ``run_dir``: its key, its outputs and,
    for a parallel step, its outcome; later runs may reuse it."""
    record = {
        "key": key,
        "step": step.name,
        "run_dir": run_dir,
        "created": time.time(),
        "outputs": {name: out.path for name, out in step.outputs.items()},
        "outcome": dict(outcome) if outcome is not None else None,
    }
    path = _record_path(run_dir, step.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, record)


def remember_again(
    run_dir: str, step: ParallelStep | CommandStep, outcome: Mapping[str, Any] | None
) -> None:
    """A later session of ``run_dir`` (a resume, ``rerun-failed``) ended ``step`` with
    ``outcome``: the record its first session left, if any, says so, so that a run reusing
    the step takes the outcome its outputs now hold (same inputs: a session refuses changed
    ones)."""
    try:
        with open(_record_path(run_dir, step.name), encoding="utf-8") as f:
            key = json.load(f)["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(key, str):
        remember(run_dir, key, step, outcome)


def _usable(record: Mapping[str, Any], step: ParallelStep | CommandStep) -> bool:
    outputs = record.get("outputs", {})
    if set(outputs) != set(step.outputs):
        return False
    for name, src in outputs.items():
        dst = step.outputs[name].path
        if "://" in src or "://" in dst:
            if src != dst:
                return False
        elif not os.path.exists(src):
            return False
    return True


def recorded(roots: Iterable[str], step: ParallelStep | CommandStep, run_dir: str) -> bool:
    """Whether any run directory under ``roots`` (``run_dir`` left out) holds a record of
    ``step``: without one, :func:`lookup` finds nothing, whatever the key (a check of a few
    file names, made before the key's digests)."""
    return any(os.path.exists(_record_path(o, step.name)) for o in _other_runs(roots, run_dir))


def _other_runs(roots: Iterable[str], run_dir: str) -> Iterator[str]:
    """Every folder under ``roots`` but ``run_dir`` (a run directory, maybe)."""
    for root in roots:
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for name in names:
            other = os.path.join(root, name)
            if other != run_dir:
                yield other


def lookup(
    roots: Iterable[str], key: str, step: ParallelStep | CommandStep, run_dir: str
) -> dict[str, Any] | None:
    """The newest record of this step with this key, in the run directories under ``roots``
    (``run_dir`` itself left out), whose outputs are all still there; or None."""
    best: dict[str, Any] | None = None
    for other in _other_runs(roots, run_dir):
        try:
            with open(_record_path(other, step.name), encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            continue
        if record.get("key") != key or not _usable(record, step):
            continue
        if best is None or record.get("created", 0) > best.get("created", 0):
            best = record
    return best


def copy_outputs(record: Mapping[str, Any], outputs: Mapping[str, Output]) -> None:
    """Copy a reused step's outputs from the earlier run to this run's output paths (file
    times kept, so the steps after it compare equal too).

    Each file is copied beside its place and renamed over it, so that a copy cut short (a
    full disk, a file-size limit) never stands at an output's name; the first error is
    raised as it is (an ``OSError`` the run's storage handling words), not collected."""
    for name, out in outputs.items():
        src = record["outputs"][name]
        dst = out.path
        if src == dst:
            continue
        if os.path.isdir(src):
            _copy_tree(src, dst)
        else:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            _copy_file(src, dst)


def _copy_tree(src: str, dst: str) -> None:
    """``src``'s files and links into ``dst`` (made; what it holds besides is kept)."""
    for root, dirs, files in os.walk(src):
        target = os.path.join(dst, os.path.relpath(root, src))
        os.makedirs(target, exist_ok=True)
        for entry in [*dirs, *files]:
            there, here = os.path.join(root, entry), os.path.join(target, entry)
            if os.path.islink(there):  # copied as a link (os.walk does not enter it)
                if os.path.lexists(here):
                    os.unlink(here)
                os.symlink(os.readlink(there), here)
            elif entry in files:
                _copy_file(there, here)


def _copy_file(src: str, dst: str) -> None:
    part = temporary_path(dst)
    try:
        shutil.copy2(src, part)
        os.replace(part, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
