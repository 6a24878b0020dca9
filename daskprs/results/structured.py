"""Structured parts: one try's returned rows kept as data, not as Azure's text rows.

``daskprs.map_batches`` gives its output back as a Dask collection, so each successful try's
``run()`` return is stored as it is: a pandas DataFrame as parquet (pickled when pyarrow
cannot store its columns), a list or tuple as a pickled list. The part files keep the names
and the commit protocol of text parts (:mod:`daskprs.results.formatting`); only their content
differs. :func:`read_part` reads either kind back.

Runs in the entry-script process too: standard library and pandas only, pyarrow and
cloudpickle when needed.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, BinaryIO

__all__ = ["PartFormatError", "read_part", "write_structured"]

_PARQUET_MAGIC = b"PAR1"


class PartFormatError(Exception):
    """A ``run()`` return could not be stored as a structured part."""


def _is_dataframe(value: Any) -> bool:
    cls = type(value)
    return cls.__name__ == "DataFrame" and cls.__module__.startswith("pandas")


def _pickled(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # lambdas, local classes...: cloudpickle can store more
        try:
            import cloudpickle

            return cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as err:
            raise PartFormatError(
                f"run() returned values that cannot be pickled ({type(err).__name__}: {err}); "
                "return plain data (numbers, strings, dicts, DataFrames)"
            ) from err


def write_structured(value: Any, out: BinaryIO) -> None:
    """Write a ``run()`` return (DataFrame, list or tuple) to the binary file ``out``.

    A DataFrame goes as parquet, index and dtypes kept; when pyarrow cannot convert it (mixed
    kinds in one column, ...) it is pickled instead. A list or tuple is pickled as a list.

    Raises
    ------
    PartFormatError
        The value holds objects that can be neither converted nor pickled.
    """
    if _is_dataframe(value):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pandas(value)
        except (pa.ArrowException, TypeError, ValueError):
            out.write(_pickled(value))
            return
        buf = io.BytesIO()
        pq.write_table(table, buf)
        out.write(buf.getvalue())
        return
    out.write(_pickled(list(value)))


def read_part(path: str) -> Any:
    """The value a structured part holds: a pandas DataFrame or a list.

    Parameters
    ----------
    path : str
        A part file written by :func:`write_structured` (or its staged copy, a URL).
    """
    from daskprs.inputs.filesystems import filesystem

    fs, where = filesystem(path)
    with fs.open(where, "rb") as f:
        head = f.read(len(_PARQUET_MAGIC))
        f.seek(0)
        if head == _PARQUET_MAGIC:
            import pandas as pd

            return pd.read_parquet(f)
        return pickle.load(f)
