"""Step-reuse keys and records (:mod:`daskprs.results.reuse`), without a cluster."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from daskprs.job.load import load_job
from daskprs.job.model import DataInput
from daskprs.results import reuse

COMPONENT = """\
type: parallel
name: score
version: 1
is_deterministic: {det}
inputs:
  data: {{type: uri_folder, path: ./data}}
outputs:
  result: {{type: uri_file}}
input_data: ${{{{inputs.data}}}}
task:
  type: run_function
  code: ./code
  entry_script: score.py
  append_row_to: ${{{{outputs.result}}}}
"""


def job_folder(tmp_path: Path, det: str = "true") -> Path:
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "a.txt").write_text("a\n")
    path = tmp_path / "component.yml"
    path.write_text(COMPONENT.format(det=det))
    return path


def step_in(job: Path, run_dir: Path):
    [step] = load_job(job, run_dir=str(run_dir), env={"HOME": "/nonexistent"}).steps
    return step


def test_the_key_ignores_the_run_directory_and_sees_inputs_and_code(tmp_path):
    job = job_folder(tmp_path)
    one, two = tmp_path / "runs/one", tmp_path / "runs/two"
    key = reuse.step_key(step_in(job, one), str(one))
    assert key == reuse.step_key(step_in(job, two), str(two))
    (tmp_path / "data" / "a.txt").write_text("changed\n")
    changed_input = reuse.step_key(step_in(job, two), str(two))
    assert changed_input != key
    (tmp_path / "code" / "score.py").write_text("def run(mini_batch):\n    return []\n")
    changed_code = reuse.step_key(step_in(job, two), str(two))
    assert changed_code not in (key, changed_input)
    (tmp_path / "data" / "b.txt").write_text("new file\n")
    assert reuse.step_key(step_in(job, two), str(two)) != changed_code
    step = step_in(job, two)
    remote = replace(step, input_data=DataInput("data", "uri_folder", "s3://bucket/data"))
    assert reuse.step_key(remote, str(two)) is None


def test_is_deterministic_false_turns_reuse_off(tmp_path):
    assert step_in(job_folder(tmp_path), tmp_path / "r").is_deterministic
    assert not step_in(job_folder(tmp_path, "false"), tmp_path / "r").is_deterministic


def test_records_are_found_while_their_outputs_exist_and_copied_with_their_times(tmp_path):
    job = job_folder(tmp_path)
    one, two = tmp_path / "runs/one", tmp_path / "runs/two"
    first, second = step_in(job, one), step_in(job, two)
    roots = reuse.search_roots(str(two))
    assert roots == [str(tmp_path / "runs")]
    assert reuse.search_roots(str(two), tmp_path / "c") == [*roots, str(tmp_path / "c")]
    key = reuse.step_key(first, str(one))
    assert reuse.lookup(roots, key, second, str(two)) is None  # nothing recorded yet
    out = Path(first.outputs["result"].path)
    out.mkdir(parents=True)
    (out / "parallel_run_step.txt").write_text("a\n")
    os.utime(out / "parallel_run_step.txt", ns=(1_000_000_000, 1_000_000_000))
    reuse.remember(str(one), key, first, {"step": "score"})
    assert (one / "steps/score/reuse.json").is_file()
    assert reuse.lookup(roots, "another key", second, str(two)) is None
    record = reuse.lookup(roots, key, second, str(two))
    assert record is not None and record["run_dir"] == str(one)
    assert reuse.lookup(roots, key, first, str(one)) is None  # never the run itself
    reuse.copy_outputs(record, second.outputs)
    copied = Path(second.outputs["result"].path) / "parallel_run_step.txt"
    assert copied.read_text() == "a\n" and copied.stat().st_mtime_ns == 1_000_000_000
    (out / "parallel_run_step.txt").unlink()
    out.rmdir()
    assert reuse.lookup(roots, key, second, str(two)) is None  # the earlier outputs are gone


def _tree_digest_by_walk(path: str, run_dir: str) -> str:
    """The folder digest as first written (isfile, then os.walk with relpath per file): the
    keys earlier runs recorded, which the faster walk must give again."""
    import hashlib

    h = hashlib.sha256(os.fsencode(reuse._relative(path, run_dir)) + b"\n")
    if os.path.isfile(path):
        st = os.stat(path)
        h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()
    if not os.path.isdir(path):
        return h.hexdigest() + "-missing"
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            st = os.stat(full)
            line = f"{os.path.relpath(full, path)}\0{st.st_size}\0{st.st_mtime_ns}\n"
            h.update(os.fsencode(line))  # (a name that is not UTF-8: its bytes)
    return h.hexdigest()


def test_folder_digests_are_those_earlier_runs_recorded(tmp_path):
    run = tmp_path / "runs" / "r1"
    data = run / "data"
    for rel in ("a.txt", "b/c.txt", "b/d/e.txt", "b/d/f.txt", "z.txt"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text(rel)
    for path in (data, data / "b", data / "a.txt", data / "missing", f"{data}{os.sep}"):
        assert reuse._tree_digest(str(path), str(run)) == _tree_digest_by_walk(str(path), str(run))


class _Planned(Exception):
    """Raised by the test's plan_step: the step got as far as planning."""


