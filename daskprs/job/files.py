"""Reading YAML files (the job file, component files) and the ``daskprs.yaml`` configuration."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from daskprs.job import schema as S
from daskprs.job.model import ClusterSpec
from daskprs.paths import URL

# Levels of nesting a job file may have: real ones have fewer than ten. Bounding them keeps a
# runaway `[[[[...` from reaching Python's recursion limit anywhere after the parser.
MAX_DEPTH = 64
# Values a job file may hold once its aliases are expanded (as copying or writing the
# resolved job does): a "billion laughs" file of a few lines would expand to millions.
MAX_VALUES = 100_000


def yaml_shape_problem(
    doc: object, limit: int = MAX_DEPTH, max_values: int = MAX_VALUES
) -> str | None:
    """What makes a parsed YAML document unusable as a job, or None: nesting deeper than
    ``limit``, an alias that contains itself (``&a [*a]``), or aliases that expand it to more
    than ``max_values`` values.

    Walks the document without recursion and visits an object shared through aliases once,
    so a "billion laughs" document is checked in time linear in its text.
    """
    depth: dict[int, int] = {}
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(doc, False)] if isinstance(doc, dict | list) else []
    while stack:
        node, closing = stack.pop()
        values = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        children = [c for c in values if isinstance(c, dict | list)]
        if closing:
            open_.discard(id(node))
            depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
            size[id(node)] = 1 + len(values) + sum(size[id(c)] - 1 for c in children)
            if depth[id(node)] > limit:
                return f"it nests more than {limit} levels deep"
            if size[id(node)] > max_values:
                return f"its aliases (`*name`) expand it to more than {max_values} values"
            continue
        if id(node) in depth:
            continue
        if id(node) in open_:
            return "an alias refers to a node that contains it (`&a ... *a` inside itself)"
        open_.add(id(node))
        stack.append((node, True))
        stack += [(c, False) for c in children if id(c) not in depth]
    return None


def read_yaml(path: str, place: str, ctx: S.Context) -> object | None:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        what = getattr(err, "strerror", None) or err
        ctx.problem(place, f"cannot read {path}: {what}", "check the path; save it as UTF-8")
        return None
    name = path if place else "the file"
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err)
        ctx.problem(place, f"{name} is not valid YAML{where}: {what}", "fix the YAML syntax")
        return None
    except RecursionError:
        ctx.problem(
            place,
            f"{name} nests too deeply to be read",
            f"a job file needs a few levels, at most {MAX_DEPTH}; look for a runaway `[` or `{{`",
        )
        return None
    except ValueError as err:  # PyYAML leaves numbers to int() and float()
        huge = "integer string conversion" in str(err)
        ctx.problem(
            place,
            f"{name} holds a number of more than {sys.get_int_max_str_digits()} digits"
            if huge
            else f"{name} holds a value that cannot be read: {err}",
            "quote it to make it a string" if huge else "fix or quote the value",
        )
        return None
    if doc is None:
        ctx.problem(place, f"{path} is empty", "write a pipeline or parallel job YAML")
        return None
    shape = yaml_shape_problem(doc)
    if shape is not None:
        ctx.problem(place, f"{name} cannot be a job file: {shape}", "simplify the YAML")
        return None
    return doc


def load_config(
    config: Mapping | None, job_dir: str, env: Mapping[str, str], ctx: S.Context
) -> None:
    base, label = ctx.cwd, "daskprs.yaml"
    data: object = config  # the mapping given, else the file's YAML document (any shape)
    if config is None:
        home = env.get("HOME") or os.path.expanduser("~")
        user_dir = env.get("XDG_CONFIG_HOME") or os.path.join(home, ".config")
        data = {}
        for candidate in (
            os.path.join(job_dir, "daskprs.yaml"),
            os.path.join(user_dir, "daskprs", "daskprs.yaml"),
        ):
            if os.path.isfile(candidate):
                base, label = os.path.dirname(candidate), candidate
                loaded = read_yaml(candidate, candidate, ctx)
                data = loaded if loaded is not None else {}
                break
    if not isinstance(data, Mapping):
        ctx.problem(label, f"the configuration must be a mapping, not {S.kind_of(data)}")
        return
    staging = data.get("staging")
    if staging is not None:
        if not isinstance(staging, str) or not staging.strip():
            ctx.problem(
                f"{label}: staging",
                f"must be a URL or a folder, not {S.kind_of(staging)}",
                "e.g. staging: s3://bucket/daskprs-staging",
            )
        else:
            staging = os.path.expanduser(staging.strip())
            ctx.staging = staging if URL.match(staging) else os.path.join(base, staging)
    targets: tuple[tuple[str, dict[str, str] | dict[str, str | ClusterSpec]], ...] = (
        ("datastores", ctx.datastores),
        ("computes", ctx.computes),
        ("environments", ctx.environments),
    )
    for key, target in targets:
        entries = data.get(key) or {}
        if not isinstance(entries, Mapping):
            ctx.problem(f"{label}: {key}", f"must be a mapping of name to {key[:-1]}")
            continue
        for name, value in entries.items():
            if key == "computes" and isinstance(value, Mapping):
                spec = _cluster_spec(str(name), value, f"{label}: computes: {name}", ctx)
                if spec is not None:
                    ctx.computes[str(name)] = spec  # the target of "computes"
                else:  # its problem is reported; no "not applied" note on top of it
                    ctx.noted_computes.add(str(name))
                continue
            value = str(value)
            if key in ("datastores", "environments") and not URL.match(value):
                value = os.path.normpath(os.path.join(base, os.path.expanduser(value)))
            if key == "environments" and not (os.path.isfile(value) and os.access(value, os.X_OK)):
                ctx.problem(
                    f"{label}: environments: {name}",
                    f"{value} is not an executable Python interpreter",
                    "give the path of a venv's or conda environment's bin/python",
                )
                continue
            target[str(name)] = value


_SPEC_KEYS = ("class", "kwargs", "adapt", "scale")
_SPEC_EXAMPLE = (
    "{class: dask_jobqueue.SLURMCluster, kwargs: {cores: 8, memory: 32GB}, "
    "adapt: {minimum: 1, maximum: 10}}"
)


def _cluster_spec(name: str, value: Mapping, place: str, ctx: S.Context) -> ClusterSpec | None:
    """A ``computes:`` entry that names a cluster class (checked here, imported when run)."""
    unknown = [str(k) for k in value if k not in _SPEC_KEYS]
    if unknown:
        ctx.problem(
            place,
            f"unknown key {unknown[0]!r}",
            f"{S.suggest(unknown[0], _SPEC_KEYS, 'key')} e.g. {_SPEC_EXAMPLE}",
        )
        return None
    cls = value.get("class")
    if not isinstance(cls, str) or "." not in cls.strip(".") or " " in cls:
        ctx.problem(
            place,
            f"`class` must be the dotted name of a Dask cluster class, not {cls!r}",
            f"e.g. {_SPEC_EXAMPLE}",
        )
        return None
    kwargs, adapt, scale = value.get("kwargs") or {}, value.get("adapt"), value.get("scale")
    if not isinstance(kwargs, Mapping):
        ctx.problem(place, "`kwargs` must be a mapping of the class's keyword arguments")
        return None
    if adapt is not None and not isinstance(adapt, Mapping):
        ctx.problem(
            place,
            "`adapt` must be a mapping of cluster.adapt() arguments",
            "e.g. adapt: {minimum: 1, maximum: 10}",
        )
        return None
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or scale < 0):
        ctx.problem(place, f"`scale` must be a number of workers, not {scale!r}", "e.g. scale: 4")
        return None
    if adapt is not None and scale is not None:
        ctx.problem(place, "give `adapt` or `scale`, not both")
        return None
    return ClusterSpec(
        name=name,
        cls=cls,
        kwargs={str(k): v for k, v in kwargs.items()},
        adapt=None if adapt is None else {str(k): v for k, v in adapt.items()},
        scale=scale,
    )


SETTINGS_FILE = "parallel_run_step.settings.json"
_SETTINGS_EXAMPLE = '{"append_row": {"pandas.DataFrame.to_csv": {"sep": ","}}}'


def _to_csv_parameters() -> set[str]:
    import inspect

    import pandas

    # (path_or_buf is refused: the rows go to the step's output)
    return set(inspect.signature(pandas.DataFrame.to_csv).parameters) - {"self", "path_or_buf"}


def read_step_settings(code_dir: str) -> dict[str, Any]:
    """The ``pandas.DataFrame.to_csv`` options of ``parallel_run_step.settings.json`` in a
    step's code folder (``{}`` when there is no such file).

    Raises
    ------
    ValueError
        The file is not JSON of the shape Azure reads, or names an option ``to_csv`` does
        not take; the message names the file and what is wrong.
    """
    path = os.path.join(code_dir, SETTINGS_FILE)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); write e.g. {_SETTINGS_EXAMPLE}") from err
    append_row = data.get("append_row") if isinstance(data, dict) else None
    options = append_row.get("pandas.DataFrame.to_csv") if isinstance(append_row, dict) else None
    if not isinstance(data, dict) or not isinstance(append_row, dict | None):
        raise ValueError(f"{path}: expected an object such as {_SETTINGS_EXAMPLE}")
    if not isinstance(options, dict | None):
        raise ValueError(
            f'{path}: "append_row" -> "pandas.DataFrame.to_csv" must be an object of to_csv '
            'options, such as {"sep": ","}'
        )
    options = options or {}
    if "path_or_buf" in options:  # rows go to the step's output, nowhere else
        raise ValueError(
            f"{path}: path_or_buf cannot be set: daskprs writes the rows to the step's "
            "append_row_to output; leave it out and set the output's path in the job file"
        )
    unknown = sorted(set(options) - _to_csv_parameters())
    if unknown:
        raise ValueError(
            f"{path}: pandas.DataFrame.to_csv has no option "
            + ", ".join(repr(k) for k in unknown)
            + "; "
            + S.suggest(unknown[0], _to_csv_parameters(), "option")
        )
    _check_to_csv_values(path, options)
    return options


def _check_to_csv_values(path: str, options: dict[str, Any]) -> None:
    """Write a small frame with ``options`` as the rows will be written, so that a value
    ``to_csv`` refuses (``"sep": "ab"``, an unknown encoding) is found before the job runs,
    not by every try of every mini-batch."""
    import io

    import pandas

    sample = pandas.DataFrame({"n": [1], "x": [0.5], "text": ["a b"]})
    try:
        sample.to_csv(io.BytesIO(), **options)  # (bytes: an unknown encoding is refused too)
    except Exception as err:
        raise ValueError(
            f"{path}: pandas.DataFrame.to_csv cannot write rows with these options "
            f"({type(err).__name__}: {err}); fix the value (a known encoding, a one-character "
            f"separator...), e.g. {_SETTINGS_EXAMPLE}"
        ) from err
