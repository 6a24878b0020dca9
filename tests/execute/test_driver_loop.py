"""The driver loop with a fake Dask client: event sequences in, submissions and ledger lines
out, no cluster.

The fake client runs nothing: each submitted try gets the outcome a script gives it (by
mini-batch and try number), or its future fails or is lost as a worker death would leave it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from daskprs.execute.child import ChildConfig
from daskprs.execute.cluster import ClusterHandle
from daskprs.execute.context import StepContext
from daskprs.execute.resume import Mode, session_of
from daskprs.execute.runner import Launch, drive, submission_window
from daskprs.execute.supervisor import Policy
from daskprs.execute.worker import run_tries, run_try
from daskprs.inputs.batches import FileBatch
from daskprs.observe.progress import PlainProgress
from daskprs.results.ledger import Ledger, LedgerState, ledger_events, read_ledger
from daskprs.results.outcome import Status, TryRecord
from daskprs.rundir import RunDir


@dataclass
class FakeFuture:
    key: str
    status: str = "pending"
    value: Any = None
    error: BaseException | None = None
    callbacks: list[Callable[[FakeFuture], None]] = field(default_factory=list)

    def add_done_callback(self, fn: Callable[[FakeFuture], None]) -> None:
        if self.status != "pending":
            fn(self)
        else:
            self.callbacks.append(fn)

    def finish(self, status: str, value: Any = None, error: BaseException | None = None) -> None:
        self.status, self.value, self.error = status, value, error
        for fn in self.callbacks:
            fn(self)

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.value

    def exception(self) -> BaseException | None:
        return self.error

    def release(self) -> None:
        pass


Outcome = Status | str  # a status, or "lost" (the worker died: no result), or "hold"


class FakeClient:
    """Answers ``submit`` with the scripted outcome of each try it carries."""

    def __init__(self, ctx: StepContext, script: Callable[[int, int], Outcome], slots: int = 2):
        self.ctx, self.script, self.slots = ctx, script, slots
        self.submitted: list[tuple[str, list[tuple[int, int]]]] = []
        self.plugins: list[str] = []
        self.unregistered: list[str] = []
        self.cancelled: list[str] = []
        self.ran: list[str] = []
        self.held: list[FakeFuture] = []

    def scheduler_info(self, n_workers: int = 0) -> dict[str, Any]:
        return {"workers": {f"w{i}": {"nthreads": 1} for i in range(self.slots)}}

    def register_plugin(self, plugin: Any) -> None:
        self.plugins.append(plugin.name)

    def unregister_worker_plugin(self, name: str) -> None:
        self.unregistered.append(name)

    def run(self, fn: Callable[..., Any], *args: Any, on_error: str = "raise") -> dict:
        self.ran.append(fn.__name__)
        return {}

    def cancel(self, futures: list[FakeFuture], force: bool = False) -> None:
        self.cancelled += [f.key for f in futures]

    def gather(self, futures: list[FakeFuture]) -> list[Any]:
        return [f.result() for f in futures]

    def _claim(self, mb: int, try_key: str) -> None:
        with open(self.ctx.where.claim(mb, try_key), "w"):
            pass

    def submit(self, fn: Callable[..., Any], *args: Any, key: str, **kwargs: Any) -> FakeFuture:
        if fn is run_try:
            _, batch, try_no, try_key = args
            items = [(batch, try_no, try_key)]
        else:
            assert fn is run_tries
            items = args[1]
        self.submitted.append((key, [(b.index, n) for b, n, _ in items]))
        fut = FakeFuture(key)
        records = []
        for batch, try_no, try_key in items:
            outcome = self.script(batch.index, try_no)
            if outcome == "hold":  # runs until the step stops
                self._claim(batch.index, try_key)
                self.held.append(fut)
                return fut
            if outcome == "lost":  # the worker died under it
                self._claim(batch.index, try_key)
                from distributed import KilledWorker

                fut.finish("error", error=KilledWorker(key, "tcp://w0", 0))
                return fut
            self._claim(batch.index, try_key)
            status = Status(outcome)
            n = len(batch.files)
            ok = status in (Status.RUN_DONE, Status.EMPTY)
            part = self.ctx.where.part(batch.index, try_key) if ok else None
            records.append(
                TryRecord(
                    mb=batch.index,
                    try_no=try_no,
                    status=status,
                    total=n,
                    succeeded=n if ok else 0,
                    failed=0 if ok else n,
                    error="" if ok else f"ValueError: bad {batch.index}",
                    part=part,
                    node="node000",
                    process="process000",
                    elapsed=0.01,
                )
            )
        fut.finish("finished", value=records if fn is run_tries else records[0])
        return fut


def step_ctx(tmp_path) -> StepContext:
    return StepContext(
        token="score-fake",
        step="score",
        run=RunDir(str(tmp_path / "run")),
        child=ChildConfig(code_dir=str(tmp_path), entry_script="score.py"),
        writes_parts=True,
    )


class InterruptWhen(PlainProgress):
    """A display that sends Ctrl-C once ``done`` mini-batches are done."""

    def __init__(self, done: int):
        super().__init__(lambda line: None)
        self.done = done

    def update(self, summary: dict[str, int], elapsed: float) -> None:
        if summary["done"] >= self.done:
            raise KeyboardInterrupt


def run_loop(tmp_path, script, n=6, policy=None, mode=Mode.RUN, state=None, display=None):
    ctx = step_ctx(tmp_path)
    batches = {i: FileBatch(i, (f"/data/f{i}.txt",)) for i in range(n)}
    state = state if state is not None else read_ledger(ctx.where.ledger)
    session = session_of(batches.values(), state, mode)
    client = FakeClient(ctx, script)
    launch = Launch(ctx, batches, session, policy or Policy(max_retries=1))
    ledger = Ledger(ctx.where.ledger, state)
    lines: list[str] = []
    display = display or PlainProgress(lines.append)
    ran = drive(ClusterHandle(client, 2, local=True), launch, ledger, display)
    return ran, client, ctx, ledger.state


def events(ctx) -> list[tuple]:
    """The ledger's lines, shortened to what the tests compare."""
    out = []
    for e in ledger_events(ctx.where.ledger):
        if e["event"] == "session":
            out.append(("session", e["header"]["session"]))
        elif e["event"] == "try":
            r = e["record"]
            out.append(("try", r["mb"], r["try_no"], r["status"], e.get("final")))
        else:
            out.append(("final", e["mb"], e["state"]))
    return out