def test_the_cluster_starts_before_planning_unless_an_earlier_record_may_be_reused(
    tmp_path, monkeypatch
):
    """A deterministic step waits for the reuse lookup before starting a cluster (a reused
    step needs none); with no record of the step in the run root there is nothing to find,
    and the cluster starts while the step plans and digests its input. On the embedded
    cluster a local file list's processes start before it plans, and the cluster with them."""
    from daskprs import pipeline
    from daskprs.execute.resume import Mode
    from daskprs.results.jobresult import JobResult
    from daskprs.rundir import RunDir

    events: list[str] = []

    class Cluster:
        def prestart(self) -> None:
            events.append("prestart")

    def plan_step(step):
        events.append("plan")
        raise _Planned

    monkeypatch.setattr(pipeline, "plan_step", plan_step)
    job_file = job_folder(tmp_path)
    two = tmp_path / "runs" / "two"
    job = load_job(job_file, run_dir=str(two), env={"HOME": "/nonexistent"})
    session = pipeline.JobSession(
        job=job,
        run=RunDir(str(two)),
        mode=Mode.RUN,
        record={},
        echo=lambda line: None,
        reuse_roots=tuple(reuse.search_roots(str(two))),
    )
    choice = pipeline.ClusterChoice(scheduler="tcp://127.0.0.1:8786")
    runner = pipeline.StepsRunner(session, choice, JobResult(str(two)))
    [step] = job.steps
    assert not reuse.recorded(session.reuse_roots, step, str(two))
    with pytest.raises(_Planned):
        runner._step(step, Cluster())
    assert events == ["prestart", "plan"]

    class Processes:  # what StepsRunner._start_processes starts (none here)
        def close(self, kill: bool = False, forget: bool = False) -> None:
            events.append(("killed" if kill else "stopped") + (", logs taken back" * forget))

    def start_processes(self, step, tables):
        events.append(f"processes (tables: {tables})")
        return Processes()

    monkeypatch.setattr(pipeline.StepsRunner, "_start_processes", start_processes)
    embedded = pipeline.StepsRunner(session, pipeline.ClusterChoice(), JobResult(str(two)))
    events.clear()
    with pytest.raises(_Planned):
        embedded._step(step, Cluster())
    # a local file list: its processes first, and the cluster with them, then the plan;
    # killed when planning fails
    assert events == ["processes (tables: False)", "prestart", "plan", "killed, logs taken back"]

    one = tmp_path / "runs" / "one"
    reuse.remember(str(one), "an earlier key", step_in(job_file, one))
    assert reuse.recorded(session.reuse_roots, step, str(two))
    assert not reuse.recorded(session.reuse_roots, step, str(one))  # its own record
    events.clear()
    with pytest.raises(_Planned):
        runner._step(step, Cluster())
    assert events == ["plan"]  # the lookup first: the step may be reused


@pytest.mark.parametrize(
    ("extra", "listed"),
    [
        (None, True),
        (".hidden", False),  # the walk sees it, the listing does not
        ("sub/MLTable", False),
        ("link", False),
    ],
)
def test_the_planned_folder_is_digested_from_its_listing_as_the_walk_would(tmp_path, extra, listed):
    from daskprs.inputs.batches import FileBatches
    from daskprs.inputs.plan import plan_input
    from daskprs.job.model import DataInput, MiniBatchSize

    run = tmp_path / "runs" / "r1"
    data = run / "data"
    rels = ["z.txt", "a.txt", "a/x", "a/b/y", "a-b/w", "a0/v", "sub/deep/er/u", "_/t", "A/s"]
    for rel in rels:
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text(rel * 3)
    (data / "empty" / "folder").mkdir(parents=True)
    if extra == "link":
        os.symlink(data / "z.txt", data / "link")
    elif extra is not None:
        (data / extra).write_text("x")
    plan = plan_input(DataInput("d", "uri_folder", str(data)), MiniBatchSize(2, "count"))
    assert isinstance(plan.batches, FileBatches)
    got = reuse._listed_tree_digest(str(data), str(run), plan.batches)
    walked = reuse._tree_digest(str(data), str(run))
    assert walked == _tree_digest_by_walk(str(data), str(run))
    if listed:
        assert got == walked
    else:
        assert got is None


@pytest.mark.parametrize("flat", [True, False])
def test_a_listed_folder_with_names_that_are_not_utf8_digests_as_the_walk(tmp_path, flat):
    """One folder (its lines a chunk at a time) or several; a name that is not UTF-8 is
    digested as its bytes, by the listing and by the walk alike."""
    from daskprs.inputs.batches import FileBatches
    from daskprs.inputs.plan import plan_input
    from daskprs.job.model import DataInput, MiniBatchSize

    run = tmp_path / "runs" / "r1"
    data = run / "data"
    names = [b"a.txt", b"bad\xff", "caf\u00e9".encode(), *([] if flat else [b"sub/x\xfe"])]
    for name in names:
        path = os.path.join(os.fsencode(data), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(name)
    plan = plan_input(DataInput("d", "uri_folder", str(data)), MiniBatchSize(1, "count"))
    assert isinstance(plan.batches, FileBatches)
    walked = reuse._tree_digest(str(data), str(run))
    assert walked == _tree_digest_by_walk(str(data), str(run))
    assert reuse._listed_tree_digest(str(data), str(run), plan.batches) == walked
    unlisted = FileBatches(list(plan.batches.files), 1)
    assert reuse._plan_digest(plan.batches, str(run)) == reuse._plan_digest(unlisted, str(run))
