"""Pure pieces of the runner and the ledger: packing tries into tasks, replaying the ledger."""

from __future__ import annotations

from daskprs.execute.runner import _Packer
from daskprs.execute.supervisor import Submit
from daskprs.results.ledger import Ledger, read_ledger
from daskprs.results.outcome import Status, TryRecord, TryRecords


def subs(n):
    return [Submit(i, 1, f"s0n{i}", f"minibatch-{i:05d}-try1") for i in range(n)]


def test_packer_starts_with_single_tries_then_packs_short_ones():
    p = _Packer(n_workers=2)
    assert p.size == 1 and [len(g) for g in p.groups(subs(4), pending=100)] == [1, 1, 1, 1]
    assert p.window == 4  # before any measure: one running and one queued a worker
    for i in range(4):
        p.observe(TryRecord(mb=i, try_no=1, status=Status.RUN_DONE, elapsed=0.03))
    assert p.size == 3  # no more a task than tries measured (the first one is left out)
    for i in range(4, 100):
        p.observe(TryRecord(mb=i, try_no=1, status=Status.RUN_DONE, elapsed=0.03))
    assert p.size == 66  # 2 s of 30 ms tries
    assert p.window == 2 * 133  # about 4 s of them a worker: two tasks
    assert [len(g) for g in p.groups(subs(140), pending=1000)] == [66, 66, 8]
    # near the end, tasks get smaller so that no worker idles while another has a long queue
    assert [len(g) for g in p.groups(subs(12), pending=0)] == [3, 3, 3, 3]


def test_a_whole_job_given_at_once_ends_in_small_tasks():
    """A job whose window holds all its tries: tasks shrink towards its end (down to an
    eighth of a full one), so that a slow try near the end holds few tries behind it and
    the last tasks share out over the workers."""
    p = _Packer(n_workers=2)
    for i in range(100):
        p.observe(TryRecord(mb=i, try_no=1, status=Status.RUN_DONE, elapsed=0.025))
    assert p.size == 80 and p.window >= 290
    sizes = [len(g) for g in p.groups(subs(290), pending=0)]
    assert sum(sizes) == 290 and sizes == sorted(sizes, reverse=True)
    assert sizes[0] == 72 and max(sizes[-4:]) <= 10 and min(sizes) >= 1
    assert len(sizes) <= 16  # not a task a try
    # with many more behind them, full tasks as before
    assert [len(g) for g in p.groups(subs(200), pending=5000)] == [80, 80, 40]


def test_packer_leaves_out_each_processs_first_try():
    """A process's first try waited for its init(): it says nothing of how long tries take."""
    p = _Packer(n_workers=2)
    for process in ("process000", "process001"):
        p.observe(TryRecord(0, 1, Status.RUN_DONE, elapsed=1.4, node="n", process=process))
    assert p.size == 1 and p.mean is None
    for i in range(30):
        p.observe(TryRecord(i, 1, Status.RUN_DONE, elapsed=0.08, node="n", process="process000"))
    assert p.size == 25


def test_tasks_grow_no_faster_than_the_tries_measured():
    """A job of mostly short tries with a long one now and then: its first tries say nothing
    of the long ones, and tasks sized from them alone held 98 tries (13 s instead of 2).
    Tasks hold no more tries than were measured: they grow as the measure does, and once it
    has seen the long tries they are sized from all of them."""
    p = _Packer(n_workers=2)
    sizes = []
    for i in range(200):
        p.observe(TryRecord(mb=i, try_no=1, status=Status.RUN_DONE, elapsed=0.01))
        if i in (2, 6, 18):
            sizes.append(p.size)
    assert sizes == [2, 6, 18]  # not 200 (2 s of 10 ms tries): as many as measured
    mixed = _Packer(n_workers=2)
    for i in range(400):  # a try in 20 takes 2.5 s: about 0.13 s a try
        mixed.observe(
            TryRecord(mb=i, try_no=1, status=Status.RUN_DONE, elapsed=2.5 if i % 20 == 19 else 0.01)
        )
    assert 5 <= mixed.size <= 40  # about 2 s of them, not 200 tries of 10 ms


