"""The MLTable file: its paths, its read transformation and the transformations after it.

An MLTable is a folder holding a YAML file named ``MLTable``::

    paths:
      - pattern: ./data/**/*.csv
    transformations:
      - read_delimited: {delimiter: ",", header: all_files_same_headers}
      - filter: 'col("amount") > 3 and col("store") == "x"'
      - keep_columns: [store, amount]

:func:`parse_mltable` turns the YAML into a frozen, picklable :class:`MLTableSpec` (pure: no
I/O); :func:`load_mltable` reads the file first. The read transformation and everything after
it become one :class:`TableRead`, which travels inside every tabular mini-batch; the worker
reads a piece of a file and calls :func:`apply_transforms` on it.

The PyPI package ``mltable`` is the reference reader. Where we differ, on purpose:

- ``extract_columns_from_partition_format`` reads the keys from each file's path even without
  ``include_path_column`` (``mltable`` gives null columns then).
- ``infer_column_types: true`` infers types per mini-batch with pandas (``mltable`` samples the
  first rows); a column can be ``int64`` in one mini-batch and ``float64`` in another.
  ``infer_column_types: false`` gives strings everywhere, as ``mltable`` does.
- A ``filter`` comparing a string column with a number converts the column to numbers first
  (values that are not numbers compare false).
- ``take_random_sample`` draws with numpy, deterministically per seed and piece of file.
"""

from __future__ import annotations

import ast
import difflib
import functools
import posixpath
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import pandas as pd

from daskprs.errors import PlanningError

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

HEADER_MODES = (
    "all_files_same_headers",
    "from_first_file",
    "all_files_different_headers",
    "no_header",
)

READ_TRANSFORMS = {
    "read_delimited": "delimited",
    "read_parquet": "parquet",
    "read_json_lines": "json_lines",
}

# Transformations applied after the read, in the order the MLTable lists them.
TRANSFORMS = (
    "take",
    "skip",
    "take_random_sample",
    "drop_columns",
    "keep_columns",
    "convert_column_types",
    "filter",
    "extract_columns_from_partition_format",
)

# Transformations that keep every row: a global take/skip may be moved before them.
ROW_PRESERVING = frozenset(
    {
        "drop_columns",
        "keep_columns",
        "convert_column_types",
        "extract_columns_from_partition_format",
    }
)

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

# MLTable encoding names -> Python codecs.
_ENCODINGS = {
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "utf8 bom": "utf-8-sig",
    "utf8bom": "utf-8-sig",
    "iso88591": "iso-8859-1",
    "iso-8859-1": "iso-8859-1",
    "latin1": "latin-1",
    "latin-1": "latin-1",
    "ascii": "ascii",
    "utf16": "utf-16",
    "utf-16": "utf-16",
    "utf32": "utf-32",
    "utf-32": "utf-32",
    "windows1252": "cp1252",
    "windows-1252": "cp1252",
}

# Encodings whose newline is not the single byte 0x0A: their files are never cut.
WIDE_ENCODINGS = frozenset({"utf-16", "utf-32"})

_COLUMN_TYPES = ("string", "int", "float", "boolean", "datetime")


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathEntry:
    """One entry of ``paths:``: ``kind`` is ``file``, ``folder`` or ``pattern``; ``path`` is
    resolved against the MLTable folder (an absolute local path or a URL); ``text`` is what the
    file said."""

    kind: Literal["file", "folder", "pattern"]
    path: str
    text: str


@dataclass(frozen=True)
class Transform:
    """One transformation after the read, with its arguments normalised.

    ``args`` by ``name``: ``take``/``skip``: int; ``keep_columns``/``drop_columns``: a column
    selector dict (``{"names": (...)}`` or ``{"pattern", "ignore_case", "invert"}``);
    ``convert_column_types``: tuple of ``(selector, type)`` pairs where type is a dict with
    ``type`` and its options; ``filter``: the expression text; ``take_random_sample``:
    ``{"probability", "seed"}``; ``extract_columns_from_partition_format``: the format text.
    """

    name: str
    args: Any = None

    def __repr__(self) -> str:
        return f"{self.name}({self.args!r})"


