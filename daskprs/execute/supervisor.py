"""The supervisor: retry, budget and progress policy as a pure state machine.

Events in, instructions out (docs/design.md#pure-core-effectful-shell). The runner feeds it
the outcome of every try (:meth:`Supervisor.on_outcome`) and clock ticks
(:meth:`Supervisor.on_tick`); the supervisor answers with :class:`Submit`, :class:`Finalize`
and :class:`Stop` instructions, which the runner carries out on the cluster and in the
ledger. Nothing here does I/O or reads a clock: ``now`` is always passed in, so the policy is
tested with plain events and no cluster.
"""

from __future__ import annotations

import itertools
from array import array
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from daskprs.results.outcome import RETRYABLE, BatchState, Status, TryRecord, failed_items

__all__ = [
    "Budget",
    "Finalize",
    "Policy",
    "Prior",
    "Stop",
    "Submit",
    "Supervisor",
    "Tally",
    "budget_verdict",
    "explain",
    "final_verdict",
    "summarize",
    "verdict_of",
]


class Budget(StrEnum):
    """What stopped a step (``Stop.budget``), as written to ``job_result.txt``."""

    MINI_BATCH_ERROR_THRESHOLD = "mini_batch_error_threshold"
    ERROR_THRESHOLD = "error_threshold"
    ALLOWED_FAILED_PERCENT = "allowed_failed_percent"
    PROGRESS_TIMEOUT = "progress_update_timeout"
    INIT = "init"
    ALL_FAILED = "all_failed"
    INTERRUPTED = "interrupted"
    # the ledger or the committed parts were changed behind the driver's back
    RUN_DIRECTORY = "run_directory"
    # a disk or quota filled up while the output was written
    STORAGE = "storage"


@dataclass(frozen=True)
class Policy:
    """Failure handling settings of one step (docs/job-files.md#failure-handling)."""

    max_retries: int = 2
    error_threshold: int = -1
    mini_batch_error_threshold: int = -1
    allowed_failed_percent: float = 100.0
    progress_timeout: float | None = None
    nodes: int = 1
    processes_per_node: int = 1
    # Tries in flight at once. Enough to keep every worker busy while results stream back;
    # bounded so that a budget stop cancels little and driver memory stays flat.
    window: int = 64


@dataclass(frozen=True)
class Prior:
    """A mini-batch that ended in an earlier session of the run (resume, rerun-failed)."""

    state: BatchState
    succeeded: int = 0
    failed: int = 0
    error: str = ""


@dataclass(frozen=True)
class Submit:
    """Start try ``try_no`` of mini-batch ``mb``; ``try_key`` is unique within the run."""

    mb: int
    try_no: int
    try_key: str
    key: str


@dataclass(frozen=True)
class Finalize:
    """Mini-batch ``mb`` reached a final state (``DONE``, ``FAILED`` or ``CANCELLED``)."""

    mb: int
    state: BatchState
    record: TryRecord | None = None


@dataclass(frozen=True)
class Stop:
    """The step is over; ``failure`` says why it failed, or is None on success."""

    failure: str | None = None
    budget: Budget | None = None


Instruction = Submit | Finalize | Stop


@dataclass
class Tally:
    """Counts of mini-batches in a final state and of their items: what budgets are checked
    against, and what progress reports show."""

    done: int = 0
    failed: int = 0
    cancelled: int = 0
    succeeded_items: int = 0
    failed_items: int = 0
    init_failures: Counter = field(default_factory=Counter)

    def add(self, state: BatchState, succeeded: int, failed: int) -> None:
        """Count one mini-batch that reached ``state``."""
        if state == BatchState.DONE:
            self.done += 1
            self.succeeded_items += succeeded
            self.failed_items += failed
        elif state == BatchState.FAILED:
            self.failed += 1
            self.failed_items += failed
        elif state == BatchState.CANCELLED:
            self.cancelled += 1


