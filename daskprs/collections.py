"""A job's major input as a Dask collection, for notebooks
(docs/design.md#dask-collections-where-users-see-data).

Tabular input becomes a Dask DataFrame and a file list a Dask bag, with one partition per
mini-batch of the plan, so a user sees exactly the pieces ``run()`` would receive.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

from daskprs.inputs.batches import MiniBatch
from daskprs.inputs.plan import Plan, plan_input

__all__ = ["input_collection", "plan_collection"]


def _cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), "daskprs-cache-notebook")


def _load(batch: MiniBatch) -> Any:
    from daskprs.inputs.readers import load_batch

    return load_batch(batch, cache_dir=_cache_dir())


def plan_collection(plan: Plan) -> Any:
    """One partition per mini-batch: a Dask DataFrame (tabular) or a Dask bag (file list).

    The DataFrame's ``meta`` comes from the first mini-batch (read once, here), so building
    the graph reads nothing else.
    """
    if plan.kind == "files":
        import dask.bag as db
        from dask import delayed

        return db.from_delayed([delayed(_load)(b) for b in plan.batches])
    import dask.dataframe as dd

    meta = _load(plan.batches[0]).iloc[:0]
    return dd.from_map(_load, list(plan.batches), meta=meta, enforce_metadata=False)


def input_collection(
    job_file: str | os.PathLike, step: str | None = None, *, sets: Sequence[str] = ()
) -> Any:
    """The major input of a parallel step as a Dask collection.

    Parameters
    ----------
    job_file : path
        The job file.
    step : str, optional
        The parallel step's name (default: the only, or first, parallel step).
    sets : sequence of str
        ``--set`` style overrides (``jobs.score.mini_batch_size=1mb``).

    Returns
    -------
    dask.dataframe.DataFrame or dask.bag.Bag
        One partition per mini-batch, in mini-batch order.
    """
    from daskprs.errors import UserInputError
    from daskprs.job.load import load_job

    job = load_job(job_file, sets)
    steps = {s.name: s for s in job.parallel_steps}
    if not steps:
        raise UserInputError(f"{job_file} has no parallel step")
    if step is not None and step not in steps:
        raise UserInputError(f"no parallel step {step!r} in {job_file}; it has {sorted(steps)}")
    chosen = steps[step] if step is not None else next(iter(steps.values()))
    plan = plan_input(chosen.input_data, chosen.mini_batch_size, chosen.partition_keys)
    return plan_collection(plan)
