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

from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import overload

from daskprs.execute.supervisor import Prior
from daskprs.inputs.batches import FileBatches, MiniBatch
from daskprs.results.ledger import LedgerState
from daskprs.results.outcome import BatchState, failed_items

__all__ = ["Ids", "Mode", "Session", "input_change", "session_of"]


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


class Ids(Sequence[int]):
    """Mini-batch ids in an array (8 bytes each, not a tuple of int objects at 36), equal to
    any sequence of the same ids."""

    def __init__(self, ids: Iterable[int] = ()):
        self._a = array("q", ids)

    def append(self, mb: int) -> None:
        self._a.append(mb)

    def __len__(self) -> int:
        return len(self._a)

    @overload
    def __getitem__(self, i: int) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[int]: ...
    def __getitem__(self, i: int | slice) -> int | Sequence[int]:
        return self._a[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self._a)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Ids):
            return self._a == other._a
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(tuple(self._a))


@dataclass(frozen=True)
class Session:
    """One session of a step: what it runs and what earlier sessions settled.

    Attributes
    ----------
    number : int
        0 for a new run; 1, 2, ... for each resume or rerun (part of every try's key).
    todo : sequence of int
        The mini-batches to run, in order.
    prior : mapping of int to Prior
        The final states the other mini-batches keep; they count toward every budget.
    """

    number: int
    todo: Sequence[int]
    prior: Mapping[int, Prior] = field(default_factory=dict)


def session_of(batches: Iterable[MiniBatch], state: LedgerState, mode: Mode) -> Session:
    """The session ``mode`` makes of a step whose ledger replays to ``state``."""
    mode = Mode(mode)  # a typo is an error, never another mode
    again = _RUN_AGAIN[mode]
    # an array, not a tuple of a million ints; a compact plan's ids and counts without
    # making its descriptors
    todo = Ids()
    prior: dict[int, Prior] = {}
    counts = (
        batches.item_counts()
        if isinstance(batches, FileBatches)
        else {b.index: b.n_items for b in batches}
    )
    entries = state.entries
    done_plain: dict[int, Prior] = {}  # one Prior for every DONE mini-batch alike
    for mb, n_items in counts.items():
        st = state.state_of(mb)
        if st in again:
            todo.append(mb)
            continue
        succeeded = state.plain_done(mb)
        if succeeded is not None:  # DONE, no failed item, no message
            p = done_plain.get(succeeded)
            if p is None:
                p = done_plain[succeeded] = Prior(BatchState.DONE, succeeded, 0, "")
            prior[mb] = p
            continue
        entry = entries.get(mb)
        rec = entry.record if entry is not None else None
        prior[mb] = Prior(
            st,
            rec.succeeded if rec is not None else 0,
            failed_items(st, rec, n_items),
            # a FAILED one's error; a DONE one's reason for failed items (a short return)
            (rec.error or rec.warning) if rec is not None else "",
        )
    return Session(number=state.sessions, todo=todo, prior=prior)


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
