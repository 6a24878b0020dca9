"""Staging a user's Dask collection: one file per partition in the run directory.

A Dask computation over the collection writes each partition to
``<run_dir>/staged/<partition>.parquet`` (a DataFrame partition; pickled when pyarrow cannot
store it) or ``.pkl`` (a bag partition, as a list), and reports its length; with
``staging=URL`` (workers that cannot see the run directory), to the run's folder of that
staging store. Each partition
then becomes one :class:`~daskprs.inputs.batches.StagedBatch`, read in the entry-script
process like any mini-batch. The staged partitions are listed in ``staged.json`` once all are
written; a resumed run reuses them instead of computing the collection again.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any, Literal

from daskprs.errors import UserInputError
from daskprs.inputs.batches import StagedBatch

__all__ = ["MANIFEST", "collection_kind", "load_staged", "stage"]

MANIFEST = "staged.json"

Kind = Literal["dataframe", "bag"]


def collection_kind(collection: Any) -> Kind:
    """``"dataframe"`` or ``"bag"``; a clear error for anything else."""
    import dask.bag as db
    import dask.dataframe as dd

    if isinstance(collection, dd.DataFrame):
        return "dataframe"
    if isinstance(collection, db.Bag):
        return "bag"
    what = f"{type(collection).__module__}.{type(collection).__qualname__}"
    hint = ""
    if isinstance(collection, dd.Series):
        hint = " Make it a DataFrame with series.to_frame()."
    elif what.startswith("pandas."):
        hint = " Make it a Dask one: dask.dataframe.from_pandas(df, npartitions=8)."
    elif isinstance(collection, (list, tuple)):
        hint = " Make it a Dask bag: dask.bag.from_sequence(items, npartitions=8)."
    raise UserInputError(
        f"map_batches: the collection is a {what}, neither a Dask DataFrame (one mini-batch "
        f"per partition) nor a Dask bag (one mini-batch per partition).{hint}"
    )


def _write(path: str, write: Any) -> None:
    if "://" in path:  # a staging store (--staging): an object appears whole
        from daskprs.inputs.filesystems import filesystem

        fs, where = filesystem(path)
        with fs.open(where, "wb") as f:
            write(f)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if "://" in folder else os.path.join(folder, name)


def _stage_frame(part: Any, stem: str) -> tuple[str, str, int]:
    """Write one DataFrame partition; runs on a Dask worker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pa.Table.from_pandas(part)
    except (pa.ArrowException, TypeError, ValueError):
        path = f"{stem}.pkl"
        _write(path, lambda f: pickle.dump(part, f, protocol=pickle.HIGHEST_PROTOCOL))
        return path, "pickle", len(part)
    path = f"{stem}.parquet"
    _write(path, lambda f: pq.write_table(table, f))
    return path, "parquet", len(part)


def _stage_bag(part: Any, stem: str) -> tuple[str, str, int]:
    """Write one bag partition as a list; runs on a Dask worker."""
    items = list(part)
    path = f"{stem}.pkl"
    _write(path, lambda f: pickle.dump(items, f, protocol=pickle.HIGHEST_PROTOCOL))
    return path, "pickle", len(items)


def stage(collection: Any, folder: str, client: Any) -> list[StagedBatch]:
    """Compute ``collection`` on ``client``'s cluster, one file per partition in ``folder``.

    Returns
    -------
    list of StagedBatch
        One per partition, in partition order; also listed in ``folder/staged.json``.

    Raises
    ------
    UserInputError
        Computing a partition failed (the error of the collection itself).
    """
    from dask import delayed

    kind = collection_kind(collection)
    if "://" not in folder:
        os.makedirs(folder, exist_ok=True)
    write = _stage_frame if kind == "dataframe" else _stage_bag
    parts = collection.to_delayed()
    tasks = [delayed(write, pure=False)(p, _join(folder, f"{i:05d}")) for i, p in enumerate(parts)]
    futures = client.compute(tasks)
    try:
        written = client.gather(futures)
    except Exception as err:
        raise UserInputError(
            f"map_batches: computing the collection's partitions failed ({type(err).__name__}: "
            f"{err}). Check the collection itself, e.g. collection.partitions[0].compute()."
        ) from err
    finally:
        client.cancel(futures)
    batches = []
    start = 0
    for i, (path, fmt, rows) in enumerate(written):
        lower = start if kind == "dataframe" else None
        batches.append(StagedBatch(i, path, fmt, rows, row_lower_bound=lower))
        start += rows
    manifest = {
        "kind": kind,
        "batches": [
            {
                "path": b.path,
                "format": b.format,
                "rows": b.rows,
                "row_lower_bound": b.row_lower_bound,
            }
            for b in batches
        ],
    }
    text = json.dumps(manifest, indent=1).encode()
    _write(_join(folder, MANIFEST), lambda f: f.write(text))
    return batches


def load_staged(folder: str) -> list[StagedBatch] | None:
    """The partitions an earlier call staged in ``folder``, or None when staging did not
    finish (or never started)."""
    from daskprs.inputs.filesystems import filesystem

    fs, path = filesystem(_join(folder, MANIFEST))
    try:
        manifest = json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None
    batches = [
        StagedBatch(i, b["path"], b["format"], b["rows"], row_lower_bound=b["row_lower_bound"])
        for i, b in enumerate(manifest["batches"])
    ]
    if not all(fs.isfile(filesystem(b.path)[1]) for b in batches):
        return None
    return batches
