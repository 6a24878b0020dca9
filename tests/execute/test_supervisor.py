"""The supervisor's policy, fed with plain events: no cluster, no clock."""

from __future__ import annotations

import pytest

from daskprs.execute.supervisor import (
    Budget,
    Finalize,
    Policy,
    Prior,
    StateTable,
    Stop,
    Submit,
    Supervisor,
    Tally,
    budget_verdict,
    failed_items,
    verdict_of,
)
from daskprs.results.outcome import BatchState, Status, TryRecord


@pytest.fixture(autouse=True)
def checked_supervisor(monkeypatch):
    """Every supervisor in these tests checks its invariants after every event."""
    for name in ("start", "on_outcome", "on_tick", "on_window", "abort"):
        original = getattr(Supervisor, name)

        def checked(self, *args, _original=original, **kwargs):
            out = _original(self, *args, **kwargs)
            self.validate_state()
            return out

        monkeypatch.setattr(Supervisor, name, checked)


def submits(instructions):
    return [i for i in instructions if isinstance(i, Submit)]


def finals(instructions):
    return [(i.mb, i.state) for i in instructions if isinstance(i, Finalize)]


def stops(instructions):
    return [i for i in instructions if isinstance(i, Stop)]


def rec(sub: Submit, status: str, total: int | None = 2, **kw) -> TryRecord:
    if status == Status.RUN_DONE:
        kw.setdefault("succeeded", total)
    return TryRecord(mb=sub.mb, try_no=sub.try_no, status=status, total=total, **kw)


def drive(sup: Supervisor, outcome, now: float = 1.0):
    """Run the supervisor to the end, answering each submission with ``outcome(sub)``."""
    queue = submits(sup.start())
    seen = []
    while queue:
        sub = queue.pop(0)
        seen.append(sub)
        out = sup.on_outcome(sub.try_key, outcome(sub), now)
        queue += submits(out)
    return seen


def test_all_succeed_first_try_in_id_order():
    sup = Supervisor({i: 2 for i in range(5)}, Policy(window=2))
    first = sup.start()
    assert [(s.mb, s.try_no) for s in submits(first)] == [(0, 1), (1, 1)]
    assert submits(first)[0].key == "minibatch-00000-try1"
    seen = drive_from(sup, first, lambda s: rec(s, Status.RUN_DONE))
    assert [s.mb for s in seen] == [0, 1, 2, 3, 4]
    assert sup.stopped == Stop(None)
    assert sup.summary()["done"] == 5
    assert sup.summary()["succeeded_items"] == 10


def drive_from(sup, first, outcome):
    queue = submits(first)
    seen = []
    while queue:
        sub = queue.pop(0)
        seen.append(sub)
        queue += submits(sup.on_outcome(sub.try_key, outcome(sub), 1.0))
    return seen


def test_first_try_fails_everywhere_then_all_succeed():
    sup = Supervisor({i: 1 for i in range(4)}, Policy(max_retries=2))
    seen = drive(
        sup, lambda s: rec(s, Status.RUN_EXCEPTION if s.try_no == 1 else Status.RUN_DONE, 1)
    )
    assert sorted((s.mb, s.try_no) for s in seen) == sorted(
        [(i, 1) for i in range(4)] + [(i, 2) for i in range(4)]
    )
    assert {s.key for s in seen if s.try_no == 2} == {f"minibatch-{i:05d}-try2" for i in range(4)}
    assert sup.stopped.failure is None
    assert sup.summary()["failed"] == 0


def test_always_failing_input_uses_all_tries_then_fails_and_job_succeeds():
    sup = Supervisor({i: 3 for i in range(3)}, Policy(max_retries=2))
    seen = drive(sup, lambda s: rec(s, Status.RUN_EXCEPTION if s.mb == 1 else Status.RUN_DONE, 3))
    assert [s.try_no for s in seen if s.mb == 1] == [1, 2, 3]
    assert sup.state == {0: "DONE", 1: "FAILED", 2: "DONE"}
    assert sup.summary()["failed_items"] == 3
    assert sup.stopped.failure is None


@pytest.mark.parametrize(
    ("policy", "budget"),
    [
        (Policy(max_retries=0, mini_batch_error_threshold=0), "mini_batch_error_threshold"),
        (Policy(max_retries=0, error_threshold=2), "error_threshold"),
    ],
)
def test_budgets_stop_the_job_and_cancel_the_rest(policy, budget):
    sup = Supervisor({i: 3 for i in range(10)}, Policy(**{**policy.__dict__, "window": 1}))
    first = sup.start()
    [sub] = submits(first)
    out = sup.on_outcome(sub.try_key, rec(sub, Status.RUN_EXCEPTION, 3), 1)
    [stop] = stops(out)
    assert stop.budget == budget
    assert "mini-batch 0" in stop.failure
    assert sorted(mb for mb, st in finals(out) if st == "CANCELLED") == list(range(1, 10))
    assert finals(out)[0] == (0, "FAILED")
    assert sup.summary()["cancelled"] == 9


