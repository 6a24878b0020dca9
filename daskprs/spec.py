"""Read a job YAML, validate it, bind it, and resolve it into a :class:`~daskprs.jobmodel.Job`.

This is the only module that looks at job YAML (SPEC sections 1, 2 and 6). It is pure apart
from reading the job file, component files, the ``daskprs.yaml`` configuration and the entry
scripts (parsed with :mod:`ast`, never imported): nothing is written and no cluster is touched.

Every problem of a file is collected before anything is raised, so the user sees all of them
at once; each names its YAML place, says what is wrong and how to fix it. Keys that only matter
on Azure are accepted and reported as *notes*; suspicious but valid settings as *warnings*.

Binding happens in two phases, because a node's output paths depend only on its own
``outputs:`` section while its inputs may refer to any other node's outputs
(``${{parent.jobs.<s>.outputs.<o>}}``): first every node's outputs are placed, then inputs are
bound and the nodes are ordered by the references found.
"""

from __future__ import annotations

import ast
import difflib
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from daskprs import _schema as S
from daskprs.errors import JobSpecError, Problem
from daskprs.jobmodel import (
    CommandStep,
    DataInput,
    Job,
    MiniBatchSize,
    Output,
    ParallelStep,
    RuntimeSettings,
)

__all__ = ["NOT_YET_APPLIED", "load_job", "parse_mini_batch_size", "validate_file"]

#: Fields and runtime arguments that are parsed and validated but whose effect is not
#: implemented yet; each occurrence is reported as a note "... is accepted but not yet applied".
#: Remove a name from this set once the planner or the runner applies it.
NOT_YET_APPLIED: frozenset[str] = frozenset()

_BINDING = re.compile(r"\$\{\{\s*([^{}]*?)\s*\}\}")
_OPTIONAL_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.S)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_DATASTORE_URI = re.compile(r"^azureml://datastores/([^/]+)/paths/?(.*)$")


class _Absent:
    """The value of an optional input that was given no value."""

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT = _Absent()
# The value of an input or output that has a problem of its own: using it reports nothing more.
_FAILED = object()


# --------------------------------------------------------------------------- public API


def load_job(
    path: str | os.PathLike,
    sets: Sequence[str] = (),
    *,
    run_dir: str | None = None,
    run_name: str | None = None,
    config: Mapping | None = None,
    env: Mapping[str, str] | None = None,
) -> Job:
    """Read, validate and bind a job file.

    Parameters
    ----------
    path : str or os.PathLike
        A pipeline YAML (``type: pipeline``), a parallel component YAML, or a bare
        ``type: parallel`` YAML.
    sets : sequence of str
        ``--set`` values, ``KEY=VALUE``: ``inputs.<name>=VALUE`` binds a pipeline input (for a
        component or parallel file, one of its inputs; a path is taken relative to the current
        directory), ``jobs.<node>.<field>[.<sub>]=VALUE`` overrides a node field (VALUE is read
        as a YAML scalar). For a component or parallel file ``<field>=VALUE`` works too.
    run_dir : str, optional
        The run directory; outputs without a ``path`` go to ``<run_dir>/outputs/<node>/<output>``.
        Default (as for ``daskprs validate``): ``./daskprs-runs/<file stem>``, absolute. No
        folder is created.
    run_name : str, optional
        The run's name, ``${{name}}``. Default: the run directory's base name.
    config : mapping, optional
        The parsed ``daskprs.yaml`` (``datastores: {name: folder or URL}``, ``computes: {name:
        scheduler address}``). Default: ``daskprs.yaml`` next to the job file, else
        ``$XDG_CONFIG_HOME/daskprs/daskprs.yaml`` (``~/.config`` when unset), else empty.
        Relative datastore roots are relative to the configuration file's folder (the
        current directory for a mapping given here).
    env : mapping, optional
        The environment (``XDG_CONFIG_HOME``, ``HOME``); default :data:`os.environ`.

    Returns
    -------
    Job
        Steps in dependency order, with notes (fields accepted but not applied) and warnings.

    Raises
    ------
    JobSpecError
        Listing every problem of the file (and of the ``--set`` values), not only the first.
    """
    job, problems, _, _ = _load(path, sets, run_dir, run_name, config, env)
    if problems or job is None:
        raise JobSpecError(os.fspath(path), problems)
    return job


def validate_file(
    path: str | os.PathLike, sets: Sequence[str] = ()
) -> tuple[Job | None, list[Problem], list[str]]:
    """Validate a job file without raising.

    Parameters
    ----------
    path : str or os.PathLike
        The job file.
    sets : sequence of str
        ``--set`` values, as for :func:`load_job`.

    Returns
    -------
    tuple
        ``(job, problems, messages)``: the job (None when there are problems), every problem
        found, and the notes followed by the warnings.
    """
    job, problems, notes, warnings = _load(path, sets, None, None, None, None)
    return job, problems, [*notes, *warnings]


class _SizeError(ValueError):
    def __init__(self, message: str, hint: str):
        super().__init__(f"{message} ({hint})")
        self.message = message
        self.hint = hint


