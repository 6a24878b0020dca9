"""A bound node built into a :class:`~daskprs.job.model.ParallelStep` or a ``CommandStep``."""

from __future__ import annotations

import ast
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from daskprs.job import schema as S
from daskprs.job.binding import (
    ABSENT,
    FAILED,
    bind_text,
    bind_value,
    full_binding,
    local_dir,
)
from daskprs.job.files import read_step_settings
from daskprs.job.model import ClusterSpec, CommandStep, DataInput, Output, ParallelStep
from daskprs.job.nodes import Node
from daskprs.job.runtime import (
    append_row_file_name,
    field_settings,
    node_mini_batch_size,
    not_yet,
    program_arguments,
    runtime_settings,
)
from daskprs.paths import join_path, parent_path


def build_step(
    node: Node, scope: dict[str, object], default_compute: tuple[str, object], ctx: S.Context
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
            body_scope.setdefault(f"{kind}.{name}", FAILED)
    _common_notes(node, ctx)
    compute = _compute(node, default_compute, ctx)
    env_vars = _environment_variables(node, body_scope, ctx)
    if node.type == "command":
        return _command_step(node, body_scope, env_vars, ctx)
    return _parallel_step(node, field_scope, body_scope, env_vars, compute, ctx)


def _common_notes(node: Node, ctx: S.Context) -> None:
    f = node.fields
    resources = S.mapping_or_empty(f.get("resources"))
    for key in ("instance_type", "shm_size", "docker_args", "max_instance_count", "locations"):
        if resources.get(key) is not None:
            ctx.not_applied(node.origin("resources", key)("resources", key), key, resources[key])
    for key in ("identity", "distribution", "limits", "services", "queue_settings"):
        if f.get(key):
            ctx.not_applied(node.origin(key)(key), key, None)
    task = S.mapping_or_empty(f.get("task"))
    env_keys, env = (
        (("task", "environment"), task.get("environment"))
        if node.type == "parallel"
        else (("environment",), f.get("environment"))
    )
    env_at = node.origin(*env_keys)
    mapped = environment_python(env, ctx)
    if mapped is not None and node.type == "command":
        ctx.note(
            f"{env_at(*env_keys)}: the command runs with {os.path.dirname(mapped[1])} first on "
            f"PATH ({mapped[0]}: {mapped[1]})"
        )
    elif mapped is not None:
        ctx.note(f"{env_at(*env_keys)}: entry scripts run in {mapped[1]} ({mapped[0]})")
    elif isinstance(env, str):
        ctx.note(f"{env_at(*env_keys)}: {env} is not applied: {S.AZURE_ONLY['image']}")
    elif isinstance(env, Mapping):
        for key in ("image", "conda_file", "build"):
            if env.get(key) is not None:
                ctx.not_applied(env_at(*env_keys, key), key, env[key] if key != "build" else None)
    if task.get("model") is not None:
        ctx.not_applied(node.origin("task", "model")("task", "model"), "model", task["model"])


def environment_name(env: object) -> str | None:
    """The name of a ``task.environment``: ``azureml:my-env:1`` and ``azureml:my-env@latest``
    are ``my-env``; an inline environment's ``name``, if it has one."""
    if isinstance(env, str):
        return env.strip().removeprefix("azureml:").split("@", 1)[0].split(":", 1)[0]
    if isinstance(env, Mapping) and isinstance(env.get("name"), str):
        return env["name"]
    return None


def environment_python(env: object, ctx: S.Context) -> tuple[str, str] | None:
    """The environment's name and the interpreter ``daskprs.yaml`` maps it to, if any.

    An environment is matched by its name (``azureml:my-env:1`` and ``azureml:my-env@latest``
    match ``my-env``), as written, or by its ``conda_file`` (as written, or the file's name;
    a ``conda_file`` written inline, as the Python SDK writes it, by its ``name``).
    """
    if isinstance(env, str):
        candidates = [env.strip(), environment_name(env)]
    elif isinstance(env, Mapping) and isinstance(env.get("conda_file"), str):
        conda = env["conda_file"]
        candidates = [conda, os.path.basename(conda)]
        if isinstance(env.get("name"), str):
            candidates.insert(0, env["name"])
    elif isinstance(env, Mapping) and isinstance(env.get("conda_file"), Mapping):
        # inline, as the Python SDK writes it: matched by the conda environment's `name`
        conda_name = env["conda_file"].get("name")
        candidates = [c for c in (env.get("name"), conda_name) if isinstance(c, str)]
    else:
        return None
    for key in candidates:
        if key in ctx.environments:
            return key, ctx.environments[key]
    return None


def _compute(node: Node, default: tuple[str, object], ctx: S.Context) -> str | ClusterSpec | None:
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
    node: Node, scope: Mapping[str, object], ctx: S.Context
) -> dict[str, str]:
    raw = node.fields.get("environment_variables")
    if not isinstance(raw, Mapping):
        return {}
    at = node.origin("environment_variables")
    out = {}
    for key, value in raw.items():
        text = "" if value is None else str(value)
        out[str(key)] = bind_text(text, scope, at("environment_variables", key), ctx, set())
    return out