def test_allowed_failed_percent_is_checked_once_all_are_scheduled():
    policy = Policy(max_retries=0, allowed_failed_percent=5, window=1)
    sup = Supervisor({i: 1 for i in range(10)}, policy)
    first = sup.start()
    sub = submits(first)[0]
    out = sup.on_outcome(sub.try_key, rec(sub, Status.RUN_EXCEPTION, 1), 1)
    assert not stops(out)  # 1 of 10 failed, but 9 are still to be scheduled
    drive_from(sup, out, lambda s: rec(s, Status.RUN_DONE, 1))
    assert sup.stopped.budget == "allowed_failed_percent"
    assert "1 of 10 mini-batches failed (10.0%)" in sup.stopped.failure


def test_allowed_failed_percent_counts_over_all():
    sup = Supervisor({i: 1 for i in range(10)}, Policy(max_retries=0, allowed_failed_percent=15))
    drive(sup, lambda s: rec(s, Status.RUN_EXCEPTION if s.mb in (3, 7) else Status.RUN_DONE, 1))
    assert sup.stopped.budget == "allowed_failed_percent"
    assert "2 of 10 mini-batches failed (20.0%)" in sup.stopped.failure


def test_allowed_failed_percent_within_budget_succeeds():
    sup = Supervisor({i: 1 for i in range(10)}, Policy(max_retries=0, allowed_failed_percent=20))
    drive(sup, lambda s: rec(s, Status.RUN_EXCEPTION if s.mb in (3, 7) else Status.RUN_DONE, 1))
    assert sup.stopped.failure is None


def test_partial_success_counts_failed_items_toward_error_threshold():
    sup = Supervisor({0: 10, 1: 10}, Policy(error_threshold=5))
    drive(sup, lambda s: rec(s, Status.RUN_DONE, 10, succeeded=7, failed=3))
    assert sup.stopped.budget == "error_threshold"
    assert "6 items failed" in sup.stopped.failure


def test_timeout_and_death_are_retried_like_exceptions():
    statuses = {1: Status.RUN_TIMEOUT, 2: Status.PROCESS_DIED, 3: Status.RUN_DONE}
    sup = Supervisor({0: 1}, Policy(max_retries=2))
    seen = drive(sup, lambda s: rec(s, statuses[s.try_no], 1))
    assert [s.try_no for s in seen] == [1, 2, 3]
    assert sup.state[0] == "DONE"


def test_init_failure_does_not_use_a_try_but_has_a_budget():
    sup = Supervisor({0: 1, 1: 1}, Policy(max_retries=0, nodes=1, processes_per_node=2, window=1))
    first = submits(sup.start())[0]
    out = sup.on_outcome(first.try_key, rec(first, Status.INIT_FAILED, node="node000"), 1)
    again = submits(out)[0]
    assert (again.mb, again.try_no) == (0, 1)
    assert again.key != first.key and again.try_key != first.try_key
    out = sup.on_outcome(again.try_key, rec(again, Status.RUN_DONE, 1), 1)
    assert sup.state[0] == "DONE"
    # 2 x processes (4) init failures in the job stop it
    sub = submits(out)[0]
    for _ in range(2):
        out = sup.on_outcome(
            sub.try_key, rec(sub, Status.INIT_FAILED, node="node000", error="ValueError: x"), 1
        )
        assert not stops(out)
        sub = submits(out)[0]
    out = sup.on_outcome(
        sub.try_key, rec(sub, Status.INIT_FAILED, node="node000", error="ValueError: x"), 1
    )
    [stop] = stops(out)
    assert stop.budget == "init"
    assert "ValueError: x" in stop.failure


def test_append_row_job_of_empty_mini_batches_succeeds():
    """Mini-batches that held no row succeed as ones whose run() returned [] do: an empty
    input makes an empty output (it used to fail, "no mini-batch succeeded", after "2 done")."""
    sup = Supervisor({0: 1, 1: 1}, Policy(max_retries=0))
    drive(sup, lambda s: rec(s, Status.EMPTY, 0))
    assert sup.stopped.failure is None and sup.stopped.budget is None
    assert sup.summary()["done"] == 2


def test_summary_only_job_of_empty_returns_succeeds():
    sup = Supervisor({0: 1, 1: 1}, Policy(max_retries=0))
    drive(sup, lambda s: rec(s, Status.RUN_DONE, 1, succeeded=0, failed=1))
    assert sup.stopped.failure is None