def parse_mini_batch_size(value: object) -> MiniBatchSize:
    """Parse a ``mini_batch_size``.

    Parameters
    ----------
    value : object
        A string of digits with an optional ``kb``/``mb``/``gb`` unit (any case, x1024 each)
        or ``rows`` suffix, or a YAML integer.

    Returns
    -------
    MiniBatchSize
        ``unit`` is ``"count"`` for a bare number, ``"bytes"`` with a unit (multiplied out),
        ``"rows"`` for ``"<n>rows"``.

    Raises
    ------
    ValueError
        For any other form (``"1.5mb"``, ``"10 kb"``, ``"10tb"``, negative numbers), with the
        right form in the message.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return MiniBatchSize(value, "count", str(value))
    if isinstance(value, str):
        match = S.SIZE.fullmatch(value)
        if match:
            number, unit = int(match[1]), (match[2] or "").lower()
            if not unit:
                return MiniBatchSize(number, "count", value)
            if unit == "rows":
                return MiniBatchSize(number, "rows", value)
            return MiniBatchSize(number * 1024 ** (S.UNITS.index(unit) + 1), "bytes", value)
    raise _SizeError(f"{value!r} is not a valid mini_batch_size", S.size_hint(value))


def _not_yet(ctx: S.Context, place: str, name: str) -> None:
    if name in NOT_YET_APPLIED:
        ctx.note(f"{place}: {name} is accepted but not yet applied")


# --------------------------------------------------------------------------- loading


def _load(
    path: str | os.PathLike,
    sets: Sequence[str],
    run_dir: str | None,
    run_name: str | None,
    config: Mapping | None,
    env: Mapping[str, str] | None,
) -> tuple[Job | None, list[Problem], list[str], list[str]]:
    env = os.environ if env is None else env
    source = os.path.abspath(os.fspath(path))
    run_dir = os.path.abspath(run_dir or os.path.join("daskprs-runs", Path(source).stem))
    ctx = S.Context(os.getcwd(), run_dir, run_name or os.path.basename(run_dir))
    doc = _read_yaml(source, "", ctx)
    if doc is None:
        return None, ctx.problems, ctx.notes, ctx.warnings
    if not isinstance(doc, dict):
        ctx.problem("", f"the job file must be a YAML mapping, not {S.kind_of(doc)}")
        return None, ctx.problems, ctx.notes, ctx.warnings
    _load_config(config, os.path.dirname(source), env, ctx)
    kind = _file_kind(doc, ctx)
    steps: list[ParallelStep | CommandStep] = []
    continue_on_failure = False
    if kind is not None:
        _apply_sets(doc, sets, kind, Path(source).stem, ctx)
        at = S.At("", os.path.dirname(source))
        if kind == "pipeline":
            steps, continue_on_failure = _pipeline(doc, at, ctx)
        else:
            steps = _single(doc, at, Path(source).stem, ctx)
    if ctx.problems:
        return None, ctx.problems, ctx.notes, ctx.warnings
    job = Job(
        source=source,
        kind=kind or "parallel",
        steps=tuple(steps),
        name=ctx.run_name,
        run_dir=run_dir,
        notes=tuple(ctx.notes),
        warnings=tuple(ctx.warnings),
        continue_on_step_failure=continue_on_failure,
    )
    return job, [], ctx.notes, ctx.warnings


def _read_yaml(path: str, place: str, ctx: S.Context) -> object | None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        ctx.problem(place, f"cannot read {path}: {err.strerror or err}", "check the path")
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err)
        name = path if place else "the file"
        ctx.problem(place, f"{name} is not valid YAML{where}: {what}", "fix the YAML syntax")
        return None
    if doc is None:
        ctx.problem(place, f"{path} is empty", "write a pipeline or parallel job YAML")
    return doc


def _load_config(
    config: Mapping | None, job_dir: str, env: Mapping[str, str], ctx: S.Context
) -> None:
    base, label = ctx.cwd, "daskprs.yaml"
    if config is None:
        home = env.get("HOME") or os.path.expanduser("~")
        user_dir = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        config = {}
        for candidate in (
            os.path.join(job_dir, "daskprs.yaml"),
            os.path.join(user_dir, "daskprs", "daskprs.yaml"),
        ):
            if os.path.isfile(candidate):
                base, label = os.path.dirname(candidate), candidate
                loaded = _read_yaml(candidate, candidate, ctx)
                config = loaded if loaded is not None else {}
                break
    if not isinstance(config, Mapping):
        ctx.problem(label, f"the configuration must be a mapping, not {S.kind_of(config)}")
        return
    for key, target in (("datastores", ctx.datastores), ("computes", ctx.computes)):
        entries = config.get(key) or {}
        if not isinstance(entries, Mapping):
            ctx.problem(f"{label}: {key}", f"must be a mapping of name to {key[:-1]}")
            continue
        for name, value in entries.items():
            value = str(value)
            if key == "datastores" and not _URL.match(value):
                value = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
            target[str(name)] = value


def _file_kind(doc: dict, ctx: S.Context) -> str | None:
    kind = doc.get("type")
    if kind == "pipeline" or (kind is None and "jobs" in doc):
        return "pipeline"
    if kind in S.NODE_TYPES:
        component = "version" in doc or "component" in str(doc.get("$schema", "")).lower()
        return "component" if component or kind == "command" else "parallel"
    if kind is None:
        ctx.problem("type", "the file has no `type`", "write `type: pipeline` or `type: parallel`")
    else:
        ctx.problem("type", f"unsupported file type {kind!r}", "allowed: pipeline, parallel")
    return None


# --------------------------------------------------------------------------- --set


def _apply_sets(doc: dict, sets: Sequence[str], kind: str, stem: str, ctx: S.Context) -> None:
    for item in sets:
        key, sep, text = str(item).partition("=")
        parts = [p.strip() for p in key.strip().split(".")]
        if not sep or not all(parts):
            ctx.problem(
                "--set",
                f"{item!r} is not KEY=VALUE",
                "e.g. --set inputs.data=./folder or --set jobs.score.mini_batch_size=1mb",
            )
            continue
        if parts[0] == "inputs" and len(parts) == 2:
            inputs = doc.get("inputs")
            if not isinstance(inputs, dict) or parts[1] not in inputs:
                known = inputs if isinstance(inputs, dict) else ()
                ctx.problem(
                    "--set",
                    f"{key}: the file has no input {parts[1]!r}",
                    S.suggest(parts[1], known, "input"),
                )
                continue
            _set_input(inputs, parts[1], text, ctx)
            continue
        target, schema, fields_ = doc, S.PIPELINE, parts
        if kind == "pipeline" and parts[0] == "jobs":
            jobs = doc.get("jobs") if isinstance(doc.get("jobs"), dict) else {}
            if len(parts) < 3 or parts[1] not in jobs or not isinstance(jobs[parts[1]], dict):
                node = parts[1] if len(parts) > 1 else ""
                ctx.problem("--set", f"{key}: no node {node!r}", S.suggest(node, jobs, "node"))
                continue
            target, fields_ = jobs[parts[1]], parts[2:]
            schema = S.COMMAND_NODE if target.get("type") == "command" else S.PARALLEL_NODE
        elif kind != "pipeline":
            schema = S.COMMAND_FILE if doc.get("type") == "command" else S.PARALLEL_FILE
            if parts[0] == "jobs" and len(parts) >= 3:
                name = str(doc.get("name") or stem)
                if parts[1] != name:
                    ctx.problem(
                        "--set",
                        f"{key}: the step is named {name!r}",
                        f"write jobs.{name}.{'.'.join(parts[2:])}",
                    )
                    continue
                fields_ = parts[2:]
        if not _set_path_known(fields_, schema, key, ctx):
            continue
        if fields_[0] == "inputs" and len(fields_) == 2:
            inputs = target.setdefault("inputs", {})
            if isinstance(inputs, dict):
                _set_input(inputs, fields_[1], text, ctx)
                continue
        _set_nested(target, fields_, _scalar(text), key, ctx)


def _set_path_known(fields_: list[str], schema: S.Schema, key: str, ctx: S.Context) -> bool:
    level: object = schema
    for index, name in enumerate(fields_):
        if level is S.FREE:
            return True
        if not isinstance(level, dict) or name not in level:
            known = level if isinstance(level, dict) else ()
            where = ".".join(fields_[:index]) or "the node"
            ctx.problem(
                "--set", f"{key}: {where} has no field {name!r}", S.suggest(name, known, "field")
            )
            return False
        level = level[name]
    return True


def _set_nested(target: dict, fields_: list[str], value: object, key: str, ctx: S.Context) -> None:
    for name in fields_[:-1]:
        child = target.get(name)
        if child is None:
            child = target[name] = {}
        if not isinstance(child, dict):
            ctx.problem("--set", f"{key}: {name} is {S.kind_of(child)}, not a mapping")
            return
        target = child
    target[fields_[-1]] = value


def _scalar(text: str) -> object:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, str | int | float | bool) else text


def _looks_like_path(text: str, cwd: str) -> bool:
    return bool(
        _URL.match(text)
        or text.startswith(("azureml://", ".", "~", "/"))
        or os.sep in text
        or "/" in text
        or os.path.exists(os.path.join(cwd, text))
    )


def _cwd_path(text: str, cwd: str) -> str:
    if _URL.match(text) or text.startswith("azureml:"):
        return text
    return os.path.normpath(os.path.join(cwd, os.path.expanduser(text)))


def _set_input(inputs: dict, name: str, text: str, ctx: S.Context) -> None:
    """Bind input ``name`` to a ``--set`` value: a path for data inputs, else a literal."""
    entry = inputs.get(name)
    if isinstance(entry, Mapping):
        entry = dict(entry)
        if entry.get("type") in (*S.DATA_TYPES, *S.MODEL_TYPES) or "path" in entry:
            entry["path"] = _cwd_path(text, ctx.cwd)
        else:
            entry["value"] = _scalar(text)
        inputs[name] = entry
    elif entry is not None and not (isinstance(entry, str) and _BINDING.search(entry)):
        inputs[name] = _scalar(text)
    elif _looks_like_path(text, ctx.cwd):
        inputs[name] = {"path": _cwd_path(text, ctx.cwd)}
    else:
        inputs[name] = _scalar(text)


# --------------------------------------------------------------------------- paths


def _join(root: str, *parts: str) -> str:
    if _URL.match(root):
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts if p)])
    return os.path.normpath(os.path.join(root, *parts))


def _parent(path: str) -> str:
    if _URL.match(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(path)


def _resolve_path(raw: object, base: str, place: str, ctx: S.Context) -> str | None:
    """An input or output path as an absolute local path or a URL (SPEC section 2)."""
    text = str(raw).strip()
    datastore = _DATASTORE_URI.match(text)
    if datastore:
        name, rest = datastore.groups()
        root = ctx.datastores.get(name) or os.path.join(ctx.cwd, "daskprs-datastores", name)
        return _join(root, rest)
    if text.startswith("azureml:"):
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
    elif _URL.match(text):
        return text
    return os.path.normpath(os.path.join(base, os.path.expanduser(text)))


def _local_dir(raw: object, at: S.At, key: tuple, ctx: S.Context, what: str) -> str | None:
    path = _resolve_path(raw, at.base, at(*key), ctx)
    if path is None:
        return None
    if _URL.match(path):
        ctx.problem(at(*key), f"{what} must be a local folder, not {path}")
        return None
    if not os.path.isdir(path):
        ctx.problem(
            at(*key),
            f"{what} folder {path} does not exist",
            "check the path; it is relative to the YAML file",
        )
        return None
    return path


# --------------------------------------------------------------------------- bindings


def _full_binding(value: object) -> str | None:
    if isinstance(value, str):
        match = _BINDING.fullmatch(value.strip())
        if match:
            return " ".join(match[1].split())
    return None


def _lookup(
    expr: str, scope: Mapping[str, object], place: str, ctx: S.Context, used: set[str]
) -> object | None:
    expr = " ".join(expr.split())
    if expr in scope:
        used.add(expr)
        return None if scope[expr] is _FAILED else scope[expr]
    if scope:
        close = difflib.get_close_matches(expr, list(scope), n=1, cutoff=0.6)
        hint = (
            f"did you mean ${{{{{close[0]}}}}}?"
            if close
            else "available here: " + ", ".join(f"${{{{{k}}}}}" for k in sorted(scope))
        )
    else:
        hint = "no bindings can be used here"
    ctx.problem(place, f"unknown binding ${{{{{expr}}}}}", hint)
    return None


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _text(value: object) -> str:
    if isinstance(value, DataInput | Output):
        return value.path
    return str(value)


def _drop_optional(text: str, scope: Mapping[str, object]) -> str:
    """Drop each ``$[[...]]`` block holding an optional input without a value; unwrap the rest."""

    def block(match: re.Match) -> str:
        exprs = (" ".join(e.split()) for e in _BINDING.findall(match[1]))
        return "" if any(scope.get(e) is _ABSENT for e in exprs) else match[1]

    return _OPTIONAL_BLOCK.sub(block, text)


def _bind_text(
    text: str, scope: Mapping[str, object], place: str, ctx: S.Context, used: set[str]
) -> str:
    """Substitute every ``${{...}}`` in ``text`` (after :func:`_drop_optional`)."""

    def one(match: re.Match) -> str:
        value = _lookup(match[1], scope, place, ctx, used)
        if value is None:
            return match[0]
        if value is _ABSENT:
            ctx.problem(
                place,
                f"{match[0]} is an optional input with no value",
                f"give it a value or wrap the text in $[[ ... ]], e.g. $[[--arg {match[0]}]]",
            )
            return ""
        return _text(value)

    return _BINDING.sub(one, _drop_optional(text, scope))


def _bind_value(value: object, scope: Mapping[str, object], place: str, ctx: S.Context) -> object:
    """A scalar field: a whole binding gives the bound value, text gets substituted."""
    used: set[str] = set()
    expr = _full_binding(value)
    if expr is not None:
        bound = _lookup(expr, scope, place, ctx, used)
        if isinstance(bound, DataInput | Output):
            ctx.problem(place, f"${{{{{expr}}}}} is a data input or output, not a value")
            return None
        return None if bound is _ABSENT else bound
    if isinstance(value, str) and _BINDING.search(value):
        return _bind_text(value, scope, place, ctx, used)
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
    """One input, bound: a :class:`DataInput`, a literal, ``_ABSENT`` or None (a problem).

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
            value = raw.get("value", raw.get("default"))
            if value is None:
                return _missing(name, raw, spec, at, ctx, used, spec_at)
            value = _bind_value(value, scope, S.place(place, "value"), ctx)
            return None if value is None else S.check_literal(value, {**spec, **raw}, place, ctx)
        path = raw.get("path", raw.get("default"))
        if path is None:
            return _missing(name, raw, spec, at, ctx, used, spec_at)
        if kind is None and not _full_binding(path):
            kind = "uri_folder" if os.path.isdir(os.path.join(at.base, str(path))) else "uri_file"
        return _data_input(name, path, kind, mode, at, place, scope, ctx, used)
    if raw is None:
        return _missing(name, {}, spec, at, ctx, used, spec_at)
    kind = spec.get("type")
    if kind in (*S.DATA_TYPES, *S.MODEL_TYPES) or (_full_binding(raw) and kind is None):
        return _data_input(name, raw, kind, spec.get("mode"), at, place, scope, ctx, used)
    raw = _bind_value(raw, scope, place, ctx)
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
        return _input(name, spec, spec_at, {}, ctx, used)
    if raw.get("optional") or spec.get("optional"):
        return _ABSENT
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
    place: str,
    scope: Mapping[str, object],
    ctx: S.Context,
    used: set[str],
) -> object:
    # The mode is "" when the YAML gives none: for an mltable with a read transformation that
    # means tabular input, while an explicit ro_mount or download means its files (SPEC 3).
    expr = _full_binding(path)
    if expr is not None:
        bound = _lookup(expr, scope, place, ctx, used)
        if bound is None or bound is _ABSENT:
            return bound
        if isinstance(bound, DataInput | Output):
            kind = kind or bound.type
            resolved: str | None = bound.path
            default_mode = bound.mode if isinstance(bound, DataInput) else ""
        elif kind in (*S.DATA_TYPES, *S.MODEL_TYPES):
            resolved, default_mode = _resolve_path(bound, at.base, place, ctx), ""
        else:
            return bound  # a literal bound to a literal
    else:
        text = _bind_text(str(path), scope, place, ctx, used)
        resolved, default_mode = _resolve_path(text, at.base, place, ctx), ""
        if resolved and not _URL.match(resolved) and not os.path.exists(resolved):
            ctx.problem(
                place,
                f"input path {resolved} does not exist",
                "check the path; it is relative to the YAML file that gives it",
            )
    data_type = S.data_type(kind or "uri_folder", S.place(place, "type"), ctx)
    mode = S.check_mode(mode, S.place(place, "mode"), ctx, S.INPUT_MODES, default_mode)
    if resolved is None or data_type is None:
        return None
    return DataInput(name, data_type, resolved, mode)  # type: ignore[arg-type]


