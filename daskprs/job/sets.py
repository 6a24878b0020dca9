"""``--set KEY=VALUE`` overrides, applied to the job document before it is validated."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import yaml

from daskprs.job import schema as S
from daskprs.job.binding import BINDING
from daskprs.paths import URL


def apply_sets(doc: dict, sets: Sequence[str], kind: str, stem: str, ctx: S.Context) -> None:
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
        whole = _whole_section(parts, doc, kind, stem)
        if whole is not None:
            ctx.problem("--set", f"{key}: {whole[0]}", whole[1])
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
            jobs = doc.get("jobs")
            jobs = jobs if isinstance(jobs, dict) else {}
            if parts[1] not in jobs:
                node = parts[1]
                ctx.problem("--set", f"{key}: no node {node!r}", S.suggest(node, jobs, "node"))
                continue
            if not isinstance(jobs[parts[1]], dict):
                ctx.problem(
                    "--set",
                    f"{key}: the node {parts[1]!r} is {S.kind_of(jobs[parts[1]])} in the file, "
                    "not a mapping, so it has no fields to set",
                    f"write jobs.{parts[1]} as a mapping of fields in the job file first",
                )
                continue
            target, fields_ = jobs[parts[1]], parts[2:]
            schema = S.COMMAND_NODE if target.get("type") == "command" else S.PARALLEL_NODE
        elif kind != "pipeline":
            schema = S.COMMAND_FILE if doc.get("type") == "command" else S.PARALLEL_FILE
            if parts[0] == "jobs" and len(parts) >= 2:
                name = str(doc.get("name") or stem)
                if parts[1] != name:
                    ctx.problem(
                        "--set",
                        f"{key}: the step is named {name!r}",
                        f"write jobs.{name}.{'.'.join(parts[2:]) or '<field>'}=VALUE",
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
        # a path given with --set is relative to the current directory, as an input's is
        value = _cwd_path(text, ctx) if fields_[-1] == "path" else _scalar(text)
        _set_nested(target, fields_, value, key, ctx)


def _whole_section(parts: list[str], doc: dict, kind: str, stem: str) -> tuple[str, str] | None:
    """The message and hint for a ``--set`` that gives the pipeline's nodes, one node or the
    inputs a single value (``jobs=1``, ``jobs.score=1``, ``inputs=1``), or None. A value can
    only go to a field, so the problem says which form sets one."""
    jobs = doc.get("jobs")
    nodes = sorted(str(n) for n in jobs) if kind == "pipeline" and isinstance(jobs, dict) else []
    if kind != "pipeline":
        nodes = [str(doc.get("name") or stem)]
    example = f"jobs.{nodes[0] if nodes else '<node>'}.mini_batch_size=10"
    if parts == ["jobs"]:
        what = "the pipeline's nodes" if kind == "pipeline" else "this file's one step"
        return (
            f"jobs holds {what}: it cannot be set to a value",
            f"set a field of a node: --set jobs.<node>.<field>=VALUE, e.g. --set {example}"
            + (f"; nodes: {', '.join(nodes)}" if nodes else ""),
        )
    if len(parts) == 2 and parts[0] == "jobs" and parts[1] in nodes:
        return (
            f"{parts[1]!r} is a node: a node cannot be set to a value",
            f"set one of its fields: --set jobs.{parts[1]}.<field>=VALUE, e.g. --set {example}",
        )
    if parts == ["inputs"]:
        inputs = doc.get("inputs")
        names = ", ".join(str(n) for n in inputs) if isinstance(inputs, dict) else ""
        return (
            "inputs holds the inputs: they cannot be set to one value",
            "bind one input: --set inputs.<name>=VALUE" + (f"; inputs: {names}" if names else ""),
        )
    return None


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
    # a mapping of fields (retry_settings, task, environment_variables, outputs): a value goes
    # to one of its fields; an environment may also be named by a string (azureml:env:1)
    if (level is S.FREE or isinstance(level, dict)) and level is not S.ENVIRONMENT:
        names = sorted(level) if isinstance(level, dict) else []
        entry = "<field>" if names else "<name>"
        ctx.problem(
            "--set",
            f"{key}: {fields_[-1]} is a mapping: it cannot be set to one value",
            f"set one of its entries: --set {key}.{entry}=VALUE"
            + (f"; fields: {', '.join(names)}" if names else ""),
        )
        return False
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
    except (yaml.YAMLError, ValueError, RecursionError):  # a huge number, a runaway nesting
        return text
    return value if value is None or isinstance(value, str | int | float | bool) else text


def _looks_like_path(text: str, cwd: str) -> bool:
    return bool(
        URL.match(text)
        or text.startswith(("azureml://", ".", "~", "/"))
        or os.sep in text
        or "/" in text
        or os.path.exists(os.path.join(cwd, text))
    )


def _cwd_path(text: str, ctx: S.Context) -> str:
    """A path given with ``--set``: relative to the current directory (noted for hints)."""
    if URL.match(text) or text.startswith("azureml:"):
        return text
    path = os.path.normpath(os.path.join(ctx.cwd, os.path.expanduser(text)))
    ctx.set_paths.add(path)
    return path


def _set_input(inputs: dict, name: str, text: str, ctx: S.Context) -> None:
    """Bind input ``name`` to a ``--set`` value: a path for data inputs, else a literal."""
    entry = inputs.get(name)
    if isinstance(entry, Mapping):
        entry = dict(entry)
        if entry.get("type") in (*S.DATA_TYPES, *S.MODEL_TYPES) or "path" in entry:
            entry["path"] = _cwd_path(text, ctx)
        else:
            entry["value"] = _scalar(text)
        inputs[name] = entry
    elif entry is not None and not (isinstance(entry, str) and BINDING.search(entry)):
        inputs[name] = _scalar(text)
    elif _looks_like_path(text, ctx.cwd):
        inputs[name] = {"path": _cwd_path(text, ctx)}
    else:
        inputs[name] = _scalar(text)
