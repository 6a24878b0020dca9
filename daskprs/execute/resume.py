"""What a session of a run has left to do: a new run, ``--resume`` or ``rerun-failed``.

Pure: the ledger's replayed state and the plan in, the session out (which mini-batches to
run, the final states the others keep), so resume is tested without a cluster. The rules
(docs/run-directory.md#resume-and-rerun-failed):

- a new run (:attr:`Mode.RUN`) runs every mini-batch;
- ``--resume`` (:attr:`Mode.RESUME`) runs those not final (PENDING, RUNNING) and those a stop
  CANCELLED; DONE and FAILED ones keep their state and count toward the budgets;
- ``rerun-failed`` (:attr:`Mode.RERUN_FAILED`) also runs the FAILED ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from daskprs.execute.supervisor import Prior
from daskprs.inputs.batches import MiniBatch
from daskprs.results.ledger import LedgerState
from daskprs.results.outcome import BatchState, failed_items

__all__ = ["Mode", "Session", "input_change", "session_of"]


class Mode(StrEnum):
    """Which session of a run this is."""

    RUN = "run"
    RESUME = "resume"
    RERUN_FAILED = "rerun-failed"


# The states whose mini-batches a session runs again (a new run runs everything).
_RUN_AGAIN: dict[Mode, frozenset[BatchState]] = {
    Mode.RUN: frozenset(BatchState),
    Mode.RESUME: frozenset({BatchState.PENDING, BatchState.RUNNING, BatchState.CANCELLED}),
    Mode.RERUN_FAILED: frozenset(
        {BatchState.PENDING, BatchState.RUNNING, BatchState.FAILED, BatchState.CANCELLED}
    ),
}


@dataclass(frozen=True)
class Session:
    """One session of a step: what it runs and what earlier sessions settled.

    Attributes
    ----------
    number : int
        0 for a new run; 1, 2, ... for each resume or rerun (part of every try's key).
    todo : tuple of int
        The mini-batches to run, in order.
    prior : mapping of int to Prior
        The final states the other mini-batches keep; they count toward every budget.
    """

    number: int
    todo: tuple[int, ...]
    prior: Mapping[int, Prior] = field(default_factory=dict)


def session_of(batches: Iterable[MiniBatch], state: LedgerState, mode: Mode) -> Session:
    """The session ``mode`` makes of a step whose ledger replays to ``state``."""
    mode = Mode(mode)  # a typo is an error, never another mode
    again = _RUN_AGAIN[mode]
    todo: list[int] = []
    prior: dict[int, Prior] = {}
    for batch in batches:
        entry = state.entries.get(batch.index)
        st = entry.state if entry is not None else BatchState.PENDING
        if st in again:
            todo.append(batch.index)
            continue
        rec = entry.record if entry is not None else None
        prior[batch.index] = Prior(
            st,
            rec.succeeded if rec is not None else 0,
            failed_items(st, rec, batch.n_items),
            # a FAILED one's error; a DONE one's reason for failed items (a short return)
            (rec.error or rec.warning) if rec is not None else "",
        )
    return Session(number=state.sessions, todo=tuple(todo), prior=prior)


def input_change(old: Mapping[str, object] | None, new: Mapping[str, object]) -> str | None:
    """What changed between the input fingerprints (:func:`daskprs.results.fingerprint.
    input_digest`) taken when the run started and now, in words; None when nothing did."""
    if old is None or old == new:
        return None
    if old.get("batches") != new.get("batches"):
        return f"{old.get('batches')} -> {new.get('batches')} mini-batches"
    if old.get("files") != new.get("files"):
        return "the files' sizes or modification times"
    return "how the input splits into mini-batches"
