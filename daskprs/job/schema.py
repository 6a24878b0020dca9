"""The keys a job file may contain and the tables that go with them
(docs/job-files.md#what-a-job-file-may-be).

A schema is a dict from key to what its value may hold: ``LEAF`` (any scalar or list),
``FREE`` (a mapping with keys of the user's choosing: ``inputs``, ``tags``, ...), or a nested
schema dict. The key lists follow the azure-ai-ml package's marshmallow schemas
(``azure/ai/ml/_schema/...``): a key Azure accepts is never an error here. The checks of values
(integers, ranges, enums) and the collector of problems, notes and warnings are here too. Used
only by :mod:`daskprs.job.load` and its private helper modules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, SupportsFloat, SupportsIndex

from daskprs.errors import Problem, suggest

if TYPE_CHECKING:
    from daskprs.job.model import ClusterSpec, InputType

LEAF = "leaf"
FREE = "free"

Schema = dict[str, object]

RESOURCES: Schema = {
    "instance_count": LEAF,
    "instance_type": LEAF,
    "shm_size": LEAF,
    "docker_args": LEAF,
    "max_instance_count": LEAF,
    "locations": LEAF,
    "properties": FREE,
}

RETRY_SETTINGS: Schema = {"max_retries": LEAF, "timeout": LEAF}

ENVIRONMENT: Schema = {
    "$schema": LEAF,
    "name": LEAF,
    "version": LEAF,
    "id": LEAF,
    "description": LEAF,
    "tags": FREE,
    "properties": FREE,
    "image": LEAF,
    "conda_file": LEAF,
    "build": FREE,
    "inference_config": FREE,
    "os_type": LEAF,
    "datastore": LEAF,
}

TASK: Schema = {
    "type": LEAF,
    "code": LEAF,
    "entry_script": LEAF,
    "program_arguments": LEAF,
    "model": LEAF,
    "append_row_to": LEAF,
    "environment": ENVIRONMENT,
}

_NODE_COMMON: Schema = {
    "type": LEAF,
    "name": LEAF,
    "display_name": LEAF,
    "description": LEAF,
    "tags": FREE,
    "properties": FREE,
    "comment": LEAF,
    "experiment_name": LEAF,
    "compute": LEAF,
    "inputs": FREE,
    "outputs": FREE,
    "environment_variables": FREE,
    "identity": FREE,
    "resources": RESOURCES,
    "component": LEAF,
}

PARALLEL_NODE: Schema = {
    **_NODE_COMMON,
    "input_data": LEAF,
    "mini_batch_size": LEAF,
    "partition_keys": LEAF,
    "max_concurrency_per_instance": LEAF,
    "error_threshold": LEAF,
    "mini_batch_error_threshold": LEAF,
    "logging_level": LEAF,
    "retry_settings": RETRY_SETTINGS,
    "task": TASK,
}

COMMAND_NODE: Schema = {
    **_NODE_COMMON,
    "command": LEAF,
    "code": LEAF,
    "environment": ENVIRONMENT,
    "distribution": FREE,
    "limits": FREE,
    "services": FREE,
    "queue_settings": FREE,
}

# Keys a component file adds to the node keys (AssetSchema and ComponentSchema).
_COMPONENT_EXTRA: Schema = {
    "$schema": LEAF,
    "name": LEAF,
    "version": LEAF,
    "id": LEAF,
    "is_deterministic": LEAF,
    "additional_includes": LEAF,
}


def _top_level(node: Schema) -> Schema:
    out = {**node, **_COMPONENT_EXTRA}
    out.pop("component")
    return out


PARALLEL_FILE: Schema = _top_level(PARALLEL_NODE)
COMMAND_FILE: Schema = _top_level(COMMAND_NODE)

SETTINGS: Schema = {
    "default_compute": LEAF,
    "default_datastore": LEAF,
    "continue_on_step_failure": LEAF,
    "force_rerun": LEAF,
    "on_init": LEAF,
    "on_finalize": LEAF,
}

PIPELINE: Schema = {
    "$schema": LEAF,
    "type": LEAF,
    "name": LEAF,
    "display_name": LEAF,
    "description": LEAF,
    "tags": FREE,
    "properties": FREE,
    "experiment_name": LEAF,
    "compute": LEAF,
    "identity": FREE,
    "services": FREE,
    "settings": SETTINGS,
    "inputs": FREE,
    "outputs": FREE,
    "jobs": FREE,
}

# One entry of `inputs:` (a component's definition or a job's value) and of `outputs:`.
INPUT_KEYS = frozenset(
    {
        "type",
        "path",
        "mode",
        "default",
        "value",
        "optional",
        "description",
        "min",
        "max",
        "enum",
        "datastore",
        "name",
        "version",
        "path_on_compute",
    }
)
OUTPUT_KEYS = frozenset(
    {
        "type",
        "path",
        "mode",
        "description",
        "name",
        "version",
        "datastore",
        "early_available",
        "is_control",
        "path_on_compute",
    }
)

DATA_TYPES: tuple[InputType, ...] = ("uri_file", "uri_folder", "mltable")
# Model asset types are folders to daskprs.
MODEL_TYPES = ("custom_model", "mlflow_model", "triton_model", "path")
LITERAL_TYPES = ("string", "number", "integer", "boolean")
INPUT_MODES = ("ro_mount", "download", "direct", "eval_mount", "eval_download")
OUTPUT_MODES = ("rw_mount", "upload", "direct")
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING")
NODE_TYPES = ("parallel", "command")
MAX_TIMEOUT = 259200
# "100 kb" with a space too, as Azure's reference page writes it
SIZE = re.compile(r"(\d+)(?: *(kb|mb|gb|rows))?", re.I)
SIZE_FORMS = '"10" (files or bytes), "10kb", "1mb", "2gb" (x1024), "5000rows"'
UNITS = ("kb", "mb", "gb")

# Keys that only matter on Azure: accepted, reported once as not applied, with the reason.
AZURE_ONLY = {
    "instance_type": "the number and size of workers come from the Dask cluster",
    "shm_size": "workers use the shared memory of their host",
    "docker_args": "entry scripts run in the Dask workers' Python environment, not in Docker",
    "max_instance_count": "the Dask cluster decides how many workers there are",
    "locations": "the Dask cluster decides where workers run",
    "image": "entry scripts run in the Dask workers' Python environment",
    "conda_file": "entry scripts run in the Dask workers' Python environment",
    "build": "entry scripts run in the Dask workers' Python environment",
    "identity": "daskprs uses the credentials of the processes that run the job",
    "on_init": "daskprs runs no init/finalize nodes",
    "on_finalize": "daskprs runs no init/finalize nodes",
    "distribution": "a command step runs as one local process",
    "limits": "a command step runs until it ends",
    "services": "daskprs starts no job services",
    "queue_settings": "daskprs has no job queue",
    "model": "the entry script loads its model itself",
}


@dataclass(frozen=True)
class RuntimeArg:
    """A runtime argument read from ``program_arguments``
    (docs/job-files.md#runtime-arguments).

    ``field`` is the :class:`~daskprs.job.model.RuntimeSettings` field it sets (None: accepted
    and only noted); ``node_field`` is the node field it overrides, for the precedence warning.
    """

    field: str | None
    kind: Literal["int", "float", "str", "bool", "tries", "level"]
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    node_field: str | None = None


RUNTIME_ARGS: dict[str, RuntimeArg] = {
    "--error_threshold": RuntimeArg("error_threshold", "int", -1, node_field="error_threshold"),
    "--allowed_failed_count": RuntimeArg(
        "mini_batch_error_threshold", "int", -1, node_field="mini_batch_error_threshold"
    ),
    "--allowed_failed_percent": RuntimeArg("allowed_failed_percent", "float", 0, 100),
    "--task_overhead_timeout": RuntimeArg("task_overhead_timeout", "float", 0, low_open=True),
    "--progress_update_timeout": RuntimeArg("progress_update_timeout", "float", 0, low_open=True),
    "--first_task_creation_timeout": RuntimeArg(
        "first_task_creation_timeout", "float", 0, low_open=True
    ),
    "--resource_monitor_interval": RuntimeArg("resource_monitor_interval", "float", 0),
    "--copy_logs_to_parent": RuntimeArg(None, "bool"),
    "--push_metrics_to_parent": RuntimeArg(None, "bool"),
    "--metrics_name_prefix": RuntimeArg(None, "str"),
    "--profiling_module": RuntimeArg("profiling_module", "str"),
    "--run_invocation_timeout": RuntimeArg(
        "timeout", "float", 0, MAX_TIMEOUT, low_open=True, node_field="retry_settings.timeout"
    ),
    "--run_max_try": RuntimeArg("max_retries", "tries", 1, node_field="retry_settings.max_retries"),
    "--logging_level": RuntimeArg("logging_level", "level", node_field="logging_level"),
    # names the append_row_to file (daskprs.job.build); the rest are Azure's driver arguments
    # whose job a node field does here
    "--append_row_file_name": RuntimeArg(None, "str"),
    "--process_count_per_node": RuntimeArg(None, "str"),
    "--mini_batch_size": RuntimeArg(None, "str"),
    "--partition_keys": RuntimeArg(None, "str"),
    "--nice": RuntimeArg(None, "str"),
}

# Runtime arguments accepted for compatibility whose effect stays local.
RUNTIME_ARG_NOTES = {
    "--copy_logs_to_parent": "logs stay with the run",
    "--push_metrics_to_parent": "metrics stay with the run",
    "--metrics_name_prefix": "metrics stay with the run",
    "--append_row_file_name": "it names the file append_row_to writes in its output folder, "
    "lower-cased as on Azure",
    "--process_count_per_node": "not applied: max_concurrency_per_instance sets the "
    "entry-script processes per node",
    "--mini_batch_size": "not applied: the node's mini_batch_size field sets it",
    "--partition_keys": "not applied: the node's partition_keys field sets them",
    "--nice": "not applied: entry-script processes run at their worker's priority",
}
# Of those, the ones that may be given without a value
FLAG_RUNTIME_ARGS = ("--nice",)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between ``a`` and ``b``."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


# --------------------------------------------------------------------------- checking


# Digits a number written as a string may have: no count, size or limit of a job needs more,
# and ``int()`` of thousands of digits is slow (Python refuses beyond 4300).
MAX_DIGITS = 30


def size_hint(value: object) -> str:
    """The right form of a ``mini_batch_size`` the user got wrong, as a hint."""
    forms = f"write digits with an optional unit: {SIZE_FORMS}"
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return forms
    text = str(value).strip().lower()
    compact = text.replace(" ", "")
    if len(re.sub(r"\D", "", compact)) > MAX_DIGITS:
        return f"it has more than {MAX_DIGITS} digits; {forms}"
    if compact != text and SIZE.fullmatch(compact):
        return f'no spaces: "{compact}"'
    if isinstance(value, int | float) and value < 0:
        return f"it cannot be negative; {forms}"
    decimal = re.fullmatch(r"(\d*\.\d+)(kb|mb|gb)?", compact)
    if decimal:
        unit = decimal[2] or ""
        if unit:
            index = UNITS.index(unit)
            smaller = UNITS[index - 1] if index else ""
            return f'use whole numbers: "{round(float(decimal[1]) * 1024)}{smaller}"'
        return f'use whole numbers, e.g. "{round(float(decimal[1]))}"'
    other = re.fullmatch(r"(\d+)([a-z]+)", compact)
    if other:
        number, unit = int(other[1]), other[2]
        if unit == "tb":
            return f'units are kb, mb and gb: "{number * 1024}gb"'
        if unit in ("k", "m", "g"):
            return f'write "{number}{unit}b"'
        if unit in ("b", "bytes"):
            return f'a bare number of bytes is "{number}"'
        if unit in ("row", "r", "lines"):
            return f'write "{number}rows"'
    return forms


def place(prefix: str, *keys: object) -> str:
    """The dotted YAML place of ``keys`` under ``prefix`` (``"comp.yml: "`` for other files)."""
    tail = ".".join(str(k) for k in keys)
    if prefix.endswith(": "):
        return prefix + tail if tail else prefix[:-2]
    if not prefix:
        return tail
    return f"{prefix}.{tail}" if tail else prefix


# What a job file's relative paths are relative to, in the words of a hint.
FILE_RELATIVE = "the YAML file that gives it"


@dataclass(frozen=True)
class At:
    """Where a piece of YAML sits: its place prefix and the folder relative paths start from.

    ``relative_to`` says what that folder is, for hints ("check the path; it is relative to
    ..."): the YAML file, or ``base`` for a job given with one or given as an object.
    """

    prefix: str
    base: str
    relative_to: str = FILE_RELATIVE

    def __call__(self, *keys: object) -> str:
        return place(self.prefix, *keys)


@dataclass
class Context:
    """What loading one job file knows and has found.

    Where it runs (``cwd``, ``run_dir``, ``run_name``), the configuration (``datastores``,
    ``computes``, ``environments``, ``default_datastore``), and the problems, notes and
    warnings collected so far, each kept once.
    """

    cwd: str
    run_dir: str
    run_name: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    datastores: dict[str, str] = field(default_factory=dict)
    # name -> a scheduler address (str) or a cluster to start (model.ClusterSpec)
    computes: dict[str, str | ClusterSpec] = field(default_factory=dict)
    # environment name (or conda file) -> the Python interpreter entry scripts run in
    environments: dict[str, str] = field(default_factory=dict)
    default_datastore: str = "workspaceblobstore"
    # daskprs.yaml `staging:`: where workers without the run directory leave their files
    staging: str = ""
    noted_computes: set[str] = field(default_factory=set)
    # paths given with --set, made absolute against the current directory (for hints)
    set_paths: set[str] = field(default_factory=set)

    def problem(self, place: str, message: str, hint: str = "") -> None:
        problem = Problem(place, message, hint)
        if problem not in self.problems:
            self.problems.append(problem)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def not_applied(self, place: str, key: str, value: object) -> None:
        shown = f"{value}" if isinstance(value, str | int | float) and value != "" else key
        self.note(f"{place}: {shown} is not applied: {AZURE_ONLY[key]}")


def kind_of(value: object) -> str:
    names: dict[type, str] = {dict: "a mapping", list: "a list", str: "a string"}
    return names.get(type(value), repr(value))


def mapping_or_empty(value: object) -> Mapping:
    """``value`` if it is a mapping, else an empty one (a section written as something else
    is reported elsewhere, or not at all)."""
    return value if isinstance(value, Mapping) else {}


def check_keys(data: Mapping, schema: Schema, at: At, keys: tuple, ctx: Context) -> None:
    """Report every unknown key of ``data`` (recursively) with the closest known one."""
    for key, value in data.items():
        place = at(*keys, key)
        if key not in schema:
            ctx.problem(place, "unknown key", suggest(str(key), schema))
            continue
        sub = schema[key]
        if value is None or sub is LEAF:
            continue
        if key == "environment" and isinstance(value, str):
            continue
        if not isinstance(value, Mapping):
            if isinstance(sub, dict) or sub is FREE:
                ctx.problem(place, f"must be a mapping, not {kind_of(value)}")
            continue
        if isinstance(sub, dict):
            check_keys(value, sub, at, (*keys, key), ctx)


def as_int(value: object, place: str, ctx: Context, low: int | None) -> int | None:
    """``value`` as an integer >= ``low`` (YAML ints and digit strings), else a problem."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        if len(value.strip().lstrip("+-")) > MAX_DIGITS:
            ctx.problem(place, f"has more than {MAX_DIGITS} digits", "no setting needs so many")
            return None
        number = int(value)
    if number is None:
        ctx.problem(
            place,
            f"must be an integer, not {value!r}",
            "" if low is None else f"an integer >= {low}",
        )
        return None
    if low is not None and number < low:
        ctx.problem(place, f"must be >= {low}, not {number}")
        return None
    return number


# What float() converts: text, bytes, and numbers (anything with __float__ or __index__).
_FLOATABLE = (str, bytes, bytearray, memoryview, SupportsFloat, SupportsIndex)


def _float(value: object) -> float:
    """``float(value)``; a ValueError for a bool or a value float() does not convert."""
    if isinstance(value, bool) or not isinstance(value, _FLOATABLE):
        raise ValueError
    return float(value)


def as_float(
    value: object,
    place: str,
    ctx: Context,
    arg: RuntimeArg,
    hint: str = "a number of seconds, e.g. 60",
) -> float | None:
    """``value`` as a number in the range ``arg`` allows, else a problem."""
    try:
        number = _float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int of 400 digits
        ctx.problem(place, f"must be a number, not {value!r}", hint)
        return None
    low, high = arg.low, arg.high
    if low is not None and (number < low or (arg.low_open and number == low)):
        bound = f"> {low:g}" if arg.low_open else f">= {low:g}"
        ctx.problem(
            place, f"must be {bound}, not {value}", f"range ({low:g}, {high:g}]" if high else ""
        )
        return None
    if high is not None and number > high:
        ctx.problem(place, f"must be <= {high:g}, not {value}", f"range ({low:g}, {high:g}]")
        return None
    return number


def as_bool(value: object, place: str, ctx: Context) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    ctx.problem(place, f"must be true or false, not {value!r}")
    return None


def as_level(value: object, place: str, ctx: Context) -> str | None:
    if isinstance(value, str) and value.strip().upper() in LOGGING_LEVELS:
        return value.strip().upper()
    ctx.problem(place, f"{value!r} is not a logging level", "allowed: " + ", ".join(LOGGING_LEVELS))
    return None


def check_literal(value: object, spec: Mapping, place: str, ctx: Context) -> object:
    """Check a literal input value against its declared ``type``, ``enum``, ``min``, ``max``."""
    kind = spec.get("type")
    if kind == "integer":
        value = as_int(value, place, ctx, low=None)
    elif kind == "number":
        value = as_float(value, place, ctx, RuntimeArg(None, "float"), "a number")
    elif kind == "boolean":
        value = as_bool(value, place, ctx)
    elif kind == "string" and isinstance(value, int | float | bool):
        value = str(value)
    if value is None:
        return None
    enum = spec.get("enum")
    if isinstance(enum, list) and str(value) not in [str(e) for e in enum]:
        ctx.problem(
            place,
            f"{value!r} is not one of the allowed values",
            "allowed: " + ", ".join(map(str, enum)),
        )
    for bound, bad in (("min", lambda v, b: v < b), ("max", lambda v, b: v > b)):
        limit = spec.get(bound)
        if limit is not None and isinstance(value, int | float) and not isinstance(value, bool):
            try:
                if bad(value, float(limit)):
                    ctx.problem(place, f"{value} is outside the declared {bound} {limit}")
            except ValueError:
                pass
    return value


# --------------------------------------------------------------------------- inputs, outputs


def data_type(kind: object, place: str, ctx: Context, outputs: bool = False) -> InputType | None:
    if kind in DATA_TYPES:
        return kind
    if kind in MODEL_TYPES:
        ctx.note(f"{place}: type {kind} is read as a uri_folder")
        return "uri_folder"
    allowed = [*DATA_TYPES] if outputs else [*DATA_TYPES, *LITERAL_TYPES]
    ctx.problem(place, f"unknown type {kind!r}", suggest(str(kind), allowed, "type"))
    return None


def check_mode(
    mode: object, place: str, ctx: Context, allowed: tuple[str, ...], default: str
) -> str:
    if mode is None:
        return default
    if mode not in allowed:
        ctx.problem(place, f"unknown mode {mode!r}", "allowed: " + ", ".join(allowed))
        return default
    return str(mode)
