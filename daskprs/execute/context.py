"""What every try of one step run needs on a worker: :class:`StepContext`.

Built once by the driver from the resolved step (:func:`step_context`), pickled to the
workers with each task and with the step's slot pool. It carries the entry-script process's
configuration as a template (:class:`~daskprs.execute.child.ChildConfig`); each slot fills in
its own node, process, cache folder, GPU and code folder (:meth:`StepContext.child_for`). A
step's settings are copied from the job's model in one place: here.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from daskprs.execute.child import ChildConfig
from daskprs.execute.deadlines import Deadlines
from daskprs.execute.devices import processes_per_instance
from daskprs.execute.store import StepStore, staging_root
from daskprs.inputs.batches import FileBatch, FileBatches, MiniBatch
from daskprs.job.model import ParallelStep
from daskprs.results.formatting import PART_FORMAT
from daskprs.rundir import RunDir, StepDir
from daskprs.settings import EnvSettings

__all__ = ["StepContext", "reads_tables", "step_context"]


@dataclass(frozen=True)
class StepContext:
    """What every try of one step run needs on a worker (picklable, small).

    Attributes
    ----------
    token : str
        Unique to this step run (``<step>-<12 hex>``): names the slot pool and the shipped code.
    step : str
        The step's name (its folder in the run directory).
    run : RunDir
        The run directory.
    child : ChildConfig
        The template of the step's entry-script processes (node and process are filled per
        slot).
    writes_parts : bool
        Tries write their rows to a part file (``append_row_to``, or ``map_batches``).
    deadlines : Deadlines
        The phase limits of a try.
    memory_limit : int or None
        Resident bytes above which an entry-script process is killed.
    local_concurrency : int or None
        Processes per emulated node on the embedded cluster (worker ``i`` is node
        ``i // n``); None on an external cluster, where a node is a worker host.
    monitor_interval : float
        ``--resource_monitor_interval`` (0: off).
    lease_seconds : float
        Seconds without the driver's lease renewed after which workers kill the step's
        children (0: no lease; :mod:`daskprs.execute.pool`).
    handback_seconds : float
        How long a rerun task waits for a hand-back of its try (:mod:`daskprs.execute.handback`).
    staging : str
        The step's folder under ``--staging URL`` (:func:`daskprs.execute.store.staging_root`)
        when the workers cannot see the run directory: claims, parts, logs and the lease go
        there, and each worker keeps its processes' files in a local scratch folder. Empty:
        the workers see the run directory.
    """

    token: str
    step: str
    run: RunDir
    child: ChildConfig
    writes_parts: bool = False
    deadlines: Deadlines = field(default_factory=Deadlines)
    memory_limit: int | None = None
    local_concurrency: int | None = None
    monitor_interval: float = 0.0
    lease_seconds: float = 0.0
    handback_seconds: float = 5.0
    staging: str = ""

    @property
    def packs_parts(self) -> bool:
        """The tries of one task append their rows to one pack (:mod:`daskprs.results.packs`):
        text parts, on the filesystem the driver reads or (staged) in the worker's scratch
        folder, the pack uploaded once when the task's tries end. Not ``map_batches``' parts:
        they are data files."""
        structured = (self.child.to_csv or {}).get(PART_FORMAT) == "structured"
        return self.writes_parts and not structured

    @property
    def where(self) -> StepDir:
        """The step's folder in the run directory."""
        return self.run.step(self.step)

    @property
    def store(self) -> StepStore:
        """Where the workers leave claims, hand-backs and the lease (and, staged, parts and
        logs): the step's folder, or its folder under the staging URL."""
        return StepStore(self.staging or self.where.root)

    def child_for(
        self, node: str, process: str, code_dir: str, device: str | None = None
    ) -> ChildConfig:
        """The configuration of one slot's process: the template with its identity, its
        code folder (a shipped copy, maybe), its cache folder and its GPU."""
        env = dict(self.child.env)
        if device is not None and "CUDA_VISIBLE_DEVICES" not in env:
            env["CUDA_VISIBLE_DEVICES"] = device
        cache = os.path.join(tempfile.gettempdir(), f"daskprs-cache-{self.token}-{process}")
        return replace(
            self.child,
            node=node,
            process=process,
            code_dir=code_dir,
            env=env,
            cache_dir=cache,
            logs=self.run.logs,
        )


def _deadlines(step: ParallelStep, settings: EnvSettings) -> Deadlines:
    """The try's phase limits; loading the script and ``init()`` get the load and the run
    limits added up; ``shutdown()`` gets ``DASKPRS_SHUTDOWN_TIMEOUT`` seconds."""
    load, run = step.settings.task_overhead_timeout, step.settings.timeout
    init = load + run if load is not None and run is not None else None
    return Deadlines(load=load, run=run, init=init, shutdown=settings.shutdown_timeout)


def _memory_limit(settings: EnvSettings, n_workers: int, local: bool) -> int | None:
    """Resident memory allowed to one entry-script process: ``DASKPRS_CHILD_MEMORY_LIMIT``,
    else 80 % of this machine's memory shared by the slots of the embedded cluster, else none
    (an external cluster's workers have limits of their own)."""
    if settings.child_memory_limit is not None:
        return settings.child_memory_limit
    if not local:
        return None
    import psutil

    return int(psutil.virtual_memory().total * 0.8 / max(1, n_workers))


def reads_tables(batches: Sequence[MiniBatch]) -> bool:
    """Whether a plan's mini-batches are tables (their processes import pandas as they
    start)."""
    return not isinstance(batches, FileBatches) and any(
        not isinstance(b, FileBatch) for b in batches
    )


def step_context(
    step: ParallelStep,
    run: RunDir,
    *,
    slots: int,
    local: bool,
    tables: bool,
    settings: EnvSettings,
    staging: str = "",
) -> StepContext:
    """The context of a new run of ``step`` on a cluster of ``slots`` worker threads
    (``local``: the embedded cluster); ``tables``: its mini-batches are tables; ``staging``:
    the ``--staging`` URL, if any."""
    child = ChildConfig(
        code_dir=step.code_dir,
        entry_script=step.entry_script,
        argv=tuple(step.program_arguments),
        env={str(k): str(v) for k, v in step.environment_variables.items()},
        output_dir=step.output_dir or "",
        logging_level=step.settings.logging_level,
        to_csv=dict(step.to_csv_options),
        profiling_module=step.settings.profiling_module,
        python=step.python,
        tables=tables,
        log_limit=settings.user_log_limit,
    )
    return StepContext(
        token=f"{step.name}-{uuid.uuid4().hex[:12]}",
        step=step.name,
        run=run,
        child=child,
        writes_parts=step.append_row_to is not None,
        deadlines=_deadlines(step, settings),
        memory_limit=_memory_limit(settings, slots, local),
        local_concurrency=processes_per_instance(step) if local else None,
        monitor_interval=step.settings.resource_monitor_interval,
        lease_seconds=0.0 if local else settings.lease_seconds,
        handback_seconds=settings.handback_seconds,
        staging=staging_root(staging, run.root, step.name) if staging else "",
    )