def budget_verdict(tally: Tally, total: int, policy: Policy, queue_empty: bool) -> Stop | None:
    """The budget ``tally`` exceeds, if any. ``allowed_failed_percent`` is judged only once
    nothing is left to try (``queue_empty``)."""
    p, c = policy, tally
    if p.mini_batch_error_threshold >= 0 and c.failed > p.mini_batch_error_threshold:
        return Stop(
            f"{_count(c.failed, 'mini-batch')} failed, over mini_batch_error_threshold "
            f"({p.mini_batch_error_threshold}) by {c.failed - p.mini_batch_error_threshold}",
            budget=Budget.MINI_BATCH_ERROR_THRESHOLD,
        )
    if p.error_threshold >= 0 and c.failed_items > p.error_threshold:
        return Stop(
            f"{_count(c.failed_items, 'item')} failed, over error_threshold "
            f"({p.error_threshold}) by {c.failed_items - p.error_threshold}",
            budget=Budget.ERROR_THRESHOLD,
        )
    if queue_empty and p.allowed_failed_percent < 100 and total:
        percent = 100.0 * c.failed / total
        if percent > p.allowed_failed_percent:
            return Stop(
                f"{c.failed} of {total} mini-batches failed ({percent:.1f}%), over "
                f"--allowed_failed_percent ({p.allowed_failed_percent:g}%)",
                budget=Budget.ALLOWED_FAILED_PERCENT,
            )
    return None