def test_packer_keeps_long_tries_alone_and_ignores_failures():
    p = _Packer(n_workers=2)
    for i in range(4):
        p.observe(TryRecord(mb=i, try_no=1, status=Status.RUN_DONE, elapsed=2.4))
        p.observe(TryRecord(mb=i, try_no=1, status=Status.RUN_TIMEOUT, elapsed=0.0001))
    assert p.size == 1


def test_ledger_replays_final_states_written_with_the_try(tmp_path):
    path = str(tmp_path / "ledger.jsonl")
    with Ledger(path) as ledger:
        ledger.start_session({"step": "s"})
        ledger.record_try(TryRecord(mb=0, try_no=1, status=Status.RUN_EXCEPTION, error="x"))
        ledger.record_try(
            TryRecord(mb=0, try_no=2, status=Status.RUN_DONE, part="/p/0"), final="DONE"
        )
        ledger.record_try(TryRecord(mb=1, try_no=1, status=Status.RUN_TIMEOUT), final="FAILED")
        ledger.record_final(2, "CANCELLED", None)
    with open(path, "a") as f:
        f.write('{"event": "try", "rec')  # a line cut short by a crash
    state = read_ledger(path)
    assert state.sessions == 1
    assert (state.entries[0].state, state.entries[0].part, state.entries[0].tries) == (
        "DONE",
        "/p/0",
        2,
    )
    assert state.entries[1].state == "FAILED" and state.entries[1].part is None
    assert state.entries[2].state == "CANCELLED"
    assert state.state_of(3) == "PENDING"


class _Client:
    def __init__(self, answers):
        self.answers = answers

    def run(self, fn, *args, on_error="raise"):
        assert on_error == "return"
        if isinstance(self.answers, Exception):
            raise self.answers
        return self.answers


def test_work_on_every_worker_reports_the_workers_that_failed(caplog):
    from daskprs.execute.runner import on_workers

    caplog.set_level("WARNING", logger="daskprs")
    broken = OSError("no such process")
    failed = on_workers(_Client({"tcp://a:1": 2, "tcp://b:2": broken}), len, what="stop the slots")
    assert failed == {"tcp://b:2": broken}
    assert "could not stop the slots on worker tcp://b:2: OSError: no such process" in caplog.text
    assert "tcp://a:1" not in caplog.text
    assert on_workers(_Client(TimeoutError("gone")), len, what="x") != {}
    assert "could not x: the cluster did not answer (TimeoutError: gone)" in caplog.text


def test_a_tasks_records_travel_as_one_pickle():
    """What a worker sends back for a packed task: one pickle of the records, not a header
    and a pickle for each (16 against 3 us a record in the worker at 256 tries a task)."""
    from distributed.protocol import deserialize, serialize, to_serialize

    records = TryRecords(
        TryRecord(mb=i, try_no=1, status=Status.RUN_DONE, part=f"p.pack:{i}+3") for i in range(50)
    )
    header, frames = serialize(to_serialize(records))  # as Worker.get_data sends a result
    assert not header.get("is-collection") and len(frames) == 1
    back = deserialize(header, frames)
    assert type(back) is TryRecords and back == records


def test_the_window_keeps_a_few_seconds_of_tries_a_worker_in_two_to_four_tasks():
    """A retry goes behind the tries in flight: they are kept to about 4 s a worker."""

    def window(seconds: float, workers: int = 2) -> tuple[int, int]:
        p = _Packer(n_workers=workers)
        for i in range(300):
            p.observe(TryRecord(mb=i, try_no=1, status=Status.RUN_DONE, elapsed=seconds))
        return p.size, p.window

    assert window(0.5) == (4, 2 * 8)  # 4 s a worker: two tasks of 4 tries
    assert window(0.1) == (20, 2 * 40)  # the image job: two tasks of 20
    assert window(0.001) == (256, 2 * 1024)  # no-op tries: four full tasks (MAX_PACK)
    assert window(3.0) == (1, 2 * 2)  # long tries: one running and one queued