@dataclass(frozen=True)
class TableRead:
    """How a worker reads and transforms the pieces of a tabular input.

    ``columns`` is filled by the planner: the column names from the header of the first file
    (``all_files_same_headers``, ``from_first_file``), so a piece that does not begin at a
    header still gets the right names.
    """

    reader: Literal["delimited", "parquet", "json_lines"]
    delimiter: str = ","
    encoding: str = "utf8"
    header: str = "all_files_same_headers"
    empty_as_string: bool = False
    include_path_column: bool = False
    path_column: str = "Path"
    infer_column_types: bool = True
    support_multi_line: bool = False
    invalid_lines: str = "error"
    transforms: tuple[Transform, ...] = ()
    columns: tuple[str, ...] | None = None
    source: str = ""

    @property
    def codec(self) -> str:
        """The Python codec of ``encoding``."""
        return _ENCODINGS.get(self.encoding.lower(), self.encoding)

    @property
    def splittable(self) -> bool:
        """Whether text files may be cut at ``\\n`` bytes (not UTF-16/32)."""
        return self.reader != "parquet" and self.codec not in WIDE_ENCODINGS

    def has_header(self, first_file: bool) -> bool:
        """Whether a file begins with a header line under the header mode."""
        if self.reader != "delimited" or self.header == "no_header":
            return False
        if self.header == "from_first_file":
            return first_file
        return True

    @property
    def partition_format(self) -> str | None:
        for t in self.transforms:
            if t.name == "extract_columns_from_partition_format":
                return t.args
        return None


@dataclass(frozen=True)
class MLTableSpec:
    """An MLTable file, parsed.

    ``read`` is None when the MLTable has no read transformation (the input is then a file
    list); ``partition_format`` is the format of ``extract_columns_from_partition_format``
    when there is one (also for a file list).
    """

    folder: str
    source: str
    paths: tuple[PathEntry, ...]
    read: TableRead | None = None
    partition_format: str | None = None
    notes: tuple[str, ...] = ()
    traits: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def join_path(folder: str, path: str) -> str:
    """Resolve ``path`` (relative, absolute or a URL) against ``folder`` (a path or URL)."""
    if "://" in path or path.startswith("/"):
        return path
    if "://" in folder:
        proto, rest = folder.split("://", 1)
        return f"{proto}://{posixpath.normpath(posixpath.join(rest, path))}"
    return posixpath.normpath(posixpath.join(folder, path))