def test_every_try_succeeds_one_submission_and_one_ledger_line_each(tmp_path):
    ran, client, ctx, state = run_loop(tmp_path, lambda mb, n: Status.RUN_DONE, n=4)
    assert ran.stop.failure is None
    assert [key for key, _ in client.submitted] == [f"minibatch-{i:05d}-try1" for i in range(4)]
    assert sorted(events(ctx)[1:]) == [("try", i, 1, "RUN_DONE", "DONE") for i in range(4)]
    assert events(ctx)[0] == ("session", 0)
    assert ran.summary["done"] == 4 and ran.summary["succeeded_items"] == 4
    # the slot pool was registered for the step and removed at its end
    assert client.plugins == client.unregistered == ["daskprs-slots-score-fake"]
    # the state the driver kept is the state the file replays to
    assert {mb: e.state for mb, e in state.entries.items()} == {
        mb: e.state for mb, e in read_ledger(ctx.where.ledger).entries.items()
    }


def test_a_failed_try_is_submitted_again_as_the_next_try(tmp_path):
    def script(mb, try_no):
        return Status.RUN_EXCEPTION if (mb, try_no) == (1, 1) else Status.RUN_DONE

    ran, client, ctx, _ = run_loop(tmp_path, script, n=3)
    assert ran.stop.failure is None
    keys = [key for key, _ in client.submitted]
    assert keys.count("minibatch-00001-try1") == 1 and "minibatch-00001-try2" in keys
    mb1 = [e for e in events(ctx) if e[0] == "try" and e[1] == 1]
    assert mb1 == [("try", 1, 1, "RUN_EXCEPTION", None), ("try", 1, 2, "RUN_DONE", "DONE")]


def test_a_try_lost_with_its_worker_counts_as_a_dead_process(tmp_path):
    def script(mb, try_no):
        return "lost" if (mb, try_no) == (0, 1) else Status.RUN_DONE

    ran, _, ctx, _ = run_loop(tmp_path, script, n=2)
    assert ran.stop.failure is None
    lost = [e for e in events(ctx) if e[0] == "try" and e[1] == 0]
    assert lost == [("try", 0, 1, "PROCESS_DIED", None), ("try", 0, 2, "RUN_DONE", "DONE")]
    assert "died" in ledger_tries_of(ctx, 0)[0]["error"]


def ledger_tries_of(ctx, mb):
    return [
        e["record"]
        for e in ledger_events(ctx.where.ledger)
        if e["event"] == "try" and e["record"]["mb"] == mb
    ]


def test_a_duplicate_run_by_dask_never_counts_twice(tmp_path):
    def script(mb, try_no):
        return Status.DUPLICATE if (mb, try_no) == (0, 1) else Status.RUN_DONE

    ran, _, ctx, _ = run_loop(tmp_path, script, n=2)
    assert ran.stop.failure is None
    statuses = [r["status"] for r in ledger_tries_of(ctx, 0)]
    assert statuses == ["PROCESS_DIED", "RUN_DONE"]


