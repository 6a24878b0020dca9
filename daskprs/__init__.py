"""daskprs: run Azure Machine Learning parallel jobs on any Dask cluster.

The public API (imported lazily, so that worker child processes stay light)::

    from daskprs import run_job, load_job
    result = run_job("pipeline.yml", client=client)   # in a notebook with a Dask client
    result.raise_for_status()

    result = daskprs.map_batches(ddf, run)              # run() over a Dask DataFrame or bag
    result.output                                      # the returned rows, a Dask collection

The subpackages follow a mini-batch's way, each importing only from those before it:
:mod:`daskprs.job` (the job file) -> :mod:`daskprs.inputs` (planning and reading) ->
:mod:`daskprs.results` (records, ledger, output) -> :mod:`daskprs.observe` (logs, progress)
-> :mod:`daskprs.execute` (supervisor, driver, worker, child). ``pipeline``, ``api`` and
``cli`` sit on top; ``errors`` and ``rundir`` (the run directory's layout) are below all.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "DaskprsError",
    "JobFailed",
    "JobResult",
    "JobSpecError",
    "MapResult",
    "PlanningError",
    "UserInputError",
    "__version__",
    "input_collection",
    "load_job",
    "map_batches",
    "resume_job",
    "run_job",
]

_LAZY = {
    "run_job": "daskprs.api",
    "resume_job": "daskprs.api",
    "input_collection": "daskprs.collections",
    "map_batches": "daskprs.mapping.run",
    "MapResult": "daskprs.results.mapresult",
    "JobResult": "daskprs.results.jobresult",
    "load_job": "daskprs.job.load",
    "DaskprsError": "daskprs.errors",
    "JobFailed": "daskprs.errors",
    "JobSpecError": "daskprs.errors",
    "PlanningError": "daskprs.errors",
    "UserInputError": "daskprs.errors",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'daskprs' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
