"""The ``${{...}}`` bindings of a job file, and the inputs and outputs they bind
(docs/job-files.md#paths-and-bindings).

A binding names a value in a *scope*, a mapping from expression (``inputs.data``,
``parent.jobs.<s>.outputs.<o>``, ``name``) to value. An input becomes a
:class:`~daskprs.job.model.DataInput` or a checked literal, an output an
:class:`~daskprs.job.model.Output` with its path placed. Paths are resolved here too: local
paths relative to the YAML file that gives them (or to ``base``), fsspec URLs, and
``azureml://datastores/<name>/paths/<path>`` through the configuration's ``datastores:``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from daskprs.errors import close_match
from daskprs.job import schema as S
from daskprs.job.model import DataInput, Output
from daskprs.paths import URL, join_path
from daskprs.rundir import RunDir

BINDING = re.compile(r"\$\{\{\s*([^{}]*?)\s*\}\}")
_OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.S)
_DATASTORE_URI = re.compile(r"^azureml://datastores/([^/]+)/paths/?(.*)$")
_ABSOLUTE = re.compile(r"^/(?!/)")  # /abs, not //host


class _Absent:
    """The value of an optional input that was given no value."""

    def __repr__(self) -> str:
        return "<absent>"


ABSENT = _Absent()
# The value of an input or output that has a problem of its own: using it reports nothing more.
FAILED = object()


# --------------------------------------------------------------------------- paths


def resolve_path(raw: object, base: str, place: str, ctx: S.Context) -> str | None:
    """An input or output path as an absolute local path or a URL
    (docs/job-files.md#paths-and-bindings)."""
    text = str(raw).strip()
    datastore = _DATASTORE_URI.match(text)
    if datastore:
        name, rest = datastore.groups()
        root = ctx.datastores.get(name) or os.path.join(ctx.cwd, "daskprs-datastores", name)
        return join_path(root, rest)
    local = text.removeprefix("azureml:")
    if local != text and (
        local.startswith(("./", "../")) or local in (".", "..") or _ABSOLUTE.match(local)
    ):
        # the Python SDK (azure-ai-ml) writes a local path as azureml:./data or azureml:/abs
        text = local
    elif text.startswith("azureml:"):
        ctx.problem(
            place,
            f"{text} names an Azure asset, which cannot be resolved locally",
            "use a local path, an fsspec URL, or azureml://datastores/<name>/paths/<path> "
            "with the datastore mapped under `datastores:` in daskprs.yaml",
        )
        return None
    if text.startswith("memory://"):
        ctx.problem(
            place,
            "memory:// is not supported: worker processes cannot see it",
            "use a local folder or an object store URL",
        )
        return None
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
        if text.startswith("localhost/"):
            text = text[len("localhost") :]
    elif URL.match(text):
        return text
    return os.path.normpath(os.path.join(base, os.path.expanduser(text)))


def unmapped_datastore(text: str, ctx: S.Context) -> tuple[str, str] | None:
    """The datastore an ``azureml://datastores/<name>/...`` path names and the folder it falls
    back to, when ``daskprs.yaml`` maps no ``datastores: {<name>: ...}``."""
    datastore = _DATASTORE_URI.match(text.strip())
    if datastore is None or datastore[1] in ctx.datastores:
        return None
    return datastore[1], os.path.join(ctx.cwd, "daskprs-datastores", datastore[1])


def _mapping_hint(name: str) -> str:
    return (
        f"map the datastore in daskprs.yaml next to the job file: "
        f"`datastores: {{{name}: <folder or URL>}}`"
    )


def local_dir(raw: object, at: S.At, key: tuple, ctx: S.Context, what: str) -> str | None:
    path = resolve_path(raw, at.base, at(*key), ctx)
    if path is None:
        return None
    if URL.match(path):
        ctx.problem(at(*key), f"{what} must be a local folder, not {path}")
        return None
    if not os.path.isdir(path):
        ctx.problem(
            at(*key),
            f"{what} folder {path} does not exist",
            f"check the path; it is relative to {at.relative_to}",
        )
        return None
    return path


# --------------------------------------------------------------------------- bindings


def full_binding(value: object) -> str | None:
    if isinstance(value, str):
        match = BINDING.fullmatch(value.strip())
        if match:
            return " ".join(match[1].split())
    return None


def _lookup(
    expr: str, scope: Mapping[str, object], place: str, ctx: S.Context, used: set[str]
) -> object | None:
    expr = " ".join(expr.split())
    if expr in scope:
        used.add(expr)
        return None if scope[expr] is FAILED else scope[expr]
    if scope:
        close = close_match(expr, scope)
        hint = (
            f"did you mean ${{{{{close}}}}}?"
            if close
            else "available here: " + ", ".join(f"${{{{{k}}}}}" for k in sorted(scope))
        )
    else:
        hint = "no bindings can be used here"
    ctx.problem(place, f"unknown binding ${{{{{expr}}}}}", hint)
    return None


def _text(value: object) -> str:
    if isinstance(value, DataInput | Output):
        return value.path
    return str(value)


def drop_optional(text: str, scope: Mapping[str, object]) -> str:
    """Drop each ``$[[...]]`` block holding an optional input without a value; unwrap the rest."""

    def block(match: re.Match) -> str:
        exprs = (" ".join(e.split()) for e in BINDING.findall(match[1]))
        return "" if any(scope.get(e) is ABSENT for e in exprs) else match[1]

    return _OPTIONAL_BLOCK.sub(block, text)


def bind_text(
    text: str, scope: Mapping[str, object], place: str, ctx: S.Context, used: set[str]
) -> str:
    """Substitute every ``${{...}}`` in ``text`` (after :func:`drop_optional`)."""

    def one(match: re.Match) -> str:
        value = _lookup(match[1], scope, place, ctx, used)
        if value is None:
            return match[0]
        if value is ABSENT:
            ctx.problem(
                place,
                f"{match[0]} is an optional input with no value",
                f"give it a value or wrap the text in $[[ ... ]], e.g. $[[--arg {match[0]}]]",
            )
            return ""
        return _text(value)

    return BINDING.sub(one, drop_optional(text, scope))


def bind_value(value: object, scope: Mapping[str, object], place: str, ctx: S.Context) -> object:
    """A scalar field: a whole binding gives the bound value, text gets substituted."""
    used: set[str] = set()
    expr = full_binding(value)
    if expr is not None:
        bound = _lookup(expr, scope, place, ctx, used)
        if isinstance(bound, DataInput | Output):
            ctx.problem(place, f"${{{{{expr}}}}} is a data input or output, not a value")
            return None
        return None if bound is ABSENT else bound
    if isinstance(value, str) and BINDING.search(value):
        return bind_text(value, scope, place, ctx, used)
    return value


def _input(
    name: str,
    raw: object,
    spec: Mapping,
    at: S.At,
    scope: Mapping[str, object],
    ctx: S.Context,
    used: set[str],
    spec_at: S.At | None = None,
) -> object:
    """One input, bound: a :class:`DataInput`, a literal, ``ABSENT`` or None (a problem).

    ``raw`` is the value given (a node's ``inputs.<name>``, a definition with a default, a
    literal, a binding); ``spec`` the component's definition of the input, if any.
    """
    place = at("inputs", name)
    if isinstance(raw, Mapping):
        for key in raw:
            if key not in S.INPUT_KEYS:
                ctx.problem(S.place(place, key), "unknown key", S.suggest(str(key), S.INPUT_KEYS))
        kind = raw.get("type", spec.get("type"))
        mode = raw.get("mode", spec.get("mode"))
        if kind in S.LITERAL_TYPES or (kind is None and "path" not in raw):
            # the Python SDK binds a literal as {path: ${{parent.inputs.n}}}
            value = raw.get("value", raw.get("default", raw.get("path")))
            if value is None:
                return _missing(name, raw, spec, at, ctx, used, spec_at)
            value = bind_value(value, scope, S.place(place, "value"), ctx)
            return None if value is None else S.check_literal(value, {**spec, **raw}, place, ctx)
        path = raw.get("path", raw.get("default"))
        if path is None:
            return _missing(name, raw, spec, at, ctx, used, spec_at)
        if kind is None and not full_binding(path):
            kind = "uri_folder" if os.path.isdir(os.path.join(at.base, str(path))) else "uri_file"
        return _data_input(name, path, kind, mode, at, scope, ctx, used)
    if raw is None:
        return _missing(name, {}, spec, at, ctx, used, spec_at)
    kind = spec.get("type")
    if kind in (*S.DATA_TYPES, *S.MODEL_TYPES) or (full_binding(raw) and kind is None):
        return _data_input(name, raw, kind, spec.get("mode"), at, scope, ctx, used)
    raw = bind_value(raw, scope, place, ctx)
    return None if raw is None else S.check_literal(raw, spec, place, ctx)


def _missing(
    name: str,
    raw: Mapping,
    spec: Mapping,
    at: S.At,
    ctx: S.Context,
    used: set[str],
    spec_at: S.At | None,
) -> object:
    if spec and spec_at is not None and ("default" in spec or "path" in spec):
        return _input(name, spec, {}, spec_at, {}, ctx, used)
    if raw.get("optional") or spec.get("optional"):
        return ABSENT
    ctx.problem(
        at("inputs", name),
        f"input {name!r} has no value",
        f"give it a value in the YAML or with --set inputs.{name}=VALUE",
    )
    return None


def _data_input(
    name: str,
    path: object,
    kind: object,
    mode: object,
    at: S.At,
    scope: Mapping[str, object],
    ctx: S.Context,
    used: set[str],
) -> object:
    place = at("inputs", name)
    # The mode is "" when the YAML gives none: for an mltable with a read transformation that
    # means tabular input, while an explicit ro_mount or download means its files
    # (docs/job-files.md#inputs).
    expr = full_binding(path)
    if expr is not None:
        bound = _lookup(expr, scope, place, ctx, used)
        if bound is None or bound is ABSENT:
            return bound
        if isinstance(bound, DataInput | Output):
            kind = kind or bound.type
            resolved: str | None = bound.path
            default_mode = bound.mode if isinstance(bound, DataInput) else ""
        elif kind in (*S.DATA_TYPES, *S.MODEL_TYPES):
            resolved, default_mode = resolve_path(bound, at.base, place, ctx), ""
        else:
            return bound  # a literal bound to a literal
    else:
        text = bind_text(str(path), scope, place, ctx, used)
        resolved, default_mode = resolve_path(text, at.base, place, ctx), ""
        unmapped = unmapped_datastore(text, ctx)
        if resolved and not URL.match(resolved) and not os.path.exists(resolved):
            ctx.problem(
                place,
                f"input path {resolved} does not exist",
                f"the datastore {unmapped[0]} of {text.strip()} is not mapped; "
                + _mapping_hint(unmapped[0])
                if unmapped
                else "check the path; given with --set, it is relative to the current directory"
                if resolved in ctx.set_paths
                else f"check the path; it is relative to {at.relative_to}",
            )
    data_type = S.data_type(kind or "uri_folder", S.place(place, "type"), ctx)
    mode = S.check_mode(mode, S.place(place, "mode"), ctx, S.INPUT_MODES, default_mode)
    if resolved is None or data_type is None:
        return None
    return DataInput(name, data_type, resolved, mode)


# --------------------------------------------------------------------------- inputs and outputs


def definitions(raw: object, at: S.At, key: str, ctx: S.Context) -> dict[str, object]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        ctx.problem(at(key), f"must be a mapping, not {S.kind_of(raw)}")
        return {}
    return {str(k): v for k, v in raw.items()}


def bind_inputs(
    defs: Mapping[str, object] | None,
    def_at: S.At,
    vals: Mapping[str, object],
    val_at: S.At,
    scope: Mapping[str, object],
    ctx: S.Context,
    used: set[str],
) -> dict[str, object]:
    """Bind a step's inputs: the component's definitions (None inline) and the values given."""
    out: dict[str, object] = {}
    names = [*(defs or {}), *(n for n in vals if n not in (defs or {}))]
    for name in names:
        spec = defs.get(name) if defs is not None else None
        if defs is not None and name not in defs:
            ctx.problem(
                val_at("inputs", name),
                "the component has no such input",
                S.suggest(name, defs, "input"),
            )
            continue
        if spec is not None and not isinstance(spec, Mapping):
            spec = {"default": spec}
        if isinstance(spec, Mapping):
            for key in spec:
                if key not in S.INPUT_KEYS:
                    ctx.problem(
                        def_at("inputs", name, key),
                        "unknown key",
                        S.suggest(str(key), S.INPUT_KEYS),
                    )
            kind = spec.get("type")
            if kind is not None and kind not in (*S.DATA_TYPES, *S.MODEL_TYPES, *S.LITERAL_TYPES):
                ctx.problem(
                    def_at("inputs", name, "type"),
                    f"unknown type {kind!r}",
                    S.suggest(str(kind), [*S.DATA_TYPES, *S.LITERAL_TYPES], "type"),
                )
                continue
        if name in vals:
            value = _input(name, vals[name], spec or {}, val_at, scope, ctx, used, def_at)
        else:
            value = _input(name, spec, {}, def_at, {}, ctx, used)
        if value is not None:
            out[name] = value
    return out


def place_outputs(
    step: str,
    defs: Mapping[str, object] | None,
    def_at: S.At,
    vals: Mapping[str, object],
    val_at: S.At,
    parent: Mapping[str, object],
    parent_at: S.At,
    ctx: S.Context,
) -> dict[str, Output]:
    """Place a step's outputs: the given path, or ``<run_dir>/outputs/<step>/<output>``."""
    out: dict[str, Output] = {}
    scope = {"name": ctx.run_name, "default_datastore": ctx.default_datastore}
    names = [*(defs or {}), *(n for n in vals if n not in (defs or {}))]
    for name in names:
        if defs is not None and name not in defs:
            ctx.problem(
                val_at("outputs", name),
                "the component has no such output",
                S.suggest(name, defs, "output"),
            )
            continue
        pieces: list[tuple[Mapping, S.At, str]] = []
        spec = (defs or {}).get(name)
        if isinstance(spec, Mapping):
            pieces.append((spec, def_at, def_at("outputs", name)))
        raw = vals.get(name)
        expr = full_binding(raw)
        if expr is not None:
            target = expr.removeprefix("parent.outputs.")
            if not expr.startswith("parent.outputs.") or target not in parent:
                hint = (
                    S.suggest(target, parent, "pipeline output")
                    if parent
                    else "a node output binds only ${{parent.outputs.<name>}}"
                )
                ctx.problem(val_at("outputs", name), f"unknown binding ${{{{{expr}}}}}", hint)
                continue
            given = parent[target]
            if isinstance(given, Mapping):
                pieces.append((given, parent_at, parent_at("outputs", target)))
        elif isinstance(raw, Mapping):
            pieces.append((raw, val_at, val_at("outputs", name)))
        elif raw is not None:
            ctx.problem(
                val_at("outputs", name),
                f"must be a mapping or ${{{{parent.outputs.<name>}}}}, not {S.kind_of(raw)}",
            )
            continue
        merged: dict[str, object] = {}
        path_at, place = val_at, val_at("outputs", name)
        for piece, piece_at, piece_place in pieces:
            for key in piece:
                if key not in S.OUTPUT_KEYS:
                    ctx.problem(
                        S.place(piece_place, key), "unknown key", S.suggest(str(key), S.OUTPUT_KEYS)
                    )
            merged.update(piece)
            if "path" in piece:
                path_at, place = piece_at, piece_place
        kind = S.data_type(
            merged.get("type", "uri_folder"), S.place(place, "type"), ctx, outputs=True
        )
        mode = S.check_mode(
            merged.get("mode"), S.place(place, "mode"), ctx, S.OUTPUT_MODES, "rw_mount"
        )
        if merged.get("path") is not None:
            text = bind_text(str(merged["path"]), scope, S.place(place, "path"), ctx, set())
            path = resolve_path(text, path_at.base, S.place(place, "path"), ctx)
            explicit = True
            unmapped = unmapped_datastore(text, ctx)
            if unmapped is not None:
                ctx.note(
                    f"azureml://datastores/{unmapped[0]}: not mapped in daskprs.yaml, so outputs "
                    f"on it are written under {unmapped[1]}; {_mapping_hint(unmapped[0])}"
                )
        else:
            path, explicit = RunDir(ctx.run_dir).output(step, name), False
        if path is not None and kind is not None:
            out[name] = Output(name, kind, path, explicit, mode)
    return out
