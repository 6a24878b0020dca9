"""A :class:`~daskprs.inputs.plan.Plan` as versioned JSON, so that a run directory survives an
upgrade of daskprs (``steps/<step>/plan.json``).

The encoding is plain JSON with a few tags, exact both ways (a decoded plan compares equal to
the plan encoded): tuples are ``{"__tuple__": [...]}``, mappings ``{"__dict__": {...}}``, and
the plan's own value classes ``{"__type__": "TableBatch", "fields": {...}}``. Only those
classes are built when reading; nothing else in the file is executed or imported.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from daskprs.errors import PlanningError
from daskprs.inputs.batches import FileBatch, FileBatches, TableBatch, TablePiece
from daskprs.inputs.plan import Plan
from daskprs.inputs.tablemodel import TableRead, Transform
from daskprs.rundir import replace_file

__all__ = ["PLAN_FORMAT", "decode_plan", "encode_plan", "read_plan", "write_plan"]

# Bump when the meaning of a field changes; add a reader for the old format alongside.
PLAN_FORMAT = 1

_CLASSES: dict[str, Any] = {
    c.__name__: c
    for c in (Plan, FileBatch, FileBatches, TableBatch, TablePiece, TableRead, Transform)
}


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"a plan mapping with keys that are not strings: {value!r}")
        return {"__dict__": {k: _encode(v) for k, v in value.items()}}
    name = type(value).__name__
    if isinstance(value, FileBatches):  # a file list cut by count: its paths, once each
        fields = {
            "files": list(value.files),
            "per_batch": value.per_batch,
            "direct": value.direct,
            "storage_options": _encode(value.storage_options),
        }
        return {"__type__": name, "fields": fields}
    if dataclasses.is_dataclass(value) and _CLASSES.get(name) is type(value):
        fields = {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"__type__": name, "fields": fields}
    raise TypeError(f"cannot write {type(value).__name__} into a plan file: {value!r}")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v) for k, v in value["__dict__"].items()}
    cls = _CLASSES.get(value.get("__type__", ""))
    if cls is None:
        raise ValueError(f"unknown value in a plan file: {str(value)[:200]}")
    if cls is FileBatches:
        f = value["fields"]
        return FileBatches(
            [str(p) for p in f["files"]],
            int(f["per_batch"]),
            bool(f["direct"]),
            _decode(f["storage_options"]),
        )
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _decode(v) for k, v in value["fields"].items() if k in known})


def encode_plan(plan: Plan) -> dict[str, Any]:
    """The JSON document of ``plan`` (pure)."""
    return {"format": PLAN_FORMAT, "plan": _encode(plan)}


def decode_plan(doc: Any, source: str = "the plan file") -> Plan:
    """The plan of a JSON document written by :func:`encode_plan`.

    Raises
    ------
    PlanningError
        The document is of another format or damaged; the message says what to do.
    """
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != PLAN_FORMAT:
        raise PlanningError(
            f"{source} is of plan format {fmt!r}, and this daskprs reads format {PLAN_FORMAT}. "
            "Resume it with the daskprs version that started the run, or run the job anew."
        )
    try:
        plan = _decode(doc["plan"])
    except (KeyError, TypeError, ValueError) as err:
        raise PlanningError(
            f"{source} is damaged ({err}); run the job anew, or delete the file and resume "
            "with --force to plan the input again"
        ) from err
    if not isinstance(plan, Plan):
        raise PlanningError(f"{source} holds no plan; run the job anew")
    return plan


def write_plan(path: str, plan: Plan) -> None:
    """Write ``plan`` to ``path`` atomically."""
    # dumps, not dump: json.dump encodes in Python, dumps in C (8 times faster)
    replace_file(path, json.dumps(encode_plan(plan), separators=(",", ":")))


def read_plan(path: str) -> Plan:
    """The plan written to ``path`` by :func:`write_plan`."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except json.JSONDecodeError as err:
        raise PlanningError(f"{path} is not valid JSON ({err}); run the job anew") from err
    return decode_plan(doc, path)
