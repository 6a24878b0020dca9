"""What a job did, step by step: the values ``run_job`` returns.

:class:`StepOutcome` is one parallel step's verdict, counts and failed mini-batches;
:class:`JobResult` gathers them with the job's outputs and notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daskprs.errors import JobFailed
from daskprs.results.failures import FailedMiniBatch, failed_message

__all__ = ["JobResult", "StepOutcome"]


@dataclass(frozen=True)
class StepOutcome:
    """What one parallel step did, finished: its verdict, counts, output and failures.

    Attributes
    ----------
    step : str
        The step's name.
    failure : str or None
        Why it failed (a budget, init() failing everywhere, every mini-batch failing), or None.
    budget : str or None
        The budget that stopped it (:class:`daskprs.execute.supervisor.Budget`), if any.
    summary : dict
        ``total``, ``done``, ``failed``, ``cancelled``, ``running``, ``pending`` mini-batches;
        ``succeeded_items`` and ``failed_items``.
    output : str or None
        The ``append_row_to`` file (or URL), when the step has one.
    failed : tuple of FailedMiniBatch
        The failed and cancelled mini-batches, in id order.
    seconds, plan_seconds : float
        Time spent running and planning in this session.
    parts : mapping of int to str
        The committed part of every DONE mini-batch (not kept in step-reuse records).
    short_returns : mapping of int to str
        DONE mini-batches with failed items (``run()`` returned fewer rows than its inputs),
        and why.
    wrote : bool
        Whether this session wrote what the step makes: it ran mini-batches (whose entry
        script may write into its output folders) or assembled its output again. A later
        step that reads it may find its input changed (not kept in step-reuse records).
    """

    step: str
    failure: str | None
    budget: str | None
    summary: Mapping[str, int]
    output: str | None
    failed: tuple[FailedMiniBatch, ...] = ()
    seconds: float = 0.0
    plan_seconds: float = 0.0
    parts: Mapping[int, str] = field(default_factory=dict, repr=False, compare=False)
    short_returns: Mapping[int, str] = field(default_factory=dict)
    wrote: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (step reuse keeps it), without the parts."""
        return {
            "step": self.step,
            "failure": self.failure,
            "budget": self.budget,
            "summary": dict(self.summary),
            "output": self.output,
            "failed": [f.to_json() for f in self.failed],
            "seconds": self.seconds,
            "plan_seconds": self.plan_seconds,
            "short_returns": {str(mb): why for mb, why in self.short_returns.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepOutcome:
        """Read back :meth:`to_dict`."""
        return cls(
            step=data["step"],
            failure=data.get("failure"),
            budget=data.get("budget"),
            summary=dict(data.get("summary") or {}),
            output=data.get("output"),
            failed=tuple(FailedMiniBatch.from_json(f) for f in data.get("failed") or ()),
            seconds=float(data.get("seconds") or 0.0),
            plan_seconds=float(data.get("plan_seconds") or 0.0),
            short_returns={
                int(mb): str(why) for mb, why in (data.get("short_returns") or {}).items()
            },
        )


@dataclass
class JobResult:
    """What a job did.

    Attributes
    ----------
    run_dir : str
        The run directory.
    failure : str or None
        Why the job failed, or None when it succeeded.
    outputs : dict
        ``{"<step>.<output>": absolute path or URL}`` of every output.
    steps : list of StepOutcome
        Per parallel step: counts, timings, failed mini-batches.
    reused : dict
        ``{step: earlier run directory}`` of the steps reused instead of run.
    budget : str or None
        What stopped the job when it failed outside a step's budgets but as one of them
        would have (the driver's own disk full: ``storage``); a failed step's budget is its
        outcome's (:attr:`stopped_by`).
    """

    run_dir: str
    failure: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reused: dict[str, str] = field(default_factory=dict)
    budget: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def stopped_by(self) -> str | None:
        """The budget that stopped the job (:class:`daskprs.execute.supervisor.Budget`): that
        of the step whose failure is the job's, or :attr:`budget`; None when it succeeded or
        no budget stopped it (a failed command step, a cluster not reached, ...)."""
        if self.failure is None:
            return None
        for s in self.steps:
            if s.budget and s.failure and self.failure == f"step {s.step}: {s.failure}":
                return s.budget
        return self.budget

    def raise_for_status(self, allow_failed: bool = True) -> None:
        """Raise :class:`daskprs.errors.JobFailed` if the job failed; with
        ``allow_failed=False`` also when any mini-batch failed (within the budgets), naming
        them."""
        if self.failure is not None:
            raise JobFailed(self.failure)
        failed = [f for s in self.steps for f in s.failed]
        if not allow_failed and failed:
            raise JobFailed(failed_message(failed))
