"""A v1 ``ParallelRunConfig`` saved as YAML (``ParallelRunConfig.save_to_yaml``, or its keys
written by hand) translated into the bare ``type: parallel`` document it means, so it loads
into the same :class:`~daskprs.job.model.Job` as a v2 file (README "v1 ParallelRunConfig").

The dataset and the output folder are not in a v1 config (``ParallelRunStep`` got them): they
come from ``--input`` (a folder, a file, or an MLTable folder) and ``--output``. Every v1 field
is checked here under its own name, so problems name the place the user wrote.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from daskprs.job import schema as S
from daskprs.job.runtime import parse_mini_batch_size

__all__ = ["V1_KEYS", "V1Options", "V1Translation", "is_v1", "translate_v1"]

WRAPPER = "parallel_run_config"

# v1 field -> what it becomes (README table)
V1_KEYS = {
    "entry_script": "task.entry_script",
    "source_directory": "task.code",
    "mini_batch_size": "mini_batch_size",
    "error_threshold": "error_threshold",
    "output_action": "task.append_row_to (append_row) or none (summary_only)",
    "append_row_file_name": "the append_row_to file name",
    "run_invocation_timeout": "retry_settings.timeout",
    "run_max_try": "retry_settings.max_retries + 1",
    "process_count_per_node": "max_concurrency_per_instance",
    "node_count": "resources.instance_count",
    "environment": "not applied",
    "allowed_failed_count": "mini_batch_error_threshold",
    "allowed_failed_percent": "--allowed_failed_percent",
    "logging_level": "logging_level",
    "compute_target_name": "compute",
    "description": "description",
    "environment_dir_path": "not applied",
    "environment_name": "not applied",
    "partition_keys": "partition_keys",
    "arguments": "task.program_arguments (ParallelRunStep's arguments)",
}
_SIGNS = ("source_directory", "output_action", "process_count_per_node", "node_count")
_OUTPUT_ACTIONS = ("append_row", "summary_only")
_BAD_FILE_NAME = re.compile(r'[~"#%&*:<>?/\\{|}]')


@dataclass(frozen=True)
class V1Options:
    """What a v1 step got from ``ParallelRunStep`` rather than from its config: ``--input``,
    ``--output``, ``--arguments`` (one string, split like a shell command line) and
    ``--side-input NAME=PATH`` values."""

    input_path: str | None = None
    output_path: str | None = None
    arguments: str | None = None
    side_inputs: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        """The flags given, as the command line names them."""
        given = (
            ("--input", self.input_path is not None),
            ("--output", self.output_path is not None),
            ("--arguments", self.arguments is not None),
            ("--side-input", bool(self.side_inputs)),
        )
        return [flag for flag, yes in given if yes]


def is_v1(doc: Mapping) -> bool:
    """Whether a job document is a v1 ``ParallelRunConfig`` (by its keys: no ``type``)."""
    if "type" in doc:
        return False
    if isinstance(doc.get(WRAPPER), Mapping):
        return True
    return "entry_script" in doc and any(k in doc for k in _SIGNS)


class V1Translation:
    """The translated document and what the loader must still apply to the built step."""

    def __init__(self, doc: dict[str, Any], append_row_file_name: str | None):
        self.doc = doc
        self.append_row_file_name = append_row_file_name


def _input_entry(
    path: str, cwd: str, ctx: S.Context, flag: str = "--input"
) -> dict[str, Any] | None:
    """``--input`` (or a ``--side-input``): an MLTable folder, a folder of files, or one file."""
    if "://" in path:
        kind = "mltable" if path.rstrip("/").endswith("MLTable") else "uri_folder"
        return {"type": kind, "path": path.removesuffix("/MLTable")}
    full = os.path.normpath(os.path.join(cwd, os.path.expanduser(path)))
    if os.path.isdir(full):
        kind = "mltable" if os.path.isfile(os.path.join(full, "MLTable")) else "uri_folder"
        return {"type": kind, "path": full}
    if os.path.isfile(full):
        if os.path.basename(full) == "MLTable":
            return {"type": "mltable", "path": os.path.dirname(full)}
        return {"type": "uri_file", "path": full}
    ctx.problem(
        flag,
        f"{path}: no such file or folder",
        "give the dataset of the v1 step: a folder of files, one file, or an MLTable folder"
        if flag == "--input"
        else "give --side-input NAME=PATH with a folder, a file or an MLTable folder",
    )
    return None


_SIDE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _side_inputs(items: Sequence[str], cwd: str, ctx: S.Context) -> dict[str, dict[str, Any]]:
    """``--side-input NAME=PATH``: inputs besides the dataset, bound in the arguments as
    ``${{inputs.NAME}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, path = str(item).partition("=")
        name = name.strip()
        if not sep or not path.strip() or not _SIDE_NAME.match(name) or name == "input_data":
            ctx.problem(
                "--side-input",
                f"{item!r}: give NAME=PATH, NAME a word other than input_data (the dataset)",
                "e.g. --side-input labels=./labels, then --arguments "
                '"--labels_dir ${{inputs.labels}}"',
            )
            continue
        entry = _input_entry(path.strip(), cwd, ctx, "--side-input")
        if entry is not None:
            out[name] = entry
    return out


def _arguments(value: object, place: str, ctx: S.Context) -> str | None:
    """ParallelRunStep's ``arguments``: a list (as in the SDK) or one command-line string."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        return shlex.join(str(v) for v in value)
    ctx.problem(
        place,
        f"must be a list of arguments or one string, not {S.kind_of(value)}",
        'e.g. arguments: ["--model_name", "mnist"]',
    )
    return None


def _v1_sets(config: dict, sets: Sequence[str], ctx: S.Context) -> None:
    """``--set <v1 field>=VALUE`` on a v1 config."""
    for item in sets:
        key, sep, text = str(item).partition("=")
        key = key.strip().removeprefix(f"{WRAPPER}.")
        if not sep or key not in V1_KEYS:
            ctx.problem(
                "--set",
                f"{item!r}: a v1 ParallelRunConfig takes --set <field>=VALUE with a v1 field",
                S.suggest(key, V1_KEYS, "field") if sep else "e.g. --set mini_batch_size=10",
            )
            continue
        try:
            config[key] = yaml.safe_load(text) if text.strip() else text
        except (yaml.YAMLError, ValueError, RecursionError):  # a huge number, a deep nesting
            config[key] = text


def translate_v1(
    doc: Mapping,
    options: V1Options,
    sets: Sequence[str],
    base: str,
    ctx: S.Context,
    relative_to: str = "the config file's folder",
) -> V1Translation | None:
    """Translate a v1 config into a ``type: parallel`` document (paths made absolute).

    Parameters
    ----------
    doc : mapping
        The YAML document (``parallel_run_config:`` wrapped or not, an ``arguments:`` key
        beside the wrapper or among the fields).
    options : V1Options
        ``--input`` (required) and ``--output`` (default: the run directory's
        ``outputs/<name>/output``), relative to the current directory; ``--arguments``
        (replaces the file's ``arguments``) and ``--side-input NAME=PATH`` values.
    sets : sequence of str
        ``--set <v1 field>=VALUE`` overrides.
    base : str
        The job file's folder, or the ``base`` given: ``source_directory`` is relative to it.
    ctx : Context
        Collects problems (each naming its v1 place) and notes.
    relative_to : str
        What ``base`` is, in the words of a hint ("relative to ...").

    Returns
    -------
    V1Translation or None
        None when there were problems.
    """
    input_path, output_path = options.input_path, options.output_path
    wrapped = isinstance(doc.get(WRAPPER), Mapping)
    config = dict(doc[WRAPPER] if wrapped else doc)
    prefix = f"{WRAPPER}." if wrapped else ""
    args_at = f"{prefix}arguments"
    if wrapped and "arguments" in doc:  # beside the config, as ParallelRunStep takes it
        config.setdefault("arguments", doc["arguments"])
        args_at = "arguments"
    if wrapped:
        for key in doc:
            if key not in (WRAPPER, "arguments"):
                ctx.problem(str(key), "unknown key", f"v1 fields go under `{WRAPPER}:`")
    _v1_sets(config, sets, ctx)

    def at(key: str) -> str:
        return f"{prefix}{key}"

    for key in config:
        if key not in V1_KEYS:
            ctx.problem(at(str(key)), "unknown key", S.suggest(str(key), V1_KEYS, "v1 field"))

    out: dict[str, Any] = {"type": "parallel", "task": {"type": "run_function"}}
    task = out["task"]
    retry: dict[str, Any] = {}
    argv: list[str] = []

    entry = config.get("entry_script")
    if not isinstance(entry, str) or not entry.strip():
        ctx.problem(at("entry_script"), "is missing", "name the entry script, e.g. score.py")
    source = config.get("source_directory")
    code = os.path.normpath(os.path.join(base, os.path.expanduser(str(source or "."))))
    if not os.path.isdir(code):
        ctx.problem(
            at("source_directory"),
            f"{code} is not a folder",
            f"give the folder of the entry script, relative to {relative_to}",
        )
    elif isinstance(entry, str) and entry.strip():
        if not os.path.isfile(os.path.join(code, entry)):
            ctx.problem(at("entry_script"), f"{entry} is not in {code}", "fix source_directory")
        task["code"] = code
        task["entry_script"] = entry

    size = config.get("mini_batch_size")
    if size is not None:
        try:
            out["mini_batch_size"] = str(parse_mini_batch_size(size))
        except ValueError as err:
            ctx.problem(at("mini_batch_size"), str(err))

    action = config.get("output_action", "append_row")
    if action not in _OUTPUT_ACTIONS:
        ctx.problem(
            at("output_action"),
            f"{action!r} is not a v1 output action",
            "allowed: append_row, summary_only",
        )
    file_name = config.get("append_row_file_name")
    if file_name is not None:
        if not isinstance(file_name, str) or not file_name or _BAD_FILE_NAME.search(file_name):
            ctx.problem(
                at("append_row_file_name"), f"{file_name!r} is not a file name", "e.g. results.txt"
            )
            file_name = None
        elif action == "summary_only":
            ctx.warn(f"{at('append_row_file_name')}: not used with output_action: summary_only")

    ints = (
        ("error_threshold", -1, lambda v: out.__setitem__("error_threshold", v)),
        ("allowed_failed_count", -1, lambda v: out.__setitem__("mini_batch_error_threshold", v)),
        ("run_max_try", 1, lambda v: retry.__setitem__("max_retries", v - 1)),
        ("node_count", 1, lambda v: out.__setitem__("resources", {"instance_count": v})),
        ("process_count_per_node", 1, lambda v: out.__setitem__("max_concurrency_per_instance", v)),
    )
    for key, low, put in ints:
        if config.get(key) is not None:
            value = S.as_int(config[key], at(key), ctx, low)
            if value is not None:
                put(value)
    timeout = config.get("run_invocation_timeout")
    if timeout is not None:
        value = S.as_int(timeout, at("run_invocation_timeout"), ctx, 1)
        if value is not None:
            retry["timeout"] = value
    percent = config.get("allowed_failed_percent")
    if percent is not None:
        arg = S.RUNTIME_ARGS["--allowed_failed_percent"]
        number = S.as_float(percent, at("allowed_failed_percent"), ctx, arg, "0 to 100")
        if number is not None:
            argv += ["--allowed_failed_percent", f"{number:g}"]
    if config.get("logging_level") is not None:
        level = S.as_level(config["logging_level"], at("logging_level"), ctx)
        if level is not None:
            out["logging_level"] = level
    if config.get("compute_target_name"):
        out["compute"] = f"azureml:{config['compute_target_name']}"
    if config.get("description"):
        out["description"] = str(config["description"])
    for key in ("environment", "environment_dir_path", "environment_name"):
        if config.get(key) is not None:
            ctx.note(
                f"{at(key)}: not applied: entry scripts run in the Dask workers' Python environment"
            )
    keys = config.get("partition_keys")
    if keys is not None:
        out["partition_keys"] = keys  # checked as the v2 field is
    arguments = options.arguments
    if arguments is None and config.get("arguments") is not None:
        arguments = _arguments(config["arguments"], args_at, ctx)
    if retry:
        out["retry_settings"] = retry
    if arguments or argv:
        task["program_arguments"] = " ".join([*([arguments] if arguments else []), *argv])

    if input_path is None:
        ctx.problem(
            "--input",
            "a v1 ParallelRunConfig names no dataset",
            "give it with --input PATH: a folder of files, one file, or an MLTable folder",
        )
    else:
        entry_input = _input_entry(input_path, ctx.cwd, ctx)
        if entry_input is not None:
            out["inputs"] = {"input_data": entry_input}
            out["input_data"] = "${{inputs.input_data}}"
    side = _side_inputs(options.side_inputs, ctx.cwd, ctx)
    if side:
        out.setdefault("inputs", {}).update(side)
    output: dict[str, Any] = {"type": "uri_folder"}
    if output_path is not None:
        output["path"] = (
            output_path
            if "://" in output_path
            else os.path.normpath(os.path.join(ctx.cwd, os.path.expanduser(output_path)))
        )
    out["outputs"] = {"output": output}
    if action == "append_row":
        task["append_row_to"] = "${{outputs.output}}"
    if ctx.problems:
        return None
    return V1Translation(out, file_name if action == "append_row" else None)
