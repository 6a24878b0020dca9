"""What a job did, step by step: the values ``run_job`` returns.

:class:`StepOutcome` is one parallel step's verdict, counts and failed mini-batches;
:class:`JobResult` gathers them with the job's outputs and notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daskprs.errors import JobFailed

__all__ = ["JobResult", "StepOutcome"]


@dataclass
class StepOutcome:
    """What a step did: its verdict, counts, output location and failed mini-batches."""

    step: str
    failure: str | None
    budget: str | None
    summary: dict[str, int]
    output: str | None
    failed: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    plan_seconds: float = 0.0


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
    """

    run_dir: str
    failure: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    steps: list[StepOutcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reused: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def raise_for_status(self) -> None:
        """Raise :class:`daskprs.errors.JobFailed` if the job failed."""
        if self.failure is not None:
            raise JobFailed(self.failure)
