"""What ``run_job`` returns: a frozen step outcome that survives step reuse's record, and a
result whose ``raise_for_status`` can refuse failed mini-batches within the budgets."""

from __future__ import annotations

import pytest

from daskprs.errors import JobFailed
from daskprs.results.failures import FailedMiniBatch
from daskprs.results.jobresult import JobResult, StepOutcome
from daskprs.results.outcome import BatchState

SUMMARY = {"total": 3, "done": 2, "failed": 1, "cancelled": 0}


def outcome() -> StepOutcome:
    failed = FailedMiniBatch(
        2, "RUN_TIMEOUT", 2, "run() took longer", "tb", "score", BatchState.FAILED, {"files": ["a"]}
    )
    return StepOutcome("score", None, None, SUMMARY, "/out", (failed,), 1.5, 0.1, {0: "/p0"})


def test_a_step_outcome_reads_back_from_its_record_without_its_parts():
    again = StepOutcome.from_dict(outcome().to_dict())
    assert again == outcome()  # parts are not compared, nor kept
    assert again.parts == {} and again.failed[0].inputs == {"files": ["a"]}


def test_raise_for_status_can_refuse_failed_mini_batches_within_the_budgets():
    result = JobResult(run_dir="/r", steps=[outcome()])
    result.raise_for_status()  # the job succeeded: its budgets allowed the failure
    with pytest.raises(JobFailed, match=r"1 mini-batch failed: 2 \(RUN_TIMEOUT: run\(\) took"):
        result.raise_for_status(allow_failed=False)