def _definitions(raw: object, at: S.At, key: str, ctx: S.Context) -> dict[str, object]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        ctx.problem(at(key), f"must be a mapping, not {S.kind_of(raw)}")
        return {}
    return {str(k): v for k, v in raw.items()}


def _inputs(
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


def _outputs(
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
        expr = _full_binding(raw)
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
            if isinstance(parent[target], Mapping):
                pieces.append((parent[target], parent_at, parent_at("outputs", target)))  # type: ignore[arg-type]
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
            text = _bind_text(str(merged["path"]), scope, S.place(place, "path"), ctx, set())
            path = _resolve_path(text, path_at.base, S.place(place, "path"), ctx)
            explicit = True
        else:
            path, explicit = os.path.join(ctx.run_dir, "outputs", step, name), False
        if path is not None and kind is not None:
            out[name] = Output(name, kind, path, explicit, mode)
    return out


# --------------------------------------------------------------------------- nodes


@dataclass
class _Node:
    """A node before binding: its fields merged from its component and itself."""

    name: str
    type: str
    fields: dict[str, object]
    origins: dict[tuple, S.At]
    at: S.At
    input_defs: Mapping[str, object] | None
    def_at: S.At
    input_vals: Mapping[str, object]
    output_defs: Mapping[str, object] | None
    output_vals: Mapping[str, object]
    outputs: dict[str, Output] = field(default_factory=dict)
    inputs: dict[str, object] = field(default_factory=dict)
    deps: set[str] = field(default_factory=set)

    def origin(self, *keys: str) -> S.At:
        for length in (2, 1):
            if keys[:length] in self.origins:
                return self.origins[keys[:length]]
        return self.at


def _merge(component: Mapping, comp_at: S.At, node: Mapping, node_at: S.At) -> tuple[dict, dict]:
    """A component's fields overridden by the node's (nested settings merged key by key)."""
    merged: dict[str, object] = {}
    origins: dict[tuple, S.At] = {}
    for source, at in ((component, comp_at), (node, node_at)):
        for key, value in source.items():
            if key in ("inputs", "outputs", "component"):
                continue
            if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = {**merged[key], **value}  # type: ignore[dict-item]
            else:
                merged[key] = value
                origins[(key,)] = at
            if isinstance(value, Mapping):
                for sub in value:
                    origins[(key, str(sub))] = at
    return merged, origins


def _component(
    ref: object,
    node_at: S.At,
    cache: dict[str, tuple[dict, S.At] | None],
    root: str,
    ctx: S.Context,
) -> tuple[dict, S.At] | None:
    place = node_at("component")
    if isinstance(ref, Mapping):
        comp, at = dict(ref), S.At(place, node_at.base)
    elif isinstance(ref, str) and not ref.startswith("azureml:"):
        path = os.path.normpath(os.path.join(node_at.base, ref.removeprefix("file:")))
        if path in cache:
            return cache[path]
        cache[path] = None
        if not os.path.isfile(path):
            ctx.problem(
                place,
                f"component file {path} does not exist",
                "the path is relative to the YAML file",
            )
            return None
        comp = _read_yaml(path, place, ctx)  # type: ignore[assignment]
        if comp is None:
            return None
        label = os.path.relpath(path, root) if not os.path.isabs(ref) else path
        at = S.At(f"{label}: ", os.path.dirname(path))
        if not isinstance(comp, dict):
            ctx.problem(at(), f"a component file must be a YAML mapping, not {S.kind_of(comp)}")
            return None
    else:
        ctx.problem(
            place,
            f"{ref!r} is a registered component, which daskprs cannot fetch",
            "download the component YAML and write `component: ./file.yml`",
        )
        return None
    kind = comp.get("type")
    if kind not in S.NODE_TYPES:
        ctx.problem(
            at("type"), f"component type {kind!r} is not supported", "allowed: parallel, command"
        )
        return None
    S.check_keys(comp, S.PARALLEL_FILE if kind == "parallel" else S.COMMAND_FILE, at, (), ctx)
    if isinstance(ref, str):
        cache[path] = (comp, at)
    return comp, at


def _make_node(
    name: str, raw: object, at: S.At, cache: dict, root: str, ctx: S.Context
) -> _Node | None:
    if not isinstance(raw, Mapping):
        ctx.problem(at(), f"a node must be a mapping, not {S.kind_of(raw)}")
        return None
    comp: Mapping = {}
    comp_at = at
    if "component" in raw:
        loaded = _component(raw["component"], at, cache, root, ctx)
        if loaded is None:
            return None
        comp, comp_at = loaded
    kind = raw.get("type", comp.get("type"))
    if kind not in S.NODE_TYPES:
        hint = "allowed: parallel, command"
        ctx.problem(
            at("type"),
            f"node type {kind!r} is not supported" if kind else "the node has no `type`",
            hint,
        )
        return None
    if comp and comp.get("type") != kind:
        ctx.problem(at("type"), f"the node is {kind!r} but its component is {comp.get('type')!r}")
        return None
    S.check_keys(raw, S.PARALLEL_NODE if kind == "parallel" else S.COMMAND_NODE, at, (), ctx)
    fields_, origins = _merge(comp, comp_at, raw, at)
    return _Node(
        name=name,
        type=str(kind),
        fields=fields_,
        origins=origins,
        at=at,
        input_defs=_definitions(comp.get("inputs"), comp_at, "inputs", ctx) if comp else None,
        def_at=comp_at,
        input_vals=_definitions(raw.get("inputs"), at, "inputs", ctx),
        output_defs=_definitions(comp.get("outputs"), comp_at, "outputs", ctx) if comp else None,
        output_vals=_definitions(raw.get("outputs"), at, "outputs", ctx),
    )


def _pipeline(doc: dict, at: S.At, ctx: S.Context) -> tuple[list[ParallelStep | CommandStep], bool]:
    S.check_keys(doc, S.PIPELINE, at, (), ctx)
    settings = doc.get("settings") if isinstance(doc.get("settings"), Mapping) else {}
    if settings.get("default_datastore"):
        ctx.default_datastore = str(settings["default_datastore"]).removeprefix("azureml:")
    continue_on_failure = False
    if settings.get("continue_on_step_failure") is not None:
        value = S.as_bool(
            settings["continue_on_step_failure"], "settings.continue_on_step_failure", ctx
        )
        continue_on_failure = bool(value)
    for key in ("force_rerun", "on_init", "on_finalize"):
        if settings.get(key):
            ctx.not_applied(f"settings.{key}", key, settings[key])
    if doc.get("identity"):
        ctx.not_applied("identity", "identity", None)
    default_compute = ("settings.default_compute", settings.get("default_compute"))
    if not default_compute[1] and doc.get("compute"):
        default_compute = ("compute", doc.get("compute"))
    scope0 = {"name": ctx.run_name, "default_datastore": ctx.default_datastore}
    pin = _inputs(
        None, at, _definitions(doc.get("inputs"), at, "inputs", ctx), at, scope0, ctx, set()
    )
    pout = _definitions(doc.get("outputs"), at, "outputs", ctx)
    for name, entry in pout.items():
        for key in entry if isinstance(entry, Mapping) else ():
            if key not in S.OUTPUT_KEYS:
                ctx.problem(
                    at("outputs", name, key), "unknown key", S.suggest(str(key), S.OUTPUT_KEYS)
                )
    jobs = doc.get("jobs")
    if not isinstance(jobs, Mapping) or not jobs:
        ctx.problem("jobs", "the pipeline has no jobs", "add a `type: parallel` node under `jobs:`")
        return [], continue_on_failure
    cache: dict = {}
    nodes: dict[str, _Node] = {}
    for name, raw in jobs.items():
        node = _make_node(str(name), raw, S.At(f"jobs.{name}", at.base), cache, at.base, ctx)
        if node is not None:
            nodes[node.name] = node
    for node in nodes.values():
        node.outputs = _outputs(
            node.name, node.output_defs, node.def_at, node.output_vals, node.at, pout, at, ctx
        )
    scope: dict[str, object] = {**scope0, **{f"parent.inputs.{k}": v for k, v in pin.items()}}
    for node in nodes.values():
        for out in node.outputs.values():
            scope[f"parent.jobs.{node.name}.outputs.{out.name}"] = out
    steps: dict[str, ParallelStep | CommandStep] = {}
    for node in nodes.values():
        used: set[str] = set()
        node.inputs = _inputs(
            node.input_defs, node.def_at, node.input_vals, node.at, scope, ctx, used
        )
        node.deps = {u.split(".")[2] for u in used if u.startswith("parent.jobs.")}
        field_scope = {k: v for k, v in scope.items() if k.startswith("parent.inputs.")}
        step = _build(node, field_scope, default_compute, ctx)
        if step is not None:
            steps[node.name] = step
    order = _order({n.name: n.deps for n in nodes.values()}, ctx)
    result: list[ParallelStep | CommandStep] = []
    for name in order:
        if name in steps:
            deps = tuple(d for d in order if d in nodes[name].deps)
            result.append(replace(steps[name], depends_on=deps))
    return result, continue_on_failure


def _order(deps: Mapping[str, set[str]], ctx: S.Context) -> list[str]:
    """Names in dependency order, keeping the YAML order where there is a choice."""
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(deps):
        ready = [n for n in deps if n not in done and deps[n] <= done]
        if not ready:
            left = {n: deps[n] - done for n in deps if n not in done}
            cycle = [next(iter(left))]
            while True:
                following = sorted(left[cycle[-1]])[0]
                if following in cycle:
                    cycle = [*cycle[cycle.index(following) :], following]
                    break
                cycle.append(following)
            ctx.problem(
                "jobs",
                "the nodes depend on each other in a cycle: " + " -> ".join(cycle),
                "a node can use only outputs of nodes that do not use its own",
            )
            return order
        order.append(ready[0])
        done.add(ready[0])
    return order


def _single(doc: dict, at: S.At, stem: str, ctx: S.Context) -> list[ParallelStep | CommandStep]:
    """A parallel (or command) component file, or a bare ``type: parallel`` file."""
    kind = str(doc["type"])
    S.check_keys(doc, S.PARALLEL_FILE if kind == "parallel" else S.COMMAND_FILE, at, (), ctx)
    name = str(doc.get("name") or stem)
    fields_, origins = _merge({}, at, doc, at)
    node = _Node(
        name=name,
        type=kind,
        fields=fields_,
        origins=origins,
        at=at,
        input_defs=None,
        def_at=at,
        input_vals=_definitions(doc.get("inputs"), at, "inputs", ctx),
        output_defs=None,
        output_vals=_definitions(doc.get("outputs"), at, "outputs", ctx),
    )
    node.outputs = _outputs(name, None, at, node.output_vals, at, {}, at, ctx)
    scope = {"name": ctx.run_name, "default_datastore": ctx.default_datastore}
    node.inputs = _inputs(None, at, node.input_vals, at, scope, ctx, set())
    step = _build(node, {}, ("compute", None), ctx)
    return [step] if step is not None else []


# --------------------------------------------------------------------------- steps


def _build(
    node: _Node, scope: dict[str, object], default_compute: tuple[str, object], ctx: S.Context
) -> ParallelStep | CommandStep | None:
    literal_inputs = {
        f"inputs.{k}": v for k, v in node.inputs.items() if not isinstance(v, DataInput)
    }
    field_scope = {**scope, **literal_inputs}
    body_scope: dict[str, object] = {f"inputs.{k}": v for k, v in node.inputs.items()}
    body_scope.update({f"outputs.{k}": v for k, v in node.outputs.items()})
    for kind, declared in (
        ("inputs", [*(node.input_defs or {}), *node.input_vals]),
        ("outputs", [*(node.output_defs or {}), *node.output_vals]),
    ):
        for name in declared:
            body_scope.setdefault(f"{kind}.{name}", _FAILED)
    _common_notes(node, ctx)
    compute = _compute(node, default_compute, ctx)
    env_vars = _environment_variables(node, body_scope, ctx)
    if node.type == "command":
        return _command_step(node, body_scope, env_vars, ctx)
    return _parallel_step(node, field_scope, body_scope, env_vars, compute, ctx)


def _common_notes(node: _Node, ctx: S.Context) -> None:
    f = node.fields
    resources = f.get("resources") if isinstance(f.get("resources"), Mapping) else {}
    for key in ("instance_type", "shm_size", "docker_args", "max_instance_count", "locations"):
        if resources.get(key) is not None:
            ctx.not_applied(node.origin("resources", key)("resources", key), key, resources[key])
    for key in ("identity", "distribution", "limits", "services", "queue_settings"):
        if f.get(key):
            ctx.not_applied(node.origin(key)(key), key, None)
    task = f.get("task") if isinstance(f.get("task"), Mapping) else {}
    env_keys, env = (
        (("task", "environment"), task.get("environment"))
        if node.type == "parallel"
        else (("environment",), f.get("environment"))
    )
    env_at = node.origin(*env_keys)
    if isinstance(env, str):
        ctx.note(f"{env_at(*env_keys)}: {env} is not applied: {S.AZURE_ONLY['image']}")
    elif isinstance(env, Mapping):
        for key in ("image", "conda_file", "build"):
            if env.get(key) is not None:
                ctx.not_applied(env_at(*env_keys, key), key, env[key] if key != "build" else None)
    if task.get("model") is not None:
        ctx.not_applied(node.origin("task", "model")("task", "model"), "model", task["model"])


def _compute(node: _Node, default: tuple[str, object], ctx: S.Context) -> str | None:
    value = node.fields.get("compute")
    place = node.origin("compute")("compute") if value else default[0]
    value = value or default[1]
    if not value:
        return None
    name = str(value).removeprefix("azureml:")
    if name in ctx.computes:
        return ctx.computes[name]
    if name not in ctx.noted_computes:
        ctx.noted_computes.add(name)
        ctx.note(
            f"{place}: {value} is not applied: no mapping in daskprs.yaml `computes:`; "
            "the job runs on --scheduler or the embedded cluster"
        )
    return None


def _environment_variables(
    node: _Node, scope: Mapping[str, object], ctx: S.Context
) -> dict[str, str]:
    raw = node.fields.get("environment_variables")
    if not isinstance(raw, Mapping):
        return {}
    at = node.origin("environment_variables")
    out = {}
    for key, value in raw.items():
        text = "" if value is None else str(value)
        out[str(key)] = _bind_text(text, scope, at("environment_variables", key), ctx, set())
    return out


def _command_step(
    node: _Node, scope: Mapping[str, object], env_vars: dict[str, str], ctx: S.Context
) -> CommandStep | None:
    f = node.fields
    command = f.get("command")
    at = node.origin("command")
    if not isinstance(command, str) or not command.strip():
        ctx.problem(at("command"), "a command node needs a `command` string")
        return None
    command = _bind_text(command, scope, at("command"), ctx, set())
    code_at = node.origin("code")
    code = _local_dir(f["code"], code_at, ("code",), ctx, "code") if f.get("code") else code_at.base
    if code is None:
        return None
    return CommandStep(
        name=node.name,
        command=command,
        code_dir=code,
        inputs={k: v for k, v in node.inputs.items() if v is not _ABSENT},
        outputs=node.outputs,
        environment_variables=env_vars,
    )


def _entry_script(code_dir: str, entry: object, at: S.At, ctx: S.Context) -> str | None:
    place = at("task", "entry_script")
    if not isinstance(entry, str) or not entry.strip():
        ctx.problem(
            place,
            "a parallel node needs `task.entry_script`",
            "the name of a .py file in task.code",
        )
        return None
    path = os.path.normpath(os.path.join(code_dir, entry))
    if not os.path.isfile(path):
        ctx.problem(
            place,
            f"entry script {path} does not exist",
            f"task.entry_script is relative to task.code ({code_dir})",
        )
        return None
    try:
        tree = ast.parse(Path(path).read_bytes(), filename=path)
    except SyntaxError as err:
        ctx.problem(
            place, f"entry script {path} has a syntax error at line {err.lineno}: {err.msg}"
        )
        return None
    if not _defines_run(tree.body):
        ctx.problem(
            place,
            f"entry script {path} defines no run(mini_batch) function",
            "add a top-level `def run(mini_batch):` returning a list or a DataFrame",
        )
    return entry


def _defines_run(body: list[ast.stmt]) -> bool:
    for stmt in body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "run":
            return True
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "run" for t in targets):
                return True
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            if any((a.asname or a.name) == "run" for a in stmt.names):
                return True
        if isinstance(stmt, ast.If | ast.Try | ast.With):
            inner = [*stmt.body, *getattr(stmt, "orelse", []), *getattr(stmt, "finalbody", [])]
            for handler in getattr(stmt, "handlers", []):
                inner += handler.body
            if _defines_run(inner):
                return True
    return False


def _parallel_step(
    node: _Node,
    field_scope: Mapping[str, object],
    body_scope: Mapping[str, object],
    env_vars: dict[str, str],
    compute: str | None,
    ctx: S.Context,
) -> ParallelStep | None:
    f = node.fields
    task = f.get("task") if isinstance(f.get("task"), Mapping) else None
    task_at = node.origin("task")
    if task is None:
        ctx.problem(
            task_at("task"),
            "a parallel node needs a `task`",
            "task: {type: run_function, code: ./src, entry_script: score.py}",
        )
        return None
    if task.get("type", "run_function") != "run_function":
        ctx.problem(
            node.origin("task", "type")("task", "type"),
            f"task type {task.get('type')!r} is not supported",
            "allowed: run_function",
        )
    code_at = node.origin("task", "code")
    code_dir = (
        _local_dir(task["code"], code_at, ("task", "code"), ctx, "task.code")
        if task.get("code") is not None
        else task_at.base
    )
    entry = (
        _entry_script(code_dir, task.get("entry_script"), node.origin("task", "entry_script"), ctx)
        if code_dir
        else None
    )

    input_data = _input_data(node, ctx)
    mini_batch_size = _mini_batch_size(node, field_scope, input_data, ctx)
    node_settings = _node_settings(node, field_scope, ctx)
    resources = f.get("resources") if isinstance(f.get("resources"), Mapping) else {}
    instance_count = 1
    if resources.get("instance_count") is not None:
        place = node.origin("resources", "instance_count")("resources", "instance_count")
        instance_count = (
            S.as_int(
                _bind_value(resources["instance_count"], field_scope, place, ctx), place, ctx, 1
            )
            or 1
        )
    concurrency = None
    if f.get("max_concurrency_per_instance") is not None:
        place = node.origin("max_concurrency_per_instance")("max_concurrency_per_instance")
        concurrency = S.as_int(
            _bind_value(f["max_concurrency_per_instance"], field_scope, place, ctx), place, ctx, 1
        )
    keys: tuple[str, ...] = ()
    if f.get("partition_keys") is not None:
        place = node.origin("partition_keys")("partition_keys")
        raw_keys = f["partition_keys"]
        raw_keys = [raw_keys] if isinstance(raw_keys, str) else raw_keys
        if not isinstance(raw_keys, list) or not all(isinstance(k, str) for k in raw_keys):
            ctx.problem(
                place, "must be a list of column names", "e.g. partition_keys: [Store, Brand]"
            )
        else:
            keys = tuple(raw_keys)
            _not_yet(ctx, place, "partition_keys")
    if mini_batch_size is not None and mini_batch_size.value == 0 and not keys:
        place = node.origin("mini_batch_size")("mini_batch_size")
        ctx.problem(
            place,
            "mini_batch_size 0 needs partition_keys",
            'give a positive size, e.g. "10" or "1mb"',
        )

    args_at = node.origin("task", "program_arguments")
    args_place = args_at("task", "program_arguments")
    argv = _program_arguments(task.get("program_arguments"), body_scope, args_place, ctx)
    settings = _runtime_settings(node, node_settings, argv, args_place, ctx)
    append_row_to = _append_row_to(node, task.get("append_row_to"), ctx)
    first = next(iter(node.outputs.values()), None)
    output_dir = None
    if first is not None:
        output_dir = (
            _parent(first.path) if first.type == "uri_file" and first.explicit else first.path
        )
    if code_dir is None or entry is None or input_data is None or settings is None:
        return None
    return ParallelStep(
        name=node.name,
        input_data=input_data,
        entry_script=entry,
        code_dir=code_dir,
        inputs={k: v for k, v in node.inputs.items() if v is not _ABSENT},
        outputs=node.outputs,
        mini_batch_size=mini_batch_size,
        partition_keys=keys,
        instance_count=instance_count,
        max_concurrency_per_instance=concurrency,
        settings=settings,
        environment_variables=env_vars,
        program_arguments=argv,
        append_row_to=append_row_to,
        output_dir=output_dir,
        compute=compute,
    )


def _input_data(node: _Node, ctx: S.Context) -> DataInput | None:
    raw = node.fields.get("input_data")
    place = node.origin("input_data")("input_data")
    if raw is None:
        ctx.problem(place, "a parallel node needs `input_data`", "input_data: ${{inputs.<name>}}")
        return None
    expr = _full_binding(raw)
    name = expr.removeprefix("inputs.") if expr and expr.startswith("inputs.") else None
    value = node.inputs.get(name) if name is not None else None
    if isinstance(value, DataInput):
        return value
    data = [f"${{{{inputs.{k}}}}}" for k, v in node.inputs.items() if isinstance(v, DataInput)]
    if value is _ABSENT:
        ctx.problem(place, f"{raw} is an optional input with no value", "give it a value")
    elif name is not None and name in node.inputs:
        ctx.problem(
            place, f"{raw} is not a data input", "bind a uri_folder, uri_file or mltable input"
        )
    elif name is not None and (name in node.input_vals or name in (node.input_defs or {})):
        pass  # the input itself has a problem, reported where it is defined
    else:
        hint = f"did you mean {' or '.join(data)}?" if data else "bind a data input of the node"
        ctx.problem(
            place,
            f"input_data must be ${{{{inputs.<name>}}}} naming a data input, not {raw!r}",
            hint,
        )
    return None


def _mini_batch_size(
    node: _Node, scope: Mapping[str, object], input_data: DataInput | None, ctx: S.Context
) -> MiniBatchSize | None:
    raw = node.fields.get("mini_batch_size")
    if raw is None:
        return None
    place = node.origin("mini_batch_size")("mini_batch_size")
    value = _bind_value(raw, scope, place, ctx)
    if value is None:
        return None
    try:
        size = parse_mini_batch_size(value)
    except _SizeError as err:
        ctx.problem(place, err.message, err.hint)
        return None
    if input_data is not None and input_data.type != "mltable" and size.unit != "count":
        ctx.problem(
            place,
            f"{size} has a unit, but {input_data.name} is a {input_data.type}: a list of files",
            'give a number of files, e.g. "10"',
        )
        return None
    return size


def _node_settings(node: _Node, scope: Mapping[str, object], ctx: S.Context) -> dict[str, object]:
    """The runtime settings given as node fields (bindings resolved, values checked)."""
    f = node.fields
    out: dict[str, object] = {}
    for key in ("error_threshold", "mini_batch_error_threshold"):
        if f.get(key) is not None:
            place = node.origin(key)(key)
            value = S.as_int(_bind_value(f[key], scope, place, ctx), place, ctx, -1)
            if value is not None:
                out[key] = value
    if f.get("logging_level") is not None:
        place = node.origin("logging_level")("logging_level")
        level = _bind_value(f["logging_level"], scope, place, ctx)
        if level is not None and (level := S.as_level(level, place, ctx)):
            out["logging_level"] = level
    retry = f.get("retry_settings") if isinstance(f.get("retry_settings"), Mapping) else {}
    if retry.get("max_retries") is not None:
        place = node.origin("retry_settings", "max_retries")("retry_settings", "max_retries")
        value = S.as_int(_bind_value(retry["max_retries"], scope, place, ctx), place, ctx, 0)
        if value is not None:
            out["max_retries"] = value
    if retry.get("timeout") is not None:
        place = node.origin("retry_settings", "timeout")("retry_settings", "timeout")
        bound = _bind_value(retry["timeout"], scope, place, ctx)
        timeout = (
            S.as_float(bound, place, ctx, S.RUNTIME_ARGS["--run_invocation_timeout"])
            if bound is not None
            else None
        )
        if timeout is not None:
            out["timeout"] = timeout
    return out


def _program_arguments(
    raw: object, scope: Mapping[str, object], place: str, ctx: S.Context
) -> tuple[str, ...]:
    """Split like a shell first, then bind inside each token (a path with a space stays one)."""
    if raw is None:
        return ()
    if isinstance(raw, list):
        tokens = [str(t) for t in raw]
    else:
        try:
            tokens = shlex.split(_drop_optional(str(raw), scope))
        except ValueError as err:
            ctx.problem(
                place, f"cannot be split like a shell command line: {err}", "balance the quotes"
            )
            return ()
    used: set[str] = set()
    return tuple(_bind_text(token, scope, place, ctx, used) for token in tokens)


def _runtime_args(argv: tuple[str, ...], place: str, ctx: S.Context) -> dict[str, object]:
    """The runtime arguments in ``argv``, by exact name (``--x v`` and ``--x=v``)."""
    found: dict[str, object] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith("--") or token == "--":
            continue
        name, equals, value = token.partition("=")
        arg = S.RUNTIME_ARGS.get(name)
        if arg is None:
            close = sorted((S.edit_distance(name, known), known) for known in S.RUNTIME_ARGS)
            if close and close[0][0] <= 2:
                ctx.warn(
                    f"{place}: {name} is not a runtime argument and is passed to the script "
                    f"unchanged; did you mean {close[0][1]}?"
                )
            continue
        if not equals:
            if index < len(argv) and not argv[index].startswith("--"):
                value = argv[index]
                index += 1
            else:
                ctx.problem(place, f"{name} has no value", f"write {name} VALUE")
                continue
        arg_place = f"{place}: {name}"
        converted: object
        if arg.kind == "int":
            converted = S.as_int(value, arg_place, ctx, int(arg.low or 0))
        elif arg.kind == "tries":
            converted = S.as_int(value, arg_place, ctx, 1)
        elif arg.kind == "float":
            converted = S.as_float(value, arg_place, ctx, arg)
        elif arg.kind == "level":
            converted = S.as_level(value, arg_place, ctx)
        else:
            converted = value
        if converted is not None:
            found[name] = converted
    return found


def _runtime_settings(
    node: _Node, given: dict[str, object], argv: tuple[str, ...], place: str, ctx: S.Context
) -> RuntimeSettings | None:
    values = dict(given)
    for name, value in _runtime_args(argv, place, ctx).items():
        arg = S.RUNTIME_ARGS[name]
        if arg.field is None:
            ctx.note(f"{place}: {name} accepted; {S.RUNTIME_ARG_NOTES[name]}")
            continue
        _not_yet(ctx, place, name)
        if name == "--profiling_module" and value != "cProfile":
            ctx.problem(
                f"{place}: --profiling_module",
                f"profiling module {value!r} is not supported",
                "use --profiling_module cProfile",
            )
            continue
        setting = value - 1 if arg.kind == "tries" else value  # type: ignore[operator]
        if arg.field in given and given[arg.field] != setting:
            node_place = node.origin(*arg.node_field.split("."))(*arg.node_field.split("."))  # type: ignore[union-attr]
            ctx.warn(
                f"{node_place} is {_show(given[arg.field])} but program_arguments give {name} "
                f"{_show(value)}; using the program argument ({arg.field} = {_show(setting)})"
            )
        values[arg.field] = setting
    try:
        return RuntimeSettings(**values)  # type: ignore[arg-type]
    except TypeError as err:  # a field name out of sync with jobmodel: an internal error
        raise RuntimeError(f"daskprs.spec and RuntimeSettings disagree: {err}") from err


def _append_row_to(node: _Node, raw: object, ctx: S.Context) -> str | None:
    if raw is None:
        return None
    place = node.origin("task", "append_row_to")("task", "append_row_to")
    expr = _full_binding(raw)
    name = expr.removeprefix("outputs.") if expr and expr.startswith("outputs.") else None
    output = node.outputs.get(name) if name else None
    if output is None:
        known = [f"${{{{outputs.{k}}}}}" for k in node.outputs]
        hint = (
            ("did you mean " + " or ".join(known) + "?")
            if known
            else "declare an output and bind it: ${{outputs.<name>}}"
        )
        ctx.problem(
            place,
            f"must be ${{{{outputs.<name>}}}} naming an output of the node, not {raw!r}",
            hint,
        )
        return None
    if output.type == "uri_file" and output.explicit:
        return output.path
    return _join(output.path, "parallel_run_step.txt")
