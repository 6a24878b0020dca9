"""The MLTable data model: the frozen, picklable values :mod:`daskprs.inputs.mltable` parses an
MLTable file into (:class:`MLTableSpec`, :class:`PathEntry`, :class:`TableRead`,
:class:`Transform`), with the vocabulary their fields take (header modes, transformation names,
encodings).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ENCODINGS",
    "HEADER_MODES",
    "ROW_PRESERVING",
    "TRANSFORMS",
    "WIDE_ENCODINGS",
    "MLTableSpec",
    "PathEntry",
    "TableRead",
    "Transform",
]

HEADER_MODES = (
    "all_files_same_headers",
    "from_first_file",
    "all_files_different_headers",
    "no_header",
)

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

# MLTable encoding names -> Python codecs.
ENCODINGS = {
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
        return ENCODINGS.get(self.encoding.lower(), self.encoding)

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