def load_mltable(folder: str, *, fs: Any = None, storage_options: Mapping | None = None):
    """Read and parse the ``MLTable`` file of ``folder`` (a local path or URL).

    ``folder`` may also name the ``MLTable`` file itself.
    """
    import fsspec.core

    folder = folder.rstrip("/") or "/"
    if posixpath.basename(folder) == MLTABLE_FILE:
        folder = posixpath.dirname(folder)
    source = join_path(folder, MLTABLE_FILE)
    if fs is None:
        fs, fs_path = fsspec.core.url_to_fs(source, **dict(storage_options or {}))
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
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
        if enc.lower() not in _ENCODINGS:
            raise PlanningError(
                f"{where}: unknown encoding '{enc}'; use one of {', '.join(sorted(_ENCODINGS))}"
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
            _partition_regex(fmt)
        except ValueError as err:
            raise PlanningError(f"{where}: {err}") from err
        return Transform(name, fmt)
    raise AssertionError(name)  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Partition formats
# --------------------------------------------------------------------------------------------

_DATE_TOKENS = [
    ("yyyy", r"\d{4}", "%Y"),
    ("MM", r"\d{2}", "%m"),
    ("dd", r"\d{2}", "%d"),
    ("HH", r"\d{2}", "%H"),
    ("mm", r"\d{2}", "%M"),
    ("ss", r"\d{2}", "%S"),
]


@functools.lru_cache(maxsize=64)
def _partition_regex(fmt: str) -> tuple[re.Pattern, tuple[tuple[str, str | None], ...]]:
    """Compile a partition format into a regex matched against the end of a path.

    ``{name}`` matches one path segment (or part of one); ``{name:yyyy/MM/dd}`` a date;
    ``*`` anything within a segment. Returns the regex and ``(name, strptime format)`` pairs.
    """
    body = fmt.lstrip("/")
    out = []
    names: list[tuple[str, str | None]] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "{":
            j = body.find("}", i)
            if j < 0:
                raise ValueError(f"partition format {fmt!r}: '{{' without '}}'")
            inner = body[i + 1 : j]
            name, _, datefmt = inner.partition(":")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ]*", name):
                raise ValueError(f"partition format {fmt!r}: bad column name {name!r}")
            if any(n == name for n, _ in names):
                raise ValueError(f"partition format {fmt!r}: column {name!r} appears twice")
            group = f"g{len(names)}"
            if datefmt:
                rx, strp = _date_pattern(datefmt)
                out.append(f"(?P<{group}>{rx})")
                names.append((name, strp))
            else:
                out.append(f"(?P<{group}>[^/]+?)")
                names.append((name, None))
            i = j + 1
        elif c == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(c))
            i += 1
    if not names:
        raise ValueError(f"partition format {fmt!r} names no column ({{Name}})")
    return re.compile(r"(?:^|/)" + "".join(out) + r"$"), tuple(names)


def _date_pattern(datefmt: str) -> tuple[str, str]:
    rx, strp = [], []
    i = 0
    while i < len(datefmt):
        for token, token_rx, token_strp in _DATE_TOKENS:
            if datefmt.startswith(token, i):
                rx.append(token_rx)
                strp.append(token_strp)
                i += len(token)
                break
        else:
            rx.append(re.escape(datefmt[i]))
            strp.append(datefmt[i].replace("%", "%%"))
            i += 1
    return "".join(rx), "".join(strp)


def partition_columns(fmt: str) -> tuple[str, ...]:
    """The column names a partition format defines, in order."""
    return tuple(name for name, _ in _partition_regex(fmt)[1])


def match_partition_format(fmt: str, path: str) -> dict[str, str] | None:
    """The values (as written in the path) of the format's columns, or None if ``path`` does
    not end with the format."""
    rx, names = _partition_regex(fmt)
    m = rx.search(path)
    if m is None:
        return None
    return {name: m.group(f"g{i}") for i, (name, _) in enumerate(names)}


# --------------------------------------------------------------------------------------------
# The filter expression language
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Col:
    name: str


@dataclass(frozen=True)
class _Lit:
    value: Any


@dataclass(frozen=True)
class _Op:
    op: str
    args: tuple


_CMP_OPS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_BIN_OPS = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.BitAnd: "and",
    ast.BitOr: "or",
}
_METHODS = {"startswith": 1, "endswith": 1, "contains": 1, "isnull": 0, "notnull": 0}
_MAX_FILTER = 10_000