def _command_step(
    node: Node, scope: Mapping[str, object], env_vars: dict[str, str], ctx: S.Context
) -> CommandStep | None:
    f = node.fields
    command = f.get("command")
    at = node.origin("command")
    if not isinstance(command, str) or not command.strip():
        ctx.problem(at("command"), "a command node needs a `command` string")
        return None
    command = bind_text(command, scope, at("command"), ctx, set())
    code_at = node.origin("code")
    code = local_dir(f["code"], code_at, ("code",), ctx, "code") if f.get("code") else code_at.base
    if code is None:
        return None
    mapped = environment_python(f.get("environment"), ctx)
    return CommandStep(
        name=node.name,
        command=command,
        code_dir=code,
        inputs={k: v for k, v in node.inputs.items() if v is not ABSENT},
        outputs=node.outputs,
        environment_variables=env_vars,
        is_deterministic=_deterministic(node, ctx),
        environment=environment_name(f.get("environment")),
        python=mapped[1] if mapped else None,
    )


def _deterministic(node: Node, ctx: S.Context) -> bool:
    """A component's ``is_deterministic`` (default true): false turns step reuse off."""
    value = node.fields.get("is_deterministic")
    if value is None:
        return True
    place = node.origin("is_deterministic")("is_deterministic")
    return S.as_bool(value, place, ctx) is not False