def test_every_mini_batch_failed_fails_the_job():
    sup = Supervisor({0: 1, 1: 1}, Policy(max_retries=1))
    drive(sup, lambda s: rec(s, Status.RUN_EXCEPTION, 1, error="KeyError: 'a'"))
    assert sup.stopped.budget == "all_failed"
    assert "KeyError" in sup.stopped.failure


def test_progress_timeout_on_tick():
    sup = Supervisor({0: 1}, Policy(progress_timeout=10), now=100.0)
    sup.start()
    assert sup.on_tick(105.0) == []
    out = sup.on_tick(111.0)
    [stop] = stops(out)
    assert stop.budget == "progress_update_timeout"
    assert finals(out) == [(0, "CANCELLED")]


def test_outcome_after_stop_or_unknown_key_is_ignored():
    sup = Supervisor({0: 1}, Policy())
    [sub] = submits(sup.start())
    assert sup.on_outcome("nope", rec(sub, Status.RUN_DONE, 1), 1) == []
    sup.abort("interrupted")
    assert sup.on_outcome(sub.try_key, rec(sub, Status.RUN_DONE, 1), 1) == []


def test_prior_states_count_and_session_keys_differ():
    prior = {0: Prior("DONE", 2, 0), 1: Prior("FAILED", 0, 2, "ValueError")}
    sup = Supervisor(
        {0: 2, 1: 2, 2: 2}, Policy(mini_batch_error_threshold=1), todo=[2], prior=prior, session=1
    )
    [sub] = submits(sup.start())
    assert sub.mb == 2 and sub.key == "minibatch-00002-try1-s1" and sub.try_key.startswith("s1")
    out = sup.on_outcome(sub.try_key, rec(sub, Status.RUN_EXCEPTION, 2), 1)
    assert submits(out)  # retried: one failure (prior) is within the threshold of 1
    sub = submits(out)[0]
    for _ in range(2):
        out = sup.on_outcome(sub.try_key, rec(sub, Status.RUN_EXCEPTION, 2), 1)
        if submits(out):
            sub = submits(out)[0]
    assert sup.stopped.budget == "mini_batch_error_threshold"


def test_window_bounds_work_in_flight():
    sup = Supervisor({i: 1 for i in range(100)}, Policy(window=7))
    assert len(submits(sup.start())) == 7
    assert sup.summary()["running"] == 7


def test_a_try_that_never_started_is_resubmitted_without_using_a_try():
    sup = Supervisor({0: 1}, Policy(max_retries=0))
    [sub] = submits(sup.start())
    out = sup.on_outcome(sub.try_key, rec(sub, Status.NOT_STARTED), 1)
    [again] = submits(out)
    assert (again.mb, again.try_no) == (0, 1) and again.key != sub.key
    sup.on_outcome(again.try_key, rec(again, Status.RUN_DONE, 1), 1)
    assert sup.state[0] == "DONE"


def test_rows_that_found_no_room_stop_the_step_and_use_no_try():
    """An entry-script process whose disk refused a try's rows (STORAGE_ERROR): every other try
    would meet that disk, so the step stops (budget ``storage``) with the problem and its fix;
    the mini-batch is cancelled (run again by --resume), not failed, and no try is counted."""
    sup = Supervisor({0: 1, 1: 1, 2: 1}, Policy(max_retries=0, window=2))
    first, second = submits(sup.start())
    sup.on_outcome(first.try_key, rec(first, Status.RUN_DONE, 1), 1)
    error = (
        "no space left on the device of /r/p (No space left on device) while entry-script "
        "process node000/process001 wrote the rows of mini-batch 1\nFree some space there"
    )
    out = sup.on_outcome(second.try_key, rec(second, Status.STORAGE_ERROR, 1, error=error), 1)
    [stop] = [i for i in out if isinstance(i, Stop)]
    assert stop.budget == Budget.STORAGE
    assert stop.failure == (
        "no space left on the device of /r/p (No space left on device) while entry-script "
        "process node000/process001 wrote the rows of mini-batch 1; every mini-batch done is "
        "kept. Free some space there"
    )
    assert sup.state == {0: "DONE", 1: "CANCELLED", 2: "CANCELLED"}
    assert sup.summary()["failed"] == 0 and not submits(out)


def test_a_submitted_mini_batch_is_running_until_its_try_ends():
    sup = Supervisor({0: 2, 1: 2}, Policy(window=1))
    (sub,) = submits(sup.start())
    assert sup.state == {0: BatchState.RUNNING, 1: BatchState.PENDING}
    assert sup.summary()["running"] == 1 and sup.summary()["pending"] == 1
    (retry,) = submits(sup.on_outcome(sub.try_key, rec(sub, Status.RUN_EXCEPTION), 1.0))
    assert (retry.mb, retry.try_no) == (0, 2)  # a retry goes before what never ran
    assert sup.state == {0: BatchState.RUNNING, 1: BatchState.PENDING}
    sup.abort("stop")
    assert sup.state == {0: BatchState.CANCELLED, 1: BatchState.CANCELLED}


