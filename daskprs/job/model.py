"""The resolved job: frozen dataclasses produced by :mod:`daskprs.job.load` from a job YAML.

Everything here is already bound (``${{...}}`` substituted), validated and resolved to
absolute local paths or URLs, so the planner, the runner and the workers never look at YAML.
All classes are picklable: they travel to Dask workers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "ClusterSpec",
    "CommandStep",
    "DataInput",
    "Job",
    "MiniBatchSize",
    "Output",
    "ParallelStep",
    "RuntimeSettings",
]

InputType = Literal["uri_file", "uri_folder", "mltable"]


@dataclass(frozen=True)
class ClusterSpec:
    """A Dask cluster that ``daskprs.yaml`` ``computes:`` names by its class.

    ``compute: azureml:<name>`` starts ``cls(**kwargs)`` (any importable Dask cluster class,
    ``dask_jobqueue.SLURMCluster``, ``distributed.LocalCluster``...), then ``adapt(**adapt)``
    when ``adapt`` is given, else ``scale(scale)`` when ``scale`` is given; the job runs on it
    and it is closed at the end.
    """

    name: str
    cls: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    adapt: Mapping[str, Any] | None = None
    scale: int | None = None


@dataclass(frozen=True)
class DataInput:
    """A data input of a step.

    ``path`` is an absolute local path (no ``file://``) or an fsspec URL (``s3://b/k``);
    ``azureml://datastores/...`` is already resolved to its datastore root. ``mode`` is as
    written in the YAML, or ``""`` when none was given (which makes an MLTable with a read
    transformation tabular: docs/job-files.md#inputs).
    """

    name: str
    type: InputType
    path: str
    mode: str = ""


@dataclass(frozen=True)
class Output:
    """An output of a step.

    ``path`` is absolute (or a URL): the path the YAML gave, or
    ``<run_dir>/outputs/<step>/<name>`` when none was given (``explicit`` is False then).
    For ``uri_file`` outputs without a path, ``path`` is that folder.
    """

    name: str
    type: str
    path: str
    explicit: bool = False
    mode: str = "rw_mount"


@dataclass(frozen=True)
class MiniBatchSize:
    """``mini_batch_size`` parsed.

    ``unit`` is ``"count"`` for a bare number (files for a file list, bytes for tabular input),
    ``"bytes"`` when a ``kb``/``mb``/``gb`` unit was given (already multiplied out), and
    ``"rows"`` for ``"5000rows"``.
    """

    value: int
    unit: Literal["count", "bytes", "rows"]
    text: str = ""

    def __str__(self) -> str:
        return self.text or (f"{self.value}" if self.unit != "rows" else f"{self.value}rows")


@dataclass(frozen=True)
class RuntimeSettings:
    """Failure handling and runtime settings of a parallel step
    (docs/job-files.md#failure-handling).

    Node fields and runtime arguments in ``program_arguments`` are merged here
    (``program_arguments`` wins).
    """

    max_retries: int = 2
    timeout: float = 60.0
    error_threshold: int = -1
    mini_batch_error_threshold: int = -1
    allowed_failed_percent: float = 100.0
    task_overhead_timeout: float = 30.0
    progress_update_timeout: float | None = None
    first_task_creation_timeout: float = 600.0
    resource_monitor_interval: float = 600.0
    profiling_module: str | None = None
    logging_level: str = "INFO"

    @property
    def effective_progress_update_timeout(self) -> float:
        """The progress timeout: given, or 3 x (timeout + task_overhead_timeout)."""
        if self.progress_update_timeout is not None:
            return self.progress_update_timeout
        return 3 * (self.timeout + self.task_overhead_timeout)


@dataclass(frozen=True)
class ParallelStep:
    """A ``type: parallel`` node, resolved."""

    name: str
    input_data: DataInput
    entry_script: str
    code_dir: str
    inputs: Mapping[str, object] = field(default_factory=dict)
    outputs: Mapping[str, Output] = field(default_factory=dict)
    mini_batch_size: MiniBatchSize | None = None
    partition_keys: tuple[str, ...] = ()
    instance_count: int = 1
    max_concurrency_per_instance: int | None = None
    settings: RuntimeSettings = field(default_factory=RuntimeSettings)
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    program_arguments: tuple[str, ...] = ()
    append_row_to: str | None = None
    # pandas.DataFrame.to_csv options of parallel_run_step.settings.json (append_row jobs)
    to_csv_options: Mapping[str, Any] = field(default_factory=dict)
    # the name of task.environment, and the Python interpreter daskprs.yaml maps it to
    # (None: the workers' own Python)
    environment: str | None = None
    python: str | None = None
    output_dir: str | None = None
    # a scheduler address, or a cluster to start (daskprs.yaml computes:)
    compute: str | ClusterSpec | None = None
    depends_on: tuple[str, ...] = ()
    is_deterministic: bool = True
    kind: Literal["parallel"] = "parallel"


@dataclass(frozen=True)
class CommandStep:
    """A ``type: command`` node, resolved: a shell command run in ``code_dir``."""

    name: str
    command: str
    code_dir: str
    inputs: Mapping[str, object] = field(default_factory=dict)
    outputs: Mapping[str, Output] = field(default_factory=dict)
    environment_variables: Mapping[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    is_deterministic: bool = True
    # the name of its `environment`, and the interpreter daskprs.yaml maps it to: that
    # interpreter's folder goes first on the command's PATH
    environment: str | None = None
    python: str | None = None
    kind: Literal["command"] = "command"


@dataclass(frozen=True)
class Job:
    """A whole job file, resolved: its steps in dependency order and the notes to print.

    ``force_rerun`` is the pipeline's ``settings.force_rerun``: no step is reused.
    """

    source: str
    kind: Literal["pipeline", "component", "parallel", "v1"]
    steps: tuple[ParallelStep | CommandStep, ...]
    name: str
    run_dir: str
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    continue_on_step_failure: bool = False
    force_rerun: bool = False
    # daskprs.yaml `staging:` (``--staging`` overrides it)
    staging: str = ""

    @property
    def parallel_steps(self) -> tuple[ParallelStep, ...]:
        return tuple(s for s in self.steps if isinstance(s, ParallelStep))