def _entry_script(code_dir: str, entry: object, at: S.At, ctx: S.Context) -> str | None:
    place = at("task", "entry_script")
    if not isinstance(entry, str) or not entry.strip():
        task = at("task")
        if any(p.place.startswith(task) and "`entry_script`" in p.hint for p in ctx.problems):
            return None  # a misspelt key was named already, with the right spelling
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
    node: Node,
    field_scope: Mapping[str, object],
    body_scope: Mapping[str, object],
    env_vars: dict[str, str],
    compute: str | ClusterSpec | None,
    ctx: S.Context,
) -> ParallelStep | None:
    f = node.fields
    task = f.get("task")
    task_at = node.origin("task")
    if not isinstance(task, Mapping):
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
        local_dir(task["code"], code_at, ("task", "code"), ctx, "task.code")
        if task.get("code") is not None
        else task_at.base
    )
    entry = (
        _entry_script(code_dir, task.get("entry_script"), node.origin("task", "entry_script"), ctx)
        if code_dir
        else None
    )

    input_data = _input_data(node, ctx)
    mini_batch_size = node_mini_batch_size(node, field_scope, input_data, ctx)
    node_settings = field_settings(node, field_scope, ctx)
    resources = S.mapping_or_empty(f.get("resources"))
    instance_count = 1
    if resources.get("instance_count") is not None:
        place = node.origin("resources", "instance_count")("resources", "instance_count")
        instance_count = (
            S.as_int(
                bind_value(resources["instance_count"], field_scope, place, ctx), place, ctx, 1
            )
            or 1
        )
    concurrency = None
    if f.get("max_concurrency_per_instance") is not None:
        place = node.origin("max_concurrency_per_instance")("max_concurrency_per_instance")
        concurrency = S.as_int(
            bind_value(f["max_concurrency_per_instance"], field_scope, place, ctx), place, ctx, 1
        )
    elif _gpu_instance(resources.get("instance_type")):
        concurrency = 1
        ctx.note(
            f"{node.origin('resources', 'instance_type')('resources', 'instance_type')}: "
            f"{resources['instance_type']} has GPUs, so max_concurrency_per_instance defaults "
            "to 1 (set it to run more processes a node)"
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
            not_yet(ctx, place, "partition_keys")
    if mini_batch_size is not None and mini_batch_size.value == 0 and not keys:
        # the Python SDK writes 0 for a size not given: Azure then takes its default
        place = node.origin("mini_batch_size")("mini_batch_size")
        ctx.note(f"{place}: 0 means the default size (10 files, 1 MB) without partition_keys")
        mini_batch_size = None

    args_at = node.origin("task", "program_arguments")
    args_place = args_at("task", "program_arguments")
    argv = program_arguments(task.get("program_arguments"), body_scope, args_place, ctx)
    settings = runtime_settings(node, node_settings, argv, args_place, ctx)
    append_row_to = _append_row_to(
        node, task.get("append_row_to"), ctx, append_row_file_name(argv), args_place
    )
    first = next(iter(node.outputs.values()), None)
    output_dir = None
    if first is not None:
        output_dir = (
            parent_path(first.path) if first.type == "uri_file" and first.explicit else first.path
        )
    to_csv: dict[str, Any] = {}
    if code_dir and append_row_to is not None:
        try:
            to_csv = read_step_settings(code_dir)
        except ValueError as err:
            ctx.problem(code_at("task", "code"), str(err), "fix or remove the settings file")
    if code_dir is None or entry is None or input_data is None or settings is None:
        return None
    env = task.get("environment")
    mapped = environment_python(env, ctx)
    return ParallelStep(
        name=node.name,
        input_data=input_data,
        entry_script=entry,
        code_dir=code_dir,
        inputs={k: v for k, v in node.inputs.items() if v is not ABSENT},
        outputs=node.outputs,
        mini_batch_size=mini_batch_size,
        partition_keys=keys,
        instance_count=instance_count,
        max_concurrency_per_instance=concurrency,
        settings=settings,
        environment_variables=env_vars,
        program_arguments=argv,
        append_row_to=append_row_to,
        to_csv_options=to_csv,
        environment=environment_name(env),
        python=mapped[1] if mapped else None,
        output_dir=output_dir,
        compute=compute,
        is_deterministic=_deterministic(node, ctx),
    )


# Azure's GPU VM sizes: the N family (NC, ND, NG, NV), e.g. Standard_NC6s_v3.
_GPU_SIZE = re.compile(r"^(standard_)?n[cdgv]\w*$|gpu", re.IGNORECASE)


def _gpu_instance(instance_type: object) -> bool:
    """Whether an Azure ``instance_type`` names a VM size with GPUs
    (docs/job-files.md#fields-of-a-parallel-step)."""
    return isinstance(instance_type, str) and bool(_GPU_SIZE.search(instance_type.strip()))


def _input_data(node: Node, ctx: S.Context) -> DataInput | None:
    raw = node.fields.get("input_data")
    place = node.origin("input_data")("input_data")
    if raw is None:
        ctx.problem(place, "a parallel node needs `input_data`", "input_data: ${{inputs.<name>}}")
        return None
    expr = full_binding(raw)
    name = expr.removeprefix("inputs.") if expr and expr.startswith("inputs.") else None
    value = node.inputs.get(name) if name is not None else None
    if isinstance(value, DataInput):
        return value
    data = [f"${{{{inputs.{k}}}}}" for k, v in node.inputs.items() if isinstance(v, DataInput)]
    if value is ABSENT:
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


def _append_row_to(
    node: Node, raw: object, ctx: S.Context, file_name: str | None = None, args_place: str = ""
) -> str | None:
    """The file ``append_row_to`` writes: the output's path for a ``uri_file`` with a path,
    else ``parallel_run_step.txt`` (or ``--append_row_file_name``) in the output's folder."""
    if file_name is not None and not _file_name(file_name):
        ctx.problem(
            f"{args_place}: --append_row_file_name",
            f"{file_name!r} is not a file name",
            "give a name without a folder, e.g. --append_row_file_name results.txt",
        )
        file_name = None
    if raw is None:
        if file_name is not None:
            ctx.warn(f"{args_place}: --append_row_file_name is not used: no append_row_to")
        return None
    place = node.origin("task", "append_row_to")("task", "append_row_to")
    expr = full_binding(raw)
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
        if file_name is not None:
            ctx.warn(
                f"{args_place}: --append_row_file_name is not used: append_row_to writes the "
                f"uri_file output {name}'s path, {output.path}"
            )
        return output.path
    return join_path(output.path, file_name or APPEND_ROW_FILE)


def _file_name(name: str) -> bool:
    return name not in ("", ".", "..") and not any(c in name for c in ("/", "\\", "\0"))


APPEND_ROW_FILE = "parallel_run_step.txt"


def bound_output(node: Node, output: Output) -> Output:
    """``output`` as later steps read it (``${{parent.jobs.<step>.outputs.<o>}}``): a
    ``uri_file`` output without a path that the node's ``append_row_to`` writes is the file
    itself, ``<folder>/parallel_run_step.txt``, not its folder
    (docs/job-files.md#paths-and-bindings)."""
    if node.type != "parallel" or output.type != "uri_file" or output.explicit:
        return output
    task = S.mapping_or_empty(node.fields.get("task"))
    if full_binding(task.get("append_row_to")) != f"outputs.{output.name}":
        return output
    raw = task.get("program_arguments")
    try:
        tokens = [str(t) for t in raw] if isinstance(raw, list) else shlex.split(str(raw or ""))
    except ValueError:  # reported where the step is built
        tokens = []
    name = append_row_file_name(tokens)
    name = name if name is not None and _file_name(name) else APPEND_ROW_FILE
    return replace(output, path=join_path(output.path, name))