@functools.lru_cache(maxsize=256)
def parse_filter(text: str) -> Any:
    """Parse a filter expression into a small tree, accepting only a whitelisted grammar.

    Allowed: ``col("name")``; string, number, bool and None literals; lists/tuples of
    literals; comparisons (``== != < <= > >= in not in``, chained); ``and``, ``or``, ``not``
    (and ``& | ~``); ``+ - * / // %``; the methods ``startswith``, ``endswith``, ``contains``,
    ``isnull``, ``notnull`` on a column. Nothing is evaluated by Python.

    Raises
    ------
    ValueError
        The expression uses anything else; the message names it.
    """
    if len(text) > _MAX_FILTER:
        raise ValueError(f"filter expression longer than {_MAX_FILTER} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"filter {text!r} is not a valid expression: {err.msg}") from err
    return _convert(tree.body, text)


def _convert(node: ast.AST, text: str) -> Any:
    def bad(what: str) -> ValueError:
        return ValueError(
            f'filter {text!r}: {what} is not allowed; use col("name"), literals, comparisons, '
            f"and/or/not, arithmetic and .startswith/.endswith/.contains/.isnull/.notnull"
        )

    if isinstance(node, ast.Constant):
        if isinstance(node.value, str | int | float | bool) or node.value is None:
            return _Lit(node.value)
        raise bad(f"the literal {node.value!r}")
    if isinstance(node, ast.List | ast.Tuple):
        values = [_convert(e, text) for e in node.elts]
        if not all(isinstance(v, _Lit) for v in values):
            raise bad("a list of non-literals")
        return _Lit(tuple(v.value for v in values))
    if isinstance(node, ast.BoolOp):
        op = "and" if isinstance(node.op, ast.And) else "or"
        return _Op(op, tuple(_convert(v, text) for v in node.values))
    if isinstance(node, ast.UnaryOp):
        operand = _convert(node.operand, text)
        if isinstance(node.op, ast.Not | ast.Invert):
            return _Op("not", (operand,))
        if isinstance(node.op, ast.USub):
            if isinstance(operand, _Lit) and isinstance(operand.value, int | float):
                return _Lit(-operand.value)
            return _Op("neg", (operand,))
        if isinstance(node.op, ast.UAdd):
            return operand
        raise bad(type(node.op).__name__)
    if isinstance(node, ast.BinOp):
        op = _BIN_OPS.get(type(node.op))
        if op is None:
            raise bad(f"the operator {type(node.op).__name__}")
        return _Op(op, (_convert(node.left, text), _convert(node.right, text)))
    if isinstance(node, ast.Compare):
        parts = []
        left = _convert(node.left, text)
        for op_node, right_node in zip(node.ops, node.comparators, strict=True):
            op = _CMP_OPS.get(type(op_node))
            if op is None:
                raise bad(f"the comparison {type(op_node).__name__}")
            right = _convert(right_node, text)
            parts.append(_Op(op, (left, right)))
            left = right
        return parts[0] if len(parts) == 1 else _Op("and", tuple(parts))
    if isinstance(node, ast.Call):
        if node.keywords:
            raise bad("a keyword argument")
        func = node.func
        if isinstance(func, ast.Name) and func.id == "col":
            if len(node.args) != 1 or not (
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
            ):
                raise bad('col() without one string argument (write col("name"))')
            return _Col(node.args[0].value)
        if isinstance(func, ast.Attribute) and func.attr in _METHODS:
            if len(node.args) != _METHODS[func.attr]:
                raise bad(f".{func.attr}() with {len(node.args)} argument(s)")
            target = _convert(func.value, text)
            args = tuple(_convert(a, text) for a in node.args)
            if not all(isinstance(a, _Lit) for a in args):
                raise bad(f"a non-literal argument to .{func.attr}()")
            return _Op(func.attr, (target, *args))
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "a call")
        raise bad(f"calling {name!r}")
    if isinstance(node, ast.Name):
        raise bad(f"the name {node.id!r} (write col({node.id!r}) for a column)")
    raise bad(f"the syntax {type(node).__name__}")


