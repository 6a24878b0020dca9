"""Load one mini-batch inside a worker process: a descriptor becomes what ``run()`` receives.

- :class:`~daskprs.inputs.batches.FileBatch` -> a list of local file paths (remote files are
  downloaded into a worker-local cache first; ``direct`` passes the URLs through);
- :class:`~daskprs.inputs.batches.TableBatch` -> a pandas DataFrame
  (:mod:`daskprs.inputs.tableread`);
- :class:`~daskprs.inputs.batches.StagedBatch` -> the staged partition of a user's Dask
  collection (``daskprs.map_batches``): a DataFrame, or a list for a bag.

This module runs in the child process that hosts the entry script, so its imports stay light:
the standard library, and fsspec for remote files. pandas is imported when a table is read,
not before: a process that runs a file-list step starts in tens of milliseconds instead of
the few hundred that importing pandas takes.

Any read failure raises :class:`BatchLoadError`, whose message names the file and the byte
range (or row groups); the caller records it as ``LOAD_ERROR``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from daskprs.inputs.batches import BatchLoadError, FileBatch, MiniBatch, StagedBatch, TableBatch
from daskprs.inputs.filesystems import filesystem

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BatchLoadError", "load_batch"]


def load_batch(batch: MiniBatch, *, cache_dir: str) -> pd.DataFrame | list[Any]:
    """What ``run()`` receives for ``batch``.

    Parameters
    ----------
    batch : FileBatch, TableBatch or StagedBatch
        The descriptor.
    cache_dir : str
        A worker-local folder for downloaded remote files (created when needed); a file
        already there with the right size is reused.

    Returns
    -------
    list or pandas.DataFrame
        Local paths (or URLs with ``direct``) for a file list; the rows for tabular input,
        with a fresh ``RangeIndex``; a staged partition as it was (index kept).

    Raises
    ------
    BatchLoadError
        A file is missing or could not be downloaded, read or parsed.
    """
    if isinstance(batch, FileBatch):
        return _load_files(batch, cache_dir)
    if isinstance(batch, TableBatch):
        from daskprs.inputs.tableread import load_table

        return load_table(batch)
    if isinstance(batch, StagedBatch):
        from daskprs.inputs.tableread import load_staged

        return load_staged(batch)
    raise TypeError(f"not a mini-batch descriptor: {batch!r}")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _cache_path(cache_dir: str, url: str) -> str:
    """``<cache_dir>/<protocol>/<bucket>/<key>``: unique per URL, the file name kept. A query
    (an HTTPS URL's SAS token, ``?sv=...&sig=...``) is not part of the name: it becomes a
    folder named by its digest, so the script sees ``f.png``, and no token, as on Azure."""
    protocol, _, rest = url.partition("://")
    rest, question, query = rest.partition("?")
    parts = [p if p not in ("", ".", "..") else "_" for p in rest.split("/")]
    if question:
        import hashlib

        parts.insert(-1, "q-" + hashlib.sha256(query.encode()).hexdigest()[:12])
    return os.path.join(cache_dir, protocol or "file", *parts)


def _load_files(batch: FileBatch, cache_dir: str) -> list[str]:
    if batch.direct:
        return list(batch.files)
    out = []
    for url in batch.files:
        if "://" not in url:
            if not os.path.isfile(url):
                if os.path.exists(url):  # a stat, never an open: a pipe's would block
                    raise BatchLoadError(
                        f"{url}: not a regular file (a named pipe, a socket or a device holds "
                        "no data to read); move it out of the input"
                    )
                raise BatchLoadError(f"{url}: file not found (it was listed when planning)")
            out.append(url)
            continue
        local = _cache_path(cache_dir, url)
        try:
            fs, path = filesystem(url, batch.storage_options)
            size = fs.size(path)
            if not (os.path.isfile(local) and os.path.getsize(local) == size):
                os.makedirs(os.path.dirname(local), exist_ok=True)
                tmp = f"{local}.part-{os.getpid()}"
                try:
                    fs.get_file(path, tmp)
                    os.replace(tmp, local)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
        except Exception as err:
            raise BatchLoadError(
                f"{url}: download to {local} failed: {type(err).__name__}: {err}"
            ) from err
        out.append(local)
    return out
