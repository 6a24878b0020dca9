"""The MLTable file and its parser: :func:`parse_mltable` turns the YAML of a folder's
``MLTable`` file into a frozen, picklable :class:`MLTableSpec` (pure: no I/O; every mistake is a
:class:`~daskprs.errors.PlanningError` naming the file and the fix), :func:`load_mltable` reads
the file first. The values it builds (:mod:`daskprs.inputs.tablemodel`), the filter
language (:mod:`daskprs.inputs.filters`), partition formats (:mod:`daskprs.inputs.partitions`)
and the transformations a worker applies (:mod:`daskprs.inputs.transforms`) live in their own
modules; their public names are importable from here too. An MLTable file looks like::

    paths:
      - pattern: ./data/**/*.csv
    transformations:
      - read_delimited: {delimiter: ",", header: all_files_same_headers}
      - filter: 'col("amount") > 3 and col("store") == "x"'
      - keep_columns: [store, amount]
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from daskprs.errors import PlanningError, suggest
from daskprs.inputs.filesystems import filesystem
from daskprs.inputs.filters import parse_filter
from daskprs.inputs.partitions import match_partition_format, partition_columns, partition_regex
from daskprs.inputs.tablemodel import (
    ENCODINGS,
    HEADER_MODES,
    ROW_PRESERVING,
    TRANSFORMS,
    MLTableSpec,
    PathEntry,
    TableRead,
    Transform,
)
from daskprs.inputs.tablemodel import WIDE_ENCODINGS as WIDE_ENCODINGS
from daskprs.paths import join_path

__all__ = [
    "HEADER_MODES",
    "MLTABLE_FILE",
    "READ_TRANSFORMS",
    "ROW_PRESERVING",
    "TRANSFORMS",
    "MLTableSpec",
    "PathEntry",
    "TableRead",
    "Transform",
    "apply_transforms",
    "csv_read_options",
    "infer_dates",
    "join_path",
    "load_mltable",
    "match_partition_format",
    "parse_filter",
    "parse_mltable",
    "partition_columns",
]

MLTABLE_FILE = "MLTable"

# Re-exported from :mod:`daskprs.inputs.transforms`, which imports pandas, on first use only:
# a file-list job's driver plans through this module and never needs pandas (0.3 s to import
# and 65 MB of RSS; issue 23).
_FROM_TRANSFORMS = ("apply_transforms", "csv_read_options", "infer_dates")
if TYPE_CHECKING:
    from daskprs.inputs.transforms import apply_transforms, csv_read_options, infer_dates


def __getattr__(name: str) -> Any:
    if name in _FROM_TRANSFORMS:
        from daskprs.inputs import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The read transformations, by the TableRead.reader they give.
READ_TRANSFORMS = {
    "read_delimited": "delimited",
    "read_parquet": "parquet",
    "read_json_lines": "json_lines",
}

_TOP_KEYS = ("paths", "transformations", "traits", "metadata", "type", "$schema", "query_source")

_READ_OPTIONS = {
    "delimited": (
        "delimiter",
        "encoding",
        "header",
        "empty_as_string",
        "include_path_column",
        "path_column",
        "infer_column_types",
        "support_multi_line",
        "partition_size",
    ),
    "parquet": ("include_path_column", "path_column"),
    "json_lines": (
        "invalid_lines",
        "encoding",
        "include_path_column",
        "path_column",
        "partition_size",
    ),
}

_COLUMN_TYPES = ("string", "int", "float", "boolean", "datetime")


def load_mltable(folder: str, *, fs: Any = None, storage_options: Mapping | None = None):
    """Read and parse the ``MLTable`` file of ``folder`` (a local path or URL).

    ``folder`` may also name the ``MLTable`` file itself.
    """

    folder = folder.rstrip("/") or "/"
    if posixpath.basename(folder) == MLTABLE_FILE:
        folder = posixpath.dirname(folder)
    source = join_path(folder, MLTABLE_FILE)
    if fs is None:
        fs, fs_path = filesystem(source, storage_options)
    else:
        fs_path = fs._strip_protocol(source)
    try:
        data = fs.cat_file(fs_path)
    except FileNotFoundError as err:
        raise PlanningError(
            f"{folder}: no MLTable file in this folder (an input of type mltable is a folder "
            f"holding a YAML file named 'MLTable'); add one, or give the input type uri_folder"
        ) from err
    except IsADirectoryError as err:  # pragma: no cover - a folder named MLTable
        raise PlanningError(f"{source}: is a folder, not an MLTable file") from err
    return parse_mltable(data.decode("utf-8-sig"), folder, source=source)


def parse_mltable(text: str, folder: str, *, source: str | None = None) -> MLTableSpec:
    """Parse the text of an MLTable file whose folder is ``folder``.

    Raises
    ------
    PlanningError
        The YAML is invalid, a key or transformation is unknown, an option has a wrong value;
        the message names the file and says the fix.
    """
    import yaml

    source = source or join_path(folder, MLTABLE_FILE)
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PlanningError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(doc, dict):
        raise PlanningError(f"{source}: expected a mapping with 'paths:' at the top")
    for key in doc:
        if key not in _TOP_KEYS:
            raise PlanningError(
                f"{source}: unknown key '{key}'{_suggest(str(key), _TOP_KEYS)}; "
                f"an MLTable has {', '.join(_TOP_KEYS[:4])}"
            )
    if "query_source" in doc:
        raise PlanningError(f"{source}: 'query_source' (a database query) is not supported")
    paths = _parse_paths(doc.get("paths"), folder, source)
    read, partition_format, notes = _parse_transformations(doc.get("transformations"), source)
    traits = doc.get("traits") or {}
    return MLTableSpec(
        folder=folder,
        source=source,
        paths=paths,
        read=read,
        partition_format=partition_format,
        notes=notes,
        traits=dict(traits) if isinstance(traits, dict) else {},
    )


def _suggest(word: str, choices: Sequence[str]) -> str:
    hint = suggest(word, choices, quote="'", list_known=False)
    return f" ({hint})" if hint else ""


def _parse_paths(raw: Any, folder: str, source: str) -> tuple[PathEntry, ...]:
    if not raw or not isinstance(raw, list):
        raise PlanningError(
            f"{source}: 'paths' must be a non-empty list of 'file:', 'folder:' or 'pattern:' "
            f"entries, e.g. 'paths: [{{pattern: ./*.csv}}]'"
        )
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or len(item) != 1:
            raise PlanningError(
                f"{source}: paths[{i}] must be one of 'file: X', 'folder: X', 'pattern: X'"
            )
        ((kind, value),) = item.items()
        if kind not in ("file", "folder", "pattern"):
            raise PlanningError(
                f"{source}: paths[{i}]: unknown kind '{kind}'"
                f"{_suggest(str(kind), ('file', 'folder', 'pattern'))}; "
                f"use 'file', 'folder' or 'pattern'"
            )
        if not isinstance(value, str) or not value:
            raise PlanningError(f"{source}: paths[{i}].{kind} must be a non-empty string")
        out.append(PathEntry(kind, join_path(folder, value), value))
    return tuple(out)


def _parse_transformations(
    raw: Any, source: str
) -> tuple[TableRead | None, str | None, tuple[str, ...]]:
    if raw is None:
        return None, None, ()
    if not isinstance(raw, list):
        raise PlanningError(f"{source}: 'transformations' must be a list")
    read: TableRead | None = None
    transforms: list[Transform] = []
    notes: list[str] = []
    known = (*READ_TRANSFORMS, "read_delta_lake", *TRANSFORMS, "sample", "select_partitions")
    for i, item in enumerate(raw):
        if isinstance(item, str):
            name, args = item, None
        elif isinstance(item, dict) and len(item) == 1:
            ((name, args),) = item.items()
        else:
            raise PlanningError(
                f"{source}: transformations[{i}] must be a name or a one-key mapping ('- take: 10')"
            )
        where = f"{source}: transformations[{i}] ({name})"
        if name in READ_TRANSFORMS:
            if read is not None:
                raise PlanningError(f"{where}: only one read transformation is allowed")
            read = _parse_read(READ_TRANSFORMS[name], args, where, source)
            if read.infer_column_types and isinstance(args, dict):
                overrides = _infer_overrides(args.get("infer_column_types"), where)
                if overrides:
                    transforms.insert(0, overrides)
        elif name == "read_delta_lake":
            raise PlanningError(
                f"{where}: read_delta_lake is not supported by daskprs yet; convert the table "
                f"to parquet files and use read_parquet"
            )
        elif name == "select_partitions":
            raise PlanningError(f"{where}: select_partitions is not supported; remove it")
        elif name == "sample":
            transforms.append(_parse_sample(args, where))
        elif name in TRANSFORMS:
            transforms.append(_parse_transform(name, args, where))
        else:
            raise PlanningError(
                f"{where}: unknown transformation '{name}'{_suggest(str(name), known)}; "
                f"known: {', '.join(known)}"
            )
    partition_format = next(
        (t.args for t in transforms if t.name == "extract_columns_from_partition_format"), None
    )
    if read is None:
        ignored = [t.name for t in transforms if t.name != "extract_columns_from_partition_format"]
        if ignored:
            notes.append(
                f"{source}: no read transformation, so the input is a file list; "
                f"{', '.join(ignored)} not applied"
            )
        return None, partition_format, tuple(notes)
    return replace(read, transforms=tuple(transforms)), partition_format, tuple(notes)


def _check_keys(args: Mapping, allowed: Sequence[str], where: str) -> None:
    for key in args:
        if key not in allowed:
            raise PlanningError(
                f"{where}: unknown option '{key}'{_suggest(str(key), allowed)}; "
                f"allowed: {', '.join(allowed)}"
            )


def _bool(args: Mapping, key: str, default: bool, where: str) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise PlanningError(f"{where}: '{key}' must be true or false, not {value!r}")
    return value


def _parse_read(reader: str, args: Any, where: str, source: str) -> TableRead:
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise PlanningError(f"{where}: options must be a mapping")
    _check_keys(args, _READ_OPTIONS[reader], where)
    kw: dict[str, Any] = {"reader": reader, "source": source}
    if "include_path_column" in args:
        kw["include_path_column"] = _bool(args, "include_path_column", False, where)
    if "path_column" in args:
        kw["path_column"] = str(args["path_column"])
        kw["include_path_column"] = True
    if "encoding" in args:
        enc = str(args["encoding"])
        if enc.lower() not in ENCODINGS:
            raise PlanningError(
                f"{where}: unknown encoding '{enc}'; use one of {', '.join(sorted(ENCODINGS))}"
            )
        kw["encoding"] = enc.lower()
    if reader == "delimited":
        if "delimiter" in args:
            delim = args["delimiter"]
            if not isinstance(delim, str) or not 1 <= len(delim) <= 2:
                if delim != "\\t":
                    raise PlanningError(
                        f"{where}: 'delimiter' must be one or two characters, not {delim!r}"
                    )
            kw["delimiter"] = "\t" if delim == "\\t" else delim
        header = args.get("header", "all_files_same_headers")
        if header not in HEADER_MODES:
            raise PlanningError(
                f"{where}: header '{header}' is unknown{_suggest(str(header), HEADER_MODES)}; "
                f"use one of {', '.join(HEADER_MODES)}"
            )
        kw["header"] = header
        kw["empty_as_string"] = _bool(args, "empty_as_string", False, where)
        kw["support_multi_line"] = _bool(args, "support_multi_line", False, where)
        infer = args.get("infer_column_types", True)
        if isinstance(infer, dict):
            infer = True
        if not isinstance(infer, bool):
            raise PlanningError(f"{where}: 'infer_column_types' must be true, false or a mapping")
        kw["infer_column_types"] = infer
    if reader == "json_lines":
        invalid = args.get("invalid_lines", "error")
        if invalid not in ("error", "drop"):
            raise PlanningError(f"{where}: invalid_lines must be 'error' or 'drop'")
        kw["invalid_lines"] = invalid
    return TableRead(**kw)


def _infer_overrides(infer: Any, where: str) -> Transform | None:
    if not isinstance(infer, dict):
        return None
    _check_keys(infer, ("sample_size", "column_type_overrides"), where)
    overrides = infer.get("column_type_overrides")
    if not overrides:
        return None
    return _parse_transform("convert_column_types", overrides, where)


def _parse_sample(args: Any, where: str) -> Transform:
    if not isinstance(args, dict) or args.get("sampler") not in ("randomPercent", "random_percent"):
        raise PlanningError(f"{where}: sample needs 'sampler: random_percent'")
    return _parse_transform("take_random_sample", args.get("sampler_arguments") or {}, where)


def _parse_selector(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, str):
        return {"names": (raw,)}
    if isinstance(raw, list) and all(isinstance(c, str) for c in raw):
        return {"names": tuple(raw)}
    if isinstance(raw, dict) and isinstance(raw.get("pattern"), str):
        _check_keys(raw, ("pattern", "ignore_case", "invert"), where)
        flags = re.IGNORECASE if raw.get("ignore_case") else 0
        try:
            re.compile(raw["pattern"], flags)
        except re.error as err:
            raise PlanningError(f"{where}: bad column pattern {raw['pattern']!r}: {err}") from err
        return {
            "pattern": raw["pattern"],
            "ignore_case": bool(raw.get("ignore_case", False)),
            "invert": bool(raw.get("invert", False)),
        }
    raise PlanningError(
        f"{where}: columns must be a name, a list of names or {{pattern: REGEX}}, not {raw!r}"
    )


def _parse_column_type(raw: Any, where: str) -> dict[str, Any]:
    if isinstance(raw, str):
        if raw == "stream_info":
            raise PlanningError(f"{where}: column type stream_info is not supported")
        if raw not in _COLUMN_TYPES or raw == "datetime":
            raise PlanningError(
                f"{where}: unknown column type {raw!r}; use string, int, float, boolean, "
                f"or {{datetime: {{formats: [...]}}}}"
            )
        return {"type": raw}
    if isinstance(raw, dict) and len(raw) == 1:
        ((kind, opts),) = raw.items()
        opts = opts or {}
        if kind == "boolean":
            _check_keys(opts, ("true_values", "false_values", "mismatch_as"), where)
            mismatch = opts.get("mismatch_as", "error")
            if mismatch not in ("true", "false", "error"):
                raise PlanningError(f"{where}: mismatch_as must be true, false or error")
            return {
                "type": "boolean",
                "true_values": tuple(str(v) for v in opts.get("true_values", ())),
                "false_values": tuple(str(v) for v in opts.get("false_values", ())),
                "mismatch_as": mismatch,
            }
        if kind == "datetime":
            _check_keys(opts, ("formats", "date_constant"), where)
            formats = opts.get("formats")
            if isinstance(formats, str):
                formats = [formats]
            if not formats:
                raise PlanningError(f"{where}: datetime needs 'formats'")
            return {"type": "datetime", "formats": tuple(str(f) for f in formats)}
        if kind == "stream_info":
            raise PlanningError(f"{where}: column type stream_info is not supported")
    raise PlanningError(f"{where}: bad column_type {raw!r}")


def _parse_transform(name: str, args: Any, where: str) -> Transform:
    if name in ("take", "skip"):
        if isinstance(args, bool) or not isinstance(args, int) or args < 0:
            raise PlanningError(f"{where}: {name} needs a row count >= 0, e.g. '- {name}: 10'")
        return Transform(name, args)
    if name in ("keep_columns", "drop_columns"):
        return Transform(name, _parse_selector(args, where))
    if name == "convert_column_types":
        if isinstance(args, dict):
            args = [args]
        if not isinstance(args, list) or not args:
            raise PlanningError(f"{where}: expected a list of {{columns, column_type}}")
        pairs = []
        for item in args:
            if not isinstance(item, dict) or "columns" not in item or "column_type" not in item:
                raise PlanningError(f"{where}: each entry needs 'columns' and 'column_type'")
            _check_keys(item, ("columns", "column_type"), where)
            pairs.append(
                (
                    _parse_selector(item["columns"], where),
                    _parse_column_type(item["column_type"], where),
                )
            )
        return Transform(name, tuple(pairs))
    if name == "filter":
        if not isinstance(args, str):
            raise PlanningError(f"{where}: filter needs an expression string")
        try:
            parse_filter(args)
        except ValueError as err:
            raise PlanningError(f"{where}: {err}") from err
        return Transform(name, args)
    if name == "take_random_sample":
        if not isinstance(args, dict):
            raise PlanningError(f"{where}: expected {{probability: P, seed: S}}")
        _check_keys(args, ("probability", "seed", "probability_lower_bound"), where)
        p = args.get("probability")
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p <= 1:
            raise PlanningError(f"{where}: probability must be a number in [0, 1]")
        seed = args.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise PlanningError(f"{where}: seed must be an integer")
        return Transform(name, {"probability": float(p), "seed": seed})
    if name == "extract_columns_from_partition_format":
        fmt = args.get("partition_format") if isinstance(args, dict) else args
        if not isinstance(fmt, str) or not fmt:
            raise PlanningError(
                f"{where}: expected {{partition_format: '{{Store}}/{{Brand}}/{{file_name}}.csv'}}"
            )
        try:
            partition_regex(fmt)
        except ValueError as err:
            raise PlanningError(f"{where}: {err}") from err
        return Transform(name, fmt)
    raise AssertionError(name)  # pragma: no cover
