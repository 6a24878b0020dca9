"""The keys a job file may contain and the tables that go with them (SPEC section 1).

A schema is a dict from key to what its value may hold: ``LEAF`` (any scalar or list),
``FREE`` (a mapping with keys of the user's choosing: ``inputs``, ``tags``, ...), or a nested
schema dict. The key lists follow the azure-ai-ml package's marshmallow schemas
(``azure/ai/ml/_schema/...``): a key Azure accepts is never an error here. Used only by
:mod:`daskprs.spec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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

DATA_TYPES = ("uri_file", "uri_folder", "mltable")
# Model asset types are folders to daskprs.
MODEL_TYPES = ("custom_model", "mlflow_model", "triton_model", "path")
LITERAL_TYPES = ("string", "number", "integer", "boolean")
INPUT_MODES = ("ro_mount", "download", "direct", "eval_mount", "eval_download")
OUTPUT_MODES = ("rw_mount", "upload", "direct")
LOGGING_LEVELS = ("DEBUG", "INFO", "WARNING")
NODE_TYPES = ("parallel", "command")
MAX_TIMEOUT = 259200

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
    "force_rerun": "daskprs reruns through --resume and rerun-failed",
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
    """A runtime argument read from ``program_arguments`` (SPEC section 6).

    ``field`` is the :class:`~daskprs.jobmodel.RuntimeSettings` field it sets (None: accepted
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
}

# Runtime arguments accepted for compatibility whose effect stays local.
RUNTIME_ARG_NOTES = {
    "--copy_logs_to_parent": "logs stay with the run",
    "--push_metrics_to_parent": "metrics stay with the run",
    "--metrics_name_prefix": "metrics stay with the run",
}


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between ``a`` and ``b``."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