def test_a_wider_window_submits_more_at_once():
    sup = Supervisor({i: 1 for i in range(10)}, Policy(window=2))
    assert len(submits(sup.start())) == 2
    assert sup.backlog == 8
    more = submits(sup.on_window(5))
    assert [s.mb for s in more] == [2, 3, 4]
    assert sup.backlog == 5
    assert submits(sup.on_window(3)) == []  # narrower: nothing new until tries end


def test_a_broken_invariant_is_named():
    sup = Supervisor({0: 1}, Policy())
    sup.start()
    sup.state[0] = BatchState.DONE  # done without being counted
    with pytest.raises(AssertionError, match="RUNNING mini-batches"):
        sup.validate_state()


def test_failed_items_of_a_final_mini_batch():
    done = TryRecord(mb=0, try_no=1, status=Status.RUN_DONE, total=5, succeeded=4, failed=1)
    died = TryRecord(mb=0, try_no=3, status=Status.PROCESS_DIED, total=None)
    assert failed_items(BatchState.DONE, done, 5) == 1
    assert failed_items(BatchState.FAILED, done, 5) == 5  # all of it
    assert failed_items(BatchState.FAILED, died, 7) == 7  # the plan's count when unread
    assert failed_items(BatchState.CANCELLED, None, 7) == 0


def test_the_verdict_of_a_finished_step_applies_the_same_budgets():
    prior = {0: Prior(BatchState.DONE, 2), 1: Prior(BatchState.FAILED, 0, 2, "boom")}
    stop, summary = verdict_of({0: 2, 1: 2}, prior, Policy(mini_batch_error_threshold=0))
    assert stop.budget == Budget.MINI_BATCH_ERROR_THRESHOLD
    assert "mini-batch 1: boom" in stop.failure
    assert summary["done"] == 1 and summary["failed"] == 1
    stop, _ = verdict_of({0: 2, 1: 2}, prior, Policy())
    assert stop == Stop(None)


def test_the_state_table_is_a_mapping_of_the_plans_ids():
    for ids in ([0, 1, 2, 3], [3, 7, 42]):  # a plan's ids; any others
        table = StateTable(ids)
        assert len(table) == 0 and dict(table) == {}
        for mb in reversed(ids):
            table[mb] = BatchState.PENDING
        table[ids[1]] = BatchState.DONE
        assert list(table) == ids and len(table) == len(ids)
        assert table == {mb: "DONE" if mb == ids[1] else "PENDING" for mb in ids}
        assert table.count(BatchState.PENDING) == len(ids) - 1
        with pytest.raises(KeyError):
            table[99] = BatchState.DONE
        with pytest.raises(KeyError):
            table[-1]


def test_sparse_ids_and_counts_pending_without_a_pass_over_the_states():
    sup = Supervisor({5: 1, 9: 1, 12: 3}, Policy(window=1, max_retries=1))
    (first,) = submits(sup.start())
    assert first.mb == 5 and sup.summary()["pending"] == 2 and sup.summary()["running"] == 1
    out = sup.on_outcome(first.try_key, TryRecord(5, 1, Status.RUN_DONE, succeeded=1), 1.0)
    (second,) = submits(out)
    assert second.mb == 9 and sup.summary()["pending"] == 1
    assert sup.planned_items(12) == 3


def test_a_try_submitted_again_gets_a_key_of_its_own():
    sup = Supervisor({0: 1}, Policy(max_retries=1), session=2)
    keys = []
    sub = submits(sup.start())[0]
    for status in (Status.NOT_STARTED, Status.NOT_STARTED, Status.RUN_EXCEPTION):
        keys.append(sub.key)
        out = sup.on_outcome(sub.try_key, TryRecord(0, sub.try_no, status, error="x"), 1.0)
        sub = submits(out)[0]
    keys.append(sub.key)
    assert keys == [
        "minibatch-00000-try1-s2",
        "minibatch-00000-try1-s2-r2",
        "minibatch-00000-try1-s2-r3",
        "minibatch-00000-try2-s2",
    ]


def test_a_budget_stop_counts_one_mini_batch_or_item_in_the_singular():
    one = Tally(failed=1, failed_items=1)
    stop = budget_verdict(one, 4, Policy(mini_batch_error_threshold=0), queue_empty=False)
    assert stop is not None and stop.failure.startswith("1 mini-batch failed, over ")
    stop = budget_verdict(one, 4, Policy(error_threshold=0), queue_empty=False)
    assert stop is not None and stop.failure.startswith("1 item failed, over ")
    two = Tally(failed=2, failed_items=2)
    stop = budget_verdict(two, 4, Policy(mini_batch_error_threshold=1), queue_empty=False)
    assert stop is not None and stop.failure.startswith("2 mini-batches failed, over ")