def _count(n: int, noun: str) -> str:
    """``"1 mini-batch"``, ``"2 mini-batches"``, ``"1 item"``, ``"3 items"``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n} {noun}{'es' if noun.endswith('h') else 's'}"


def final_verdict(tally: Tally, total: int, policy: Policy) -> Stop:
    """The verdict of a step whose every mini-batch reached a final state within budget.

    A mini-batch that held no row (``EMPTY``, ``run()`` not called) succeeded as one whose
    ``run()`` returned ``[]`` does: an empty input makes an empty output, not a failure.
    """
    if total and tally.failed == total:
        return Stop(f"every mini-batch failed ({tally.failed})", budget=Budget.ALL_FAILED)
    return Stop(None)


def explain(stop: Stop, failed: Mapping[int, str], short: Mapping[int, str] | None = None) -> Stop:
    """``stop`` with the failed mini-batches (``{id: error}``) named in its message, and for
    the failed-items budget the done ones whose ``run()`` returned too few rows (``short``:
    ``{id: why}``)."""
    if stop.failure is not None and short and stop.budget == Budget.ERROR_THRESHOLD:
        ids = sorted(short)
        lines = [f"  mini-batch {mb}: {short[mb]}" for mb in ids[:5]]
        more = f"\n  ... and {len(ids) - 5} more" if len(ids) > 5 else ""
        stop = Stop(
            f"{stop.failure}. Mini-batches done with failed items:\n" + "\n".join(lines) + more,
            stop.budget,
        )
    if stop.failure is None or not failed:
        return stop
    ids = sorted(failed)
    if stop.budget == Budget.ALL_FAILED:
        return Stop(f"{stop.failure}; the first error: {failed[ids[0]]}", stop.budget)
    if stop.budget == Budget.INIT:
        return stop
    lines = [f"  mini-batch {mb}: {failed[mb]}" for mb in ids[:5]]
    more = f"\n  ... and {len(ids) - 5} more" if len(ids) > 5 else ""
    return Stop(f"{stop.failure}. Failed mini-batches:\n" + "\n".join(lines) + more, stop.budget)


def summarize(tally: Tally, total: int, running: int = 0, pending: int = 0) -> dict[str, int]:
    """The counts progress reports and results show."""
    return {
        "total": total,
        "done": tally.done,
        "failed": tally.failed,
        "cancelled": tally.cancelled,
        "running": running,
        "pending": pending,
        "succeeded_items": tally.succeeded_items,
        "failed_items": tally.failed_items,
    }


def verdict_of(
    items: Mapping[int, int | None], prior: Mapping[int, Prior], policy: Policy
) -> tuple[Stop, dict[str, int]]:
    """The verdict and summary of a step none of whose mini-batches is left to run (a resume
    of a finished step): the budgets a running supervisor applies, on the final states."""
    tally, failed, short = Tally(), {}, {}
    for mb, p in prior.items():
        tally.add(BatchState(p.state), p.succeeded, p.failed)
        if p.state == BatchState.FAILED:
            failed[mb] = p.error
        elif p.state == BatchState.DONE and p.failed and p.error:
            short[mb] = p.error
    total = len(items)
    stop = budget_verdict(tally, total, policy, True) or final_verdict(tally, total, policy)
    return explain(stop, failed, short), summarize(tally, total)


_STATES = (None, *BatchState)  # a state's code in a :class:`StateTable` is its index here
_CODE = {state: code for code, state in enumerate(_STATES) if state is not None}


class StateTable(MutableMapping[int, BatchState]):
    """The state of every mini-batch of a step, one byte each.

    A mapping of mini-batch id to :class:`BatchState` over a fixed set of ids (those of the
    plan, usually ``0..n-1``): a million mini-batches' states take 1 MB where a dict of them
    took about 100 MB (``python -m benchmarks scale``). Ids outside the set raise ``KeyError``
    when set; a state cannot be deleted.
    """

    def __init__(self, ids: Iterable[int]):
        ordered = sorted(ids)
        dense = all(mb == i for i, mb in enumerate(ordered))
        # position of each id: itself when the ids are 0..n-1 (a plan's), else a lookup
        self._pos: dict[int, int] | None = (
            None if dense else {mb: i for i, mb in enumerate(ordered)}
        )
        self._ids = None if dense else ordered
        self._codes = bytearray(len(ordered))
        self._len = 0

    def _all(self) -> Iterator[int]:
        """Every id of the table, in order, with a state or not."""
        return iter(self._ids) if self._ids is not None else iter(range(len(self._codes)))

    def _at(self, mb: int) -> int:
        if self._pos is not None:
            return self._pos[mb]
        if isinstance(mb, int) and 0 <= mb < len(self._codes):
            return mb
        raise KeyError(mb)

    def __getitem__(self, mb: int) -> BatchState:
        state = _STATES[self._codes[self._at(mb)]]
        if state is None:
            raise KeyError(mb)
        return state

    def __setitem__(self, mb: int, state: BatchState) -> None:
        i = self._at(mb)
        if not self._codes[i]:
            self._len += 1
        self._codes[i] = _CODE[BatchState(state)]

    def __delitem__(self, mb: int) -> None:
        raise TypeError("a mini-batch's state is never deleted")

    def __iter__(self) -> Iterator[int]:
        ids = self._ids
        for i, code in enumerate(self._codes):
            if code:
                yield ids[i] if ids is not None else i

    def __len__(self) -> int:
        return self._len

    def count(self, state: BatchState) -> int:
        """How many mini-batches are in ``state``."""
        return self._codes.count(_CODE[state])


class Supervisor:
    """Policy of one step.

    Parameters
    ----------
    items : mapping of int to int or None
        Every mini-batch id of the step and its item count when known from the plan.
    policy : Policy
        The settings.
    todo : iterable of int, optional
        The mini-batches to run now (default: all). The others must be in ``prior``.
    prior : mapping of int to Prior, optional
        Final states from earlier sessions; they count toward every budget.
    session : int
        Number of this session of the run (0 for the first); part of every try key.
    now : float
        The current time.
    """

    def __init__(
        self,
        items: Mapping[int, int | None],
        policy: Policy,
        *,
        todo: Iterable[int] | None = None,
        prior: Mapping[int, Prior] | None = None,
        session: int = 0,
        now: float = 0.0,
    ):
        # per mini-batch state in arrays, not dicts of objects: a million mini-batches in a
        # few MB (docs/clusters.md#what-limits-one-driver)
        self.state = StateTable(items)
        self._total = len(self.state._codes)
        # planned item counts by position (-1: not known)
        self._items = array("q", [-1]) * self._total
        for mb, n in items.items():
            self._items[self.state._at(mb)] = -1 if n is None else n
        self.policy = policy
        self.session = session
        self.errors: dict[int, str] = {}
        self.counts = Tally()
        # Tries waiting for a place in the window, next first: tries to run again (retries,
        # tries not started) before the first tries of the mini-batches still to do, which
        # are ``_todo[_next:]`` (an array, not a million tuples).
        self._again: deque[tuple[int, int]] = deque()
        self._todo = array("q")
        self._next = 0
        self.in_flight: dict[str, tuple[int, int]] = {}
        self._seq = 0
        # the last try number submitted of each mini-batch (0: none yet) and the number of
        # times a try was submitted again (its task lost before it started), which make each
        # Dask key unique without keeping a set of every key used
        self._last_try = array("i", [0]) * self._total
        self._repeats: dict[tuple[int, int], int] = {}
        self.last_progress = now
        self.stopped: Stop | None = None
        # Tries in flight at once (see :meth:`on_window`).
        self.window = policy.window
        prior = dict(prior or {})
        for mb, p in prior.items():
            self.state[mb] = BatchState(p.state)
            self.counts.add(self.state[mb], p.succeeded, p.failed)
            if p.state == BatchState.FAILED:
                self.errors[mb] = p.error
        todo_ids: Sequence[int] = (
            array("q", self.state._all())
            if todo is None
            else todo
            if isinstance(todo, Sequence)
            else list(todo)
        )
        if any(b < a for a, b in itertools.pairwise(todo_ids)):
            todo_ids = sorted(todo_ids)
        for mb in todo_ids:
            self.state[mb] = BatchState.PENDING
        self._todo.extend(todo_ids)
        if len(self.state) != self._total:
            missing = [mb for mb in items if mb not in self.state]
            raise ValueError(f"mini-batches {sorted(missing)[:5]} are neither to do nor prior")

    # -- public ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.stopped is not None

    @property
    def total(self) -> int:
        return self._total

    @property
    def backlog(self) -> int:
        """Tries waiting for a place in the window."""
        return len(self._again) + len(self._todo) - self._next

    def planned_items(self, mb: int) -> int | None:
        """The item count of ``mb`` known from the plan, or None."""
        n = self._items[self.state._at(mb)]
        return None if n < 0 else n

    def start(self) -> list[Instruction]:
        """Instructions to begin: the first window of submissions (or an immediate stop)."""
        stop = self._check_budgets()  # earlier sessions' failures may already exceed one
        if stop is not None:
            return self._stop(stop, [])
        return self._fill()

    def on_outcome(self, try_key: str, record: TryRecord, now: float) -> list[Instruction]:
        """React to the outcome of one try."""
        where = self.in_flight.pop(try_key, None)
        if self.stopped is not None or where is None:
            return []
        mb, try_no = where
        out: list[Instruction] = []
        status = record.status
        if status == Status.NOT_STARTED:
            self._requeue(mb, try_no)
        elif status == Status.STORAGE_ERROR:  # every try would meet that disk: stop, keep all
            problem, _, fix = record.error.partition("\n")
            failure = f"{problem}; every mini-batch done is kept. {fix or 'Free some space there'}"
            return self._stop(Stop(failure, Budget.STORAGE), out)
        elif status == Status.INIT_FAILED:
            self.counts.init_failures[record.node or "?"] += 1
            self.errors.setdefault(mb, record.error)
            stop = self._check_init_budget(record)
            if stop is not None:
                return self._stop(stop, out)
            self._requeue(mb, try_no)
        elif record.ok:
            self._finalize(mb, BatchState.DONE, record, out, now)
        elif status in RETRYABLE or status == Status.DUPLICATE:
            self.errors[mb] = record.error
            if try_no <= self.policy.max_retries:
                self._requeue(mb, try_no + 1)
            else:
                self._finalize(mb, BatchState.FAILED, record, out, now)
        else:
            raise ValueError(f"unknown status {status!r} in {record!r}")
        if self.stopped is None:
            stop = self._check_budgets()
            if stop is not None:
                return self._stop(stop, out)
        return out + self._fill()

    def on_tick(self, now: float) -> list[Instruction]:
        """React to the passing of time: the progress timeout."""
        limit = self.policy.progress_timeout
        if self.stopped is None and limit is not None and now - self.last_progress > limit:
            busy = sorted(mb for mb, _ in self.in_flight.values())
            return self._stop(
                Stop(
                    f"no mini-batch finished for {now - self.last_progress:.0f} s, more than "
                    f"progress_update_timeout ({limit:g} s); mini-batches still running: "
                    f"{_ids(busy)}. Raise --progress_update_timeout if they are just slow.",
                    budget=Budget.PROGRESS_TIMEOUT,
                ),
                [],
            )
        return []

    def on_success_seen(self, at: float) -> None:
        """A try succeeded at ``at`` on a worker whose task has not returned its record yet
        (the runner packs short tries into one task): progress, for the progress timeout."""
        self.last_progress = max(self.last_progress, at)

    def on_window(self, window: int) -> list[Instruction]:
        """The number of tries to keep in flight changed (the runner packs several short
        tries into one Dask task and wants more of them queued): submit up to it."""
        self.window = max(1, window)
        return self._fill()

    def abort(self, reason: str) -> list[Instruction]:
        """Stop from outside (an interrupt): cancel what is not final."""
        return self._stop(Stop(reason, budget=Budget.INTERRUPTED), [])

    def summary(self) -> dict[str, int]:
        """Counts for progress reports, from the state (not guesses)."""
        # the PENDING mini-batches are those queued: counted without a pass over the states
        # (a million every quarter second was a tenth of the driver's time)
        pending = self.backlog if self.stopped is None else 0
        return summarize(self.counts, self.total, len(self.in_flight), pending)

    def validate_state(self) -> None:
        """Check the supervisor's invariants; raise AssertionError naming the first broken
        one (used by the tests after every event)."""
        states = self.state
        assert len(states) == self.total, "every mini-batch has a state"
        running = sorted(mb for mb, _ in self.in_flight.values())
        assert running == sorted(mb for mb, s in states.items() if s == BatchState.RUNNING), (
            "RUNNING mini-batches are exactly those in flight, once each"
        )
        queued = [mb for mb, _ in self._queued()]
        assert len(queued) == len(set(queued)), "a mini-batch is queued once"
        if self.stopped is None:
            assert sorted(queued) == sorted(mb for mb, s in states.items() if s == "PENDING"), (
                "PENDING mini-batches are exactly those queued"
            )
        else:
            assert not queued and not self.in_flight, "a stopped step has nothing left to run"
            assert all(
                s in (BatchState.DONE, BatchState.FAILED, BatchState.CANCELLED)
                for s in states.values()
            ), "a stopped step's mini-batches are final"
        c = self.counts
        for name, state in (("done", "DONE"), ("failed", "FAILED"), ("cancelled", "CANCELLED")):
            n = sum(1 for s in states.values() if s == state)
            assert getattr(c, name) == n, f"the {name} count ({getattr(c, name)}) matches {n}"

    # -- internals ---------------------------------------------------------------------------
    def _queued(self) -> list[tuple[int, int]]:
        """The tries waiting for a place in the window, next first."""
        return [*self._again, *((mb, 1) for mb in self._todo[self._next :])]

    def _requeue(self, mb: int, try_no: int) -> None:
        self.state[mb] = BatchState.PENDING
        self._again.appendleft((mb, try_no))

    def _key(self, mb: int, try_no: int) -> str:
        """The Dask key of a try: ``minibatch-00042-try1`` (``-s1`` in session 1), with
        ``-r2``, ``-r3``... when the same try is submitted again in this session."""
        key = f"minibatch-{mb:05d}-try{try_no}"
        if self.session:
            key += f"-s{self.session}"
        i = self.state._at(mb)
        if self._last_try[i] == try_no:  # tries of a mini-batch only count up
            n = self._repeats.get((mb, try_no), 1) + 1
            self._repeats[(mb, try_no)] = n
            key += f"-r{n}"
        self._last_try[i] = try_no
        return key

    def _fill(self) -> list[Instruction]:
        out: list[Instruction] = []
        if self.stopped is not None:
            return out
        while len(self.in_flight) < self.window:
            if self._again:
                mb, try_no = self._again.popleft()
            elif self._next < len(self._todo):
                mb, try_no = self._todo[self._next], 1
                self._next += 1
            else:
                break
            self._seq += 1
            try_key = f"s{self.session}n{self._seq}"
            self.in_flight[try_key] = (mb, try_no)
            self.state[mb] = BatchState.RUNNING
            out.append(Submit(mb, try_no, try_key, self._key(mb, try_no)))
        if not self.backlog and not self.in_flight:
            out += self._stop(final_verdict(self.counts, self.total, self.policy), [])
        return out

    def _finalize(
        self, mb: int, state: BatchState, record: TryRecord, out: list[Instruction], now: float
    ) -> None:
        self.state[mb] = state
        failed = failed_items(state, record, self.planned_items(mb))
        if state == BatchState.FAILED:
            self.errors[mb] = record.error
        elif failed and record.warning:  # done, with rows run() did not return
            self.errors[mb] = record.warning
        else:
            self.errors.pop(mb, None)
        self.counts.add(state, record.succeeded, failed)
        self.last_progress = now
        out.append(Finalize(mb, state, record))

    def _check_init_budget(self, record: TryRecord) -> Stop | None:
        p = self.policy
        per_node_limit = 3 * p.processes_per_node
        total_limit = 2 * p.processes_per_node * p.nodes
        node = record.node or "?"
        per_node = self.counts.init_failures[node]
        total = sum(self.counts.init_failures.values())
        if per_node >= per_node_limit or total >= total_limit:
            which = (
                f"{per_node} init() failures on {node} (limit {per_node_limit}: 3 x processes "
                "per node)"
                if per_node >= per_node_limit
                else f"{total} init() failures in the job (limit {total_limit}: 2 x all processes)"
            )
            return Stop(
                f"init() failed everywhere: {which}. Last error: {record.error}\n"
                f"{record.traceback}".rstrip(),
                budget=Budget.INIT,
            )
        return None

    def _check_budgets(self) -> Stop | None:
        return budget_verdict(self.counts, self.total, self.policy, not self.backlog)

    def _stop(self, stop: Stop, out: list[Instruction]) -> list[Instruction]:
        if self.stopped is not None:
            return out
        # a mini-batch has an error only when it FAILED or is DONE with failed items
        failed = {mb: e for mb, e in self.errors.items() if self.state[mb] == BatchState.FAILED}
        short = {mb: why for mb, why in self.errors.items() if self.state[mb] == BatchState.DONE}
        stop = explain(stop, failed, short)
        self.stopped = stop
        for mb, state in self.state.items():  # in id order
            if state in (BatchState.PENDING, BatchState.RUNNING):
                self.state[mb] = BatchState.CANCELLED
                self.counts.add(BatchState.CANCELLED, 0, 0)
                out.append(Finalize(mb, BatchState.CANCELLED))
        self._again.clear()
        del self._todo[:]
        self._next = 0
        self.in_flight.clear()
        out.append(stop)
        return out


def _ids(ids: list[int], limit: int = 10) -> str:
    text = ", ".join(str(i) for i in ids[:limit])
    return text + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