def test_a_budget_stop_cancels_the_rest_and_kills_what_runs(tmp_path):
    def script(mb, try_no):
        return Status.RUN_TIMEOUT if mb == 0 else "hold"

    policy = Policy(max_retries=0, mini_batch_error_threshold=0)
    ran, client, ctx, state = run_loop(tmp_path, script, n=5, policy=policy)
    assert ran.stop.budget == "mini_batch_error_threshold"
    assert ("try", 0, 1, "RUN_TIMEOUT", "FAILED") in events(ctx)
    cancelled = sorted(e[1] for e in events(ctx) if e[0] == "final" and e[2] == "CANCELLED")
    assert cancelled == [1, 2, 3, 4]
    # what was in flight is cancelled on the cluster and its children killed
    assert sorted(client.cancelled) == sorted(f.key for f in client.held)
    assert "kill_running" in client.ran
    assert {e.state for mb, e in state.entries.items() if mb} == {"CANCELLED"}


def test_a_resume_submits_only_what_is_left_with_session_keys(tmp_path):
    ctx = step_ctx(tmp_path)
    with Ledger(ctx.where.ledger) as ledger:
        ledger.start_session({"step": "score", "session": 0, "batches": 4})
        for mb in (0, 2):
            done = TryRecord(mb=mb, try_no=1, status=Status.RUN_DONE, total=1, succeeded=1)
            ledger.record_try(done, final="DONE")
    state = read_ledger(ctx.where.ledger)
    ran, client, ctx, _ = run_loop(
        tmp_path, lambda mb, n: Status.RUN_DONE, n=4, mode=Mode.RESUME, state=state
    )
    assert [key for key, _ in client.submitted] == [
        "minibatch-00001-try1-s1",
        "minibatch-00003-try1-s1",
    ]
    assert ran.summary["done"] == 4
    assert events(ctx).count(("session", 1)) == 1


def test_an_interrupt_cancels_and_keeps_the_committed(tmp_path):
    def script(mb, try_no):
        return "hold" if mb == 2 else Status.RUN_DONE

    with pytest.raises(KeyboardInterrupt):
        run_loop(tmp_path, script, n=4, display=InterruptWhen(3))
    ctx = step_ctx(tmp_path)
    finals = {e[1]: e[2] for e in events(ctx) if e[0] == "final"}
    tried = {e[1]: e[4] for e in events(ctx) if e[0] == "try"}
    assert tried == {0: "DONE", 1: "DONE", 3: "DONE"}
    assert finals == {2: "CANCELLED"}


def test_the_window_grows_with_the_cluster_and_the_packing():
    assert submission_window(1) == 8
    assert submission_window(16) == 64


def test_short_tries_are_packed_into_one_task_each_with_its_own_record(tmp_path):
    ran, client, ctx, _ = run_loop(tmp_path, lambda mb, n: Status.RUN_DONE, n=200)
    assert ran.summary["done"] == 200
    packed = [(key, tries) for key, tries in client.submitted if len(tries) > 1]
    assert packed, "short tries were never packed"
    key, tries = packed[0]
    assert key == f"minibatch-{tries[0][0]:05d}-try1-x{len(tries)}"
    assert len([e for e in events(ctx) if e[0] == "try"]) == 200
    header = json.loads(open(ctx.where.ledger).readline())
    assert header["event"] == "session" and isinstance(header["header"].pop("started"), float)
    assert header["header"] == {"step": "score", "session": 0, "batches": 200}


def test_nothing_to_run_is_refused_by_the_session(tmp_path):
    state = LedgerState()
    session = session_of([FileBatch(0, ("/a",))], state, Mode.RUN)
    assert session.todo == (0,) and session.number == 0
    with pytest.raises(ValueError):
        session_of([FileBatch(0, ("/a",))], state, "resum")  # a typo is no mode


def test_a_cluster_that_refuses_the_slot_pool_leaves_no_partial_output(tmp_path):
    from daskprs.results.output import PartialOutput, partial_path

    class Refusing(FakeClient):
        def register_plugin(self, plugin: Any) -> None:
            raise OSError("the scheduler closed the connection")

    ctx = step_ctx(tmp_path)
    batches = {i: FileBatch(i, (f"/data/f{i}.txt",)) for i in range(2)}
    state = LedgerState()
    session = session_of(batches.values(), state, Mode.RUN)
    dest = str(tmp_path / "out" / "parallel_run_step.txt")
    growing = PartialOutput(dest, sorted(batches))
    launch = Launch(ctx, batches, session, Policy())
    client = Refusing(ctx, lambda mb, n: Status.RUN_DONE)
    with pytest.raises(OSError, match="closed the connection"):
        drive(
            ClusterHandle(client, 2, local=True),
            launch,
            Ledger(ctx.where.ledger, state),
            PlainProgress(lambda line: None),
            growing,
        )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert not tmp_path.joinpath(partial_path(dest)).exists()
