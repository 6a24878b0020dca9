"""The transformations of a :class:`~daskprs.inputs.tablemodel.TableRead` applied to the rows a
worker read (:func:`apply_transforms`), with the pandas reader options
(:func:`csv_read_options`) and the date inference (:func:`infer_dates`) of
``infer_column_types``.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping
from typing import Any

import pandas as pd

from daskprs.inputs.filters import filter_mask, is_textual
from daskprs.inputs.partitions import match_partition_format, partition_regex
from daskprs.inputs.tablemodel import TableRead

__all__ = ["apply_transforms", "csv_read_options", "infer_dates"]

# The PyPI package ``mltable`` is the reference reader. Where we differ, on purpose:
#
# - ``extract_columns_from_partition_format`` reads the keys from each file's path even without
#   ``include_path_column`` (``mltable`` gives null columns then).
# - ``infer_column_types: true`` infers types per mini-batch with pandas (``mltable`` samples the
#   first rows); a column can be ``int64`` in one mini-batch and ``float64`` in another.
#   ``infer_column_types: false`` gives strings everywhere, as ``mltable`` does.
# - A ``filter`` comparing a string column with a number converts the column to numbers first
#   (values that are not numbers compare false).
# - ``take_random_sample`` draws with numpy, deterministically per seed and piece of file.


def csv_read_options(read: TableRead) -> dict[str, Any]:
    """Keyword arguments of :func:`pandas.read_csv` for ``read`` (header and names aside).

    Empty fields are null unless ``empty_as_string``; no other text ("NA", "null") is null,
    as in ``mltable``.
    """
    kw: dict[str, Any] = {"encoding": read.codec, "keep_default_na": False}
    if len(read.delimiter) == 1:
        kw["sep"] = read.delimiter
    else:
        kw["sep"] = re.escape(read.delimiter)
        kw["engine"] = "python"
    if read.empty_as_string:
        kw["na_filter"] = False
    else:
        kw["na_values"] = [""]
    if not read.infer_column_types:
        kw["dtype"] = str
    return kw


def _select(df: pd.DataFrame, selector: Mapping[str, Any], where: str) -> list:
    if "names" in selector:
        missing = [c for c in selector["names"] if c not in df.columns]
        if missing:
            raise KeyError(
                f"{where}: no column(s) {missing}; the columns are {list(map(str, df.columns))}"
            )
        return list(selector["names"])
    flags = re.IGNORECASE if selector.get("ignore_case") else 0
    rx = re.compile(selector["pattern"], flags)
    hits = [c for c in df.columns if rx.fullmatch(str(c))]
    if selector.get("invert"):
        hits = [c for c in df.columns if c not in hits]
    return hits


_TRUE = ("true", "1", "yes", "y", "t")
_FALSE = ("false", "0", "no", "n", "f")


def _convert_column(s: pd.Series, spec: Mapping[str, Any]) -> pd.Series:
    kind = spec["type"]
    if kind == "string":
        return s.astype("str")
    if kind == "float":
        return pd.to_numeric(s, errors="coerce").astype("float64")
    if kind == "int":
        num = pd.to_numeric(s, errors="coerce")
        if num.notna().all() and (num == num.round()).all():
            return num.astype("int64")
        return num.astype("float64")
    if kind == "boolean":
        true_values = spec.get("true_values") or _TRUE
        false_values = spec.get("false_values") or _FALSE
        custom = bool(spec.get("true_values") or spec.get("false_values"))
        mismatch = {"true": True, "false": False}.get(spec.get("mismatch_as", "error"))

        def conv(v: Any) -> Any:
            if v is None or (isinstance(v, float) and v != v):
                return None
            if isinstance(v, bool):
                return v
            text = str(v) if custom else str(v).strip().lower()
            if text in true_values:
                return True
            if text in false_values:
                return False
            return mismatch

        out = s.map(conv)
        return out.astype(bool) if out.notna().all() else out.astype("boolean")
    if kind == "datetime":
        out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
        for fmt in spec["formats"]:
            parsed = pd.to_datetime(s, format=fmt, errors="coerce")
            out = out.fillna(parsed)
        return out
    raise AssertionError(kind)  # pragma: no cover


def _sample(df: pd.DataFrame, args: Mapping[str, Any], salt: str) -> pd.DataFrame:
    import numpy as np

    seed = args.get("seed")
    entropy = [zlib.crc32(salt.encode())] + ([seed] if seed is not None else [])
    rng = np.random.default_rng(entropy if seed is not None else None)
    keep = rng.random(len(df)) < args["probability"]
    return df[keep]


_ISO_DATE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?)?"
)


def _all_iso_dates(values: pd.Series) -> bool:
    """Whether every value (none missing) is a string holding an ISO date.

    Vectorised (pyarrow's regex over the column): a Python loop over the values took 90 % of
    reading a 10 MB CSV mini-batch with a date column (``python -m benchmarks tabular``).
    The first value is looked at alone first, so a column that is no date costs nothing.
    """
    first = values.iloc[0]
    if not isinstance(first, str) or not _ISO_DATE.fullmatch(first):
        return False
    if pd.api.types.infer_dtype(values, skipna=True) != "string":
        return False
    matched = values.astype("string[pyarrow]").str.fullmatch(_ISO_DATE.pattern)
    return bool(matched.all())


def infer_dates(df: pd.DataFrame) -> pd.DataFrame:
    """Turn text columns whose every value is an ISO date (``2024-01-31``, optionally with a
    time) into datetimes, as ``mltable``'s type inference does."""
    out = None
    for col in df.columns:
        s = df[col]
        if not is_textual(s):
            continue
        values = s.dropna()
        if values.empty or not _all_iso_dates(values):
            continue
        try:
            converted = pd.to_datetime(s, format="ISO8601").astype("datetime64[ns]")
        except (ValueError, TypeError):
            continue
        if out is None:
            out = df.copy()
        out[col] = converted
    return df if out is None else out


def apply_transforms(
    df: pd.DataFrame, read: TableRead, path: str, *, salt: str | None = None
) -> pd.DataFrame:
    """Apply the path column and ``read.transforms`` to ``df``, the rows read from ``path``.

    Called by the worker once per piece of a file (so path-dependent columns are right).
    ``take``/``skip`` here act on the rows given: the planner rewrites a global take/skip into
    per-mini-batch ones. ``salt`` makes ``take_random_sample`` differ between pieces.
    """
    if read.include_path_column:
        df = df.copy()
        if read.path_column in df.columns:
            df = df.drop(columns=[read.path_column])
        df.insert(0, read.path_column, pd.Series([path] * len(df), index=df.index, dtype="str"))
    for t in read.transforms:
        where = f"{t.name} on {path}"
        if t.name == "take":
            df = df.iloc[: t.args]
        elif t.name == "skip":
            df = df.iloc[t.args :]
        elif t.name == "keep_columns":
            keep = set(_select(df, t.args, where))
            df = df[[c for c in df.columns if c in keep]]  # the table's order, as mltable
        elif t.name == "drop_columns":
            df = df.drop(columns=_select(df, t.args, where))
        elif t.name == "convert_column_types":
            df = df.copy()
            for selector, spec in t.args:
                for col in _select(df, selector, where):
                    df[col] = _convert_column(df[col], spec)
        elif t.name == "filter":
            mask = filter_mask(t.args, df)
            df = df[mask.to_numpy()]
        elif t.name == "take_random_sample":
            df = _sample(df, t.args, salt or path)
        elif t.name == "extract_columns_from_partition_format":
            df = df.copy()
            values = match_partition_format(t.args, path) or {}
            for name, strp in partition_regex(t.args)[1]:
                value = values.get(name)
                if strp is not None:
                    stamp = pd.to_datetime(value, format=strp) if value is not None else pd.NaT
                    df[name] = pd.Series([stamp] * len(df), index=df.index, dtype="datetime64[ns]")
                else:
                    df[name] = pd.Series([value] * len(df), index=df.index, dtype="str")
        else:  # pragma: no cover - parse_mltable refuses others
            raise AssertionError(t.name)
    return df