def _evaluate(node: Any, df: pd.DataFrame) -> Any:
    if isinstance(node, _Lit):
        return node.value
    if isinstance(node, _Col):
        if node.name not in df.columns:
            raise KeyError(
                f"filter: no column {node.name!r}; the columns are {list(map(str, df.columns))}"
            )
        return df[node.name]
    op, args = node.op, node.args
    if op in ("and", "or"):
        values = [_as_mask(_evaluate(a, df), df) for a in args]
        out = values[0]
        for v in values[1:]:
            out = (out & v) if op == "and" else (out | v)
        return out
    if op == "not":
        return ~_as_mask(_evaluate(args[0], df), df)
    if op == "neg":
        return -_numeric(_evaluate(args[0], df))
    if op in ("startswith", "endswith", "contains"):
        series = _evaluate(args[0], df)
        if not isinstance(series, pd.Series):
            raise ValueError(f"filter: .{op}() needs a column")
        s = series.astype("str")
        if op == "contains":
            return s.str.contains(args[1].value, regex=False, na=False)
        return getattr(s.str, op)(args[1].value, na=False)
    if op in ("isnull", "notnull"):
        series = _evaluate(args[0], df)
        return series.isna() if op == "isnull" else series.notna()
    left, right = _evaluate(args[0], df), _evaluate(args[1], df)
    if op in ("in", "not in"):
        if not isinstance(right, tuple):
            raise ValueError("filter: 'in' needs a list of literals on its right")
        result = left.isin(right) if isinstance(left, pd.Series) else left in right
        return ~result if op == "not in" else result
    left, right = _coerce_pair(left, right)
    if op in ("==", "!=", "<", "<=", ">", ">="):
        fn = {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }[op]
        return fn(left, right)
    fn = {
        "+": lambda a, b: a + b,
        "-": lambda a, b: a - b,
        "*": lambda a, b: a * b,
        "/": lambda a, b: a / b,
        "//": lambda a, b: a // b,
        "%": lambda a, b: a % b,
    }[op]
    return fn(left, right)


def _is_textual(s: Any) -> bool:
    return isinstance(s, pd.Series) and (pd.api.types.is_string_dtype(s.dtype) or s.dtype == object)


def _numeric(v: Any) -> Any:
    if _is_textual(v):
        return pd.to_numeric(v, errors="coerce")
    return v


def _coerce_pair(left: Any, right: Any) -> tuple[Any, Any]:
    """A string column compared with a number is converted to numbers first."""

    def is_num(v: Any) -> bool:
        return (isinstance(v, int | float) and not isinstance(v, bool)) or (
            isinstance(v, pd.Series) and pd.api.types.is_numeric_dtype(v.dtype)
        )

    if is_num(right) and _is_textual(left):
        left = pd.to_numeric(left, errors="coerce")
    elif is_num(left) and _is_textual(right):
        right = pd.to_numeric(right, errors="coerce")
    return left, right


def _as_mask(value: Any, df: pd.DataFrame) -> pd.Series:
    if isinstance(value, pd.Series):
        if value.dtype != bool:
            value = value.astype("boolean").fillna(False).astype(bool)
        return value
    return pd.Series(bool(value), index=df.index)


# --------------------------------------------------------------------------------------------
# Applying transforms (worker side)
# --------------------------------------------------------------------------------------------


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


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?")


def infer_dates(df: pd.DataFrame) -> pd.DataFrame:
    """Turn text columns whose every value is an ISO date (``2024-01-31``, optionally with a
    time) into datetimes, as ``mltable``'s type inference does."""
    out = None
    for col in df.columns:
        s = df[col]
        if not _is_textual(s):
            continue
        values = s.dropna()
        if values.empty or not all(isinstance(v, str) and _ISO_DATE.fullmatch(v) for v in values):
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
            mask = _as_mask(_evaluate(parse_filter(t.args), df), df)
            df = df[mask.to_numpy()]
        elif t.name == "take_random_sample":
            df = _sample(df, t.args, salt or path)
        elif t.name == "extract_columns_from_partition_format":
            df = df.copy()
            values = match_partition_format(t.args, path) or {}
            for name, strp in _partition_regex(t.args)[1]:
                value = values.get(name)
                if strp is not None:
                    stamp = pd.to_datetime(value, format=strp) if value is not None else pd.NaT
                    df[name] = pd.Series([stamp] * len(df), index=df.index, dtype="datetime64[ns]")
                else:
                    df[name] = pd.Series([value] * len(df), index=df.index, dtype="str")
        else:  # pragma: no cover - parse_mltable refuses others
            raise AssertionError(t.name)
    return df
