"""Pieces of the job driver that need no cluster."""

from __future__ import annotations

import pytest

import daskprs
from daskprs.api import _choose_cluster, default_run_dir
from daskprs.errors import UserInputError
from daskprs.execute.step import check_workers
from daskprs.execute.worker import check_worker
from daskprs.job.model import DataInput, Job, ParallelStep


class FakeClient:
    def __init__(self, answers):
        self.answers = answers

    def run(self, fn, *args):
        if isinstance(self.answers, Exception):
            raise self.answers
        return self.answers


def step(tmp_path):
    return ParallelStep(
        name="score",
        input_data=DataInput("data", "uri_folder", str(tmp_path / "data")),
        entry_script="score.py",
        code_dir=str(tmp_path / "code"),
    )


def azure_sized_job(tmp_path, instance_count=50, concurrency=2) -> Job:
    sized = ParallelStep(
        name="score",
        input_data=DataInput("data", "uri_folder", str(tmp_path / "data")),
        entry_script="score.py",
        code_dir=str(tmp_path / "code"),
        instance_count=instance_count,
        max_concurrency_per_instance=concurrency,
    )
    return Job(str(tmp_path / "job.yml"), "pipeline", (sized,), "r", str(tmp_path / "run"))


def test_the_embedded_cluster_starts_a_few_workers_per_core_unless_workers_asks(tmp_path):
    echoed: list[str] = []
    job = azure_sized_job(tmp_path)  # 50 x 2 processes asked for, on 2 cores
    choice, notes = _choose_cluster(job, None, None, None, None, echoed.append, cores=2)
    assert choice.n_workers == 8
    (note,) = notes
    assert note == (
        "the job file asks for 100 entry-script processes (instance_count x "
        "max_concurrency_per_instance); the embedded cluster starts 8 (4 x the 2 cores here). "
        "The results are the same (byte-identical) with any number of workers, only the speed "
        "changes; give --workers 100 to start them all"
    )
    assert echoed == [f"note: {note}"]
    # --workers is honoured, with a note when it is far above the cores
    choice, notes = _choose_cluster(job, None, 100, None, None, echoed.append, cores=2)
    assert choice.n_workers == 100 and "compete for the cores" in notes[0]
    choice, notes = _choose_cluster(job, None, 3, None, None, echoed.append, cores=2)
    assert (choice.n_workers, notes) == (3, [])
    # a job that fits starts what it asks for, without a note
    small = azure_sized_job(tmp_path, instance_count=2, concurrency=2)
    choice, notes = _choose_cluster(small, None, None, None, None, echoed.append, cores=2)
    assert (choice.n_workers, notes) == (4, [])
    # a given cluster is used as it is
    choice, notes = _choose_cluster(job, "tcp://h:8786", None, None, None, echoed.append, cores=2)
    assert (choice.scheduler, notes) == ("tcp://h:8786", [])


def test_check_workers_accepts_a_matching_cluster(tmp_path):
    for sub in ("data", "code", "run"):
        (tmp_path / sub).mkdir()
    s = step(tmp_path)
    (tmp_path / "code" / "score.py").write_text("def run(b):\n    return b\n")
    script = str(tmp_path / "code" / "score.py")
    answer = check_worker((str(tmp_path / "run"), script, s.input_data.path))
    assert answer == {"version": daskprs.__version__, "missing": [], "staging": None}
    assert check_workers(FakeClient({"tcp://w1": answer}), s, str(tmp_path / "run")) is False
    # a worker that cannot see the entry script gets the code folder shipped
    lacking = {"version": daskprs.__version__, "missing": [script]}
    assert check_workers(FakeClient({"tcp://w1": lacking}), s, str(tmp_path / "run")) is True


def test_check_workers_names_the_worker_and_what_it_lacks(tmp_path):
    s = step(tmp_path)
    answers = {
        "tcp://w1": {"version": "0.0.1", "missing": []},
        "tcp://w2": {"version": daskprs.__version__, "missing": [str(tmp_path / "run")]},
    }
    with pytest.raises(UserInputError) as info:
        check_workers(FakeClient(answers), s, str(tmp_path))
    text = str(info.value)
    assert "worker tcp://w1 runs daskprs 0.0.1" in text
    assert f"worker tcp://w2 cannot see {tmp_path / 'run'}" in text
    with pytest.raises(UserInputError, match="Install daskprs"):
        check_workers(FakeClient(ModuleNotFoundError("daskprs")), s, str(tmp_path))


def test_default_run_dir_is_named_after_the_file_and_utc_time():
    path = default_run_dir("/x/jobs/pipeline.yml", now=0)
    assert path.endswith("daskprs-runs/pipeline-19700101-000000")


def test_public_api_is_explicit():
    assert set(daskprs.__all__) == {
        "DaskprsError",
        "JobFailed",
        "JobResult",
        "JobSpecError",
        "MapResult",
        "PlanningError",
        "UserInputError",
        "__version__",
        "input_collection",
        "load_job",
        "map_batches",
        "resume_job",
        "run_job",
    }
    for name in daskprs.__all__:
        assert getattr(daskprs, name) is not None


def test_input_collections_have_one_partition_per_mini_batch(tmp_path):
    import dask
    import pandas as pd
    from conftest import make_files, write_job

    make_files(tmp_path / "data", 5)
    job = write_job(
        tmp_path, "def run(b):\n    return b\n", input_yaml="type: uri_folder\npath: ./data"
    )
    bag = daskprs.input_collection(job)
    assert bag.npartitions == 3
    with dask.config.set(scheduler="sync"):
        assert [p.rsplit("/", 1)[1] for p in bag.compute()] == [f"f{i:03d}.txt" for i in range(5)]
    (tmp_path / "t").mkdir()
    pd.DataFrame({"a": range(100)}).to_csv(tmp_path / "t/x.csv", index=False)
    (tmp_path / "t/MLTable").write_text(
        "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {delimiter: ','}\n"
    )
    job = write_job(
        tmp_path / "j2",
        "def run(b):\n    return b\n",
        input_yaml=f"type: mltable\npath: {tmp_path / 't'}",
        mini_batch_size='"100"',
    )
    ddf = daskprs.input_collection(job, sets=["jobs.score.mini_batch_size=64"])
    assert ddf.npartitions > 3
    with dask.config.set(scheduler="sync"):
        assert ddf.compute()["a"].tolist() == list(range(100))


def test_planning_longer_than_first_task_creation_timeout_fails_the_job(tmp_path, monkeypatch):
    import threading

    from daskprs import pipeline
    from daskprs.errors import JobFailed
    from daskprs.job.model import RuntimeSettings

    release = threading.Event()

    def slow_plan(*args, **kwargs):
        release.wait(30)
        raise AssertionError("planning should have been given up")

    monkeypatch.setattr(pipeline, "plan_input", slow_plan)
    s = step(tmp_path)
    s = type(s)(**{**s.__dict__, "settings": RuntimeSettings(first_task_creation_timeout=0.2)})
    try:
        with pytest.raises(JobFailed, match="first_task_creation_timeout"):
            pipeline.plan_step(s)
    finally:
        release.set()
