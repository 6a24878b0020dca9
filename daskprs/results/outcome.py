"""Outcome records: what one try of one mini-batch did, as a small picklable value.

Workers never raise to the driver; every try ends in a :class:`TryRecord`
(docs/design.md#failures-are-values). The statuses are those of
docs/job-files.md#statuses-of-a-try.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

__all__ = [
    "FINAL_STATES",
    "RETRYABLE",
    "BatchState",
    "Status",
    "TryRecord",
    "TryRecords",
    "failed_items",
    "short_return",
]


class Status(StrEnum):
    """Status of one try (docs/job-files.md#statuses-of-a-try). Members are strings:
    ``Status.RUN_DONE == "RUN_DONE"``, and they are written to the ledger and the report as
    such."""

    RUN_DONE = "RUN_DONE"
    EMPTY = "EMPTY"
    RUN_EXCEPTION = "RUN_EXCEPTION"
    WRONG_RETURN = "WRONG_RETURN"
    RUN_TIMEOUT = "RUN_TIMEOUT"
    PROCESS_DIED = "PROCESS_DIED"
    LOAD_ERROR = "LOAD_ERROR"
    LOAD_TIMEOUT = "LOAD_TIMEOUT"
    INIT_FAILED = "INIT_FAILED"
    # The try found itself already claimed (Dask ran its task a second time); it did nothing.
    DUPLICATE = "DUPLICATE"
    # The try never started: its task was lost with its worker before reaching it (a task
    # that carries several mini-batches). It is submitted again without using a try.
    NOT_STARTED = "NOT_STARTED"
    # The disk where the try's claim or rows go refused them (full, a quota, a file-size
    # limit, read-only, permissions): not the script's fault nor the mini-batch's. The step
    # stops, the mini-batch runs again on --resume; like NOT_STARTED, never written to the
    # ledger or the report. Its error is the problem and its fix, on two lines
    # (daskprs.results.storage.storage_problem).
    STORAGE_ERROR = "STORAGE_ERROR"


class BatchState(StrEnum):
    """State of one mini-batch in the supervisor and the ledger
    (docs/run-directory.md#mini-batch-states)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


RETRYABLE = frozenset(
    {
        Status.RUN_EXCEPTION,
        Status.WRONG_RETURN,
        Status.RUN_TIMEOUT,
        Status.PROCESS_DIED,
        Status.LOAD_ERROR,
        Status.LOAD_TIMEOUT,
    }
)
SUCCEEDED = frozenset({Status.RUN_DONE, Status.EMPTY})

# Mini-batch states that end it for the session (docs/run-directory.md#mini-batch-states).
FINAL_STATES = (BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED)

ERROR_CATEGORY = {
    Status.RUN_EXCEPTION: "UserError",
    Status.WRONG_RETURN: "UserError",
    Status.INIT_FAILED: "UserError",
    Status.RUN_TIMEOUT: "Timeout",
    Status.LOAD_TIMEOUT: "Timeout",
    Status.LOAD_ERROR: "DataError",
    Status.PROCESS_DIED: "ProcessDied",
}


@dataclass(frozen=True)
class TryRecord:
    """The outcome of one try.

    ``total`` is the mini-batch's item count when known (files, or rows once read);
    ``succeeded``/``failed`` follow docs/job-files.md#counting-failed-items. ``part`` is the
    path of the part file holding the rows this try wrote (append-row jobs), or None.
    """

    mb: int
    try_no: int
    status: Status
    total: int | None = None
    succeeded: int = 0
    failed: int = 0
    node: str = ""
    process: str = ""
    start_time: float = 0.0
    elapsed: float = 0.0
    run_seconds: float = 0.0
    error: str = ""
    traceback: str = ""
    part: str | None = None
    warning: str = ""
    # Set by the driver: the Dask key that ran it.
    key: str = ""

    @property
    def ok(self) -> bool:
        return self.status in SUCCEEDED

    @property
    def error_category(self) -> str:
        return ERROR_CATEGORY.get(self.status, "")

    def to_dict(self) -> dict[str, Any]:
        # a flat dataclass: no need for asdict's deep copy (this runs once per try)
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TryRecord:
        fields = cls.__dataclass_fields__
        values = {k: v for k, v in data.items() if k in fields}
        values["status"] = Status(values["status"])
        return cls(**values)

    def with_(self, **changes: Any) -> TryRecord:
        """A copy with ``changes``. The driver makes one a try (a million a run): copying
        the fields takes a fifth of what :func:`dataclasses.replace` takes."""
        if type(self) is not TryRecord or not changes.keys() <= _FIELD_SET:
            return replace(self, **changes)
        new = object.__new__(TryRecord)
        state = new.__dict__
        state.update(self.__dict__)
        state.update(changes)
        return new


class TryRecords(list[TryRecord]):
    """The records of a packed task's tries, as the task returns them.

    A list of its own type so that Dask sends it as one pickle: a plain ``list`` a worker
    returns is serialized element by element, each with a header of its own: 16 us a record
    in the worker against 3 us for one pickle of the list, and 6 against 2 us in the driver
    (``python -m benchmarks scale``)."""


_FIELDS = tuple(TryRecord.__dataclass_fields__)
_FIELD_SET = frozenset(_FIELDS)


def failed_items(state: BatchState, record: TryRecord | None, planned: int | None) -> int:
    """Items a mini-batch in final ``state`` counts as failed
    (docs/job-files.md#counting-failed-items): for a DONE one what its last try reported; for
    a FAILED one all of it (its item count, else the planned count, else what the try
    reported); none for a CANCELLED one.

    The one rule behind the budgets, the summaries, ``status`` and the report."""
    if record is None or state == BatchState.CANCELLED:
        return 0
    if state == BatchState.FAILED:
        total = record.total if record.total is not None else planned
        return total if total is not None else record.failed
    return record.failed


def short_return(returned: int, inputs: int, what: str = "items") -> str:
    """Why a mini-batch whose ``run()`` returned fewer ``what`` (rows, items) than its inputs
    has failed items (kept in its try's ``warning``)."""
    return (
        f"run() returned {returned} {what} for {inputs} inputs; the {what} run() does not "
        "return count as failed items"
    )
