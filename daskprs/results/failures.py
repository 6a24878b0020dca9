"""A failed mini-batch, in one shape: :class:`FailedMiniBatch`.

Built from the ledger (:func:`failed_mini_batches`) or read back from
``failed_mini_batches.jsonl`` (:meth:`FailedMiniBatch.from_json`), it is what a step's outcome
lists, what the file holds, what ``status`` and the report show, and what ``map_batches``
returns as ``result.failed`` (where it is also known as ``FailedPartition``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daskprs.inputs.batches import MiniBatch
from daskprs.results.ledger import LedgerState
from daskprs.results.outcome import BatchState, TryRecord

__all__ = ["CANCELLED_ERROR", "FailedMiniBatch", "failed_message", "failed_mini_batches"]

# Lines of a traceback kept in failed_mini_batches.jsonl (the error log has it whole).
_TRACEBACK_LINES = 10

# A stop cancels the mini-batches not final yet, queued or running (a try that a storage stop
# or an interrupt cut short leaves no try on record): whether it ran is not known, only that
# a resume runs it again.
CANCELLED_ERROR = "cancelled (runs again on --resume)"


@dataclass(frozen=True)
class FailedMiniBatch:
    """A mini-batch that failed, or that a stop cancelled.

    Attributes
    ----------
    id : int
        The mini-batch id (for ``map_batches``, the partition's index; also :attr:`partition`).
    status : str
        The last try's status (``RUN_EXCEPTION``, ``RUN_TIMEOUT``, ...), or ``CANCELLED`` for
        one a stop cancelled without a final try.
    tries : int
        Tries made (on record in the ledger).
    error : str
        The error line of the last try.
    traceback : str
        The last lines of its traceback.
    step : str
        The step it belongs to.
    state : BatchState
        ``FAILED`` or ``CANCELLED``.
    inputs : mapping
        What it read (the plan's description of the mini-batch); empty when not known.
    """

    id: int
    status: str
    tries: int
    error: str
    traceback: str = ""
    step: str = ""
    state: BatchState = BatchState.FAILED
    inputs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def partition(self) -> int:
        """The partition's index, as ``map_batches`` calls the mini-batch id."""
        return self.id

    @classmethod
    def of(
        cls,
        step: str,
        mb: int,
        state: BatchState,
        record: TryRecord | None,
        inputs: Mapping,
        tries: int = 0,
    ) -> FailedMiniBatch:
        """The failed mini-batch ``mb`` whose last try is ``record`` (None: a stop cancelled
        it, after ``tries`` tries on record)."""
        if record is None:
            status = str(state)
            return cls(mb, status, tries, CANCELLED_ERROR, step=step, state=state, inputs=inputs)
        return cls(
            mb,
            str(record.status),
            record.try_no,
            record.error,
            record.traceback,
            step=step,
            state=state,
            inputs=inputs,
        )

    def to_json(self) -> dict[str, Any]:
        """Its object in ``failed_mini_batches.jsonl`` (docs/run-directory.md)."""
        return {
            "id": self.id,
            "step": self.step,
            "status": self.status,
            "state": str(self.state),
            "tries": self.tries,
            "inputs": dict(self.inputs),
            "error": self.error,
            "traceback": "\n".join(self.traceback.splitlines()[-_TRACEBACK_LINES:]),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailedMiniBatch:
        """Read back an object of ``failed_mini_batches.jsonl``; missing keys get defaults."""
        state = str(data.get("state") or BatchState.FAILED)
        return cls(
            id=int(data.get("id", -1)),
            status=str(data.get("status") or state),
            tries=int(data.get("tries") or 0),
            error=str(data.get("error") or ""),
            traceback=str(data.get("traceback") or ""),
            step=str(data.get("step") or ""),
            state=BatchState(state) if state in BatchState.__members__ else BatchState.FAILED,
            inputs=dict(data.get("inputs") or {}),
        )


def failed_mini_batches(
    step: str, batches: Mapping[int, MiniBatch], state: LedgerState
) -> list[FailedMiniBatch]:
    """The FAILED and CANCELLED mini-batches of ``step`` among ``batches`` (its plan, by id)
    as its ledger ``state`` says, in id order, with the inputs each read."""
    out = []
    entries = state.entries
    for mb in state.ids_in(BatchState.FAILED, BatchState.CANCELLED):
        if mb in batches:
            entry = entries[mb]
            inputs = batches[mb].describe()
            out.append(FailedMiniBatch.of(step, mb, entry.state, entry.record, inputs, entry.tries))
    return out


def failed_message(
    failed: Sequence[FailedMiniBatch], what: str = "mini-batch", most: int = 5
) -> str:
    """``3 partitions failed: 1 (RUN_EXCEPTION: ValueError: ...), ...``: the first ``most``
    named with their last error."""
    shown = "; ".join(f"{f.id} ({f.status}: {f.error})" for f in failed[:most])
    more = f"; and {len(failed) - most} more" if len(failed) > most else ""
    plural = "" if len(failed) == 1 else "es" if what.endswith("h") else "s"
    return f"{len(failed)} {what}{plural} failed: {shown}{more}"
