"""End-to-end runs of both input kinds on a LocalCluster, checking outputs line for line."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest
from conftest import make_files, output_of, write_job

from daskprs.api import run_job
from daskprs.testing import flaky_script

pytestmark = pytest.mark.slow

FILE_SCRIPT = """
import os, sys

SEEN_INIT = 0

def init():
    global SEEN_INIT
    SEEN_INIT += 1

def run(mini_batch):
    out = []
    for path in mini_batch:
        with open(path) as f:
            out.append(f"{os.path.basename(path)}|{f.read().strip()}|{os.environ['GREETING']}|{sys.argv[1:]}")
    return out
"""


FILE_ECHO = """
import os

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def test_file_list_job_output_in_input_order(tmp_path, client):
    files = make_files(tmp_path / "data" / "sub", 7, "b") + make_files(tmp_path / "data", 6, "a")
    (tmp_path / "data" / ".hidden").write_text("x")
    job = write_job(
        tmp_path,
        FILE_SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"3"',
        extra="environment_variables:\n  GREETING: hello",
        program_arguments="--flag ${{inputs.data}}",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    rel = sorted(files, key=lambda p: str(p.relative_to(tmp_path / "data")))
    data = str(tmp_path / "data")
    expected = [f"{p.name}|{p.read_text().strip()}|hello|['--flag', '{data}']" for p in rel]
    out = output_of(tmp_path / "run")
    assert out.read_text().splitlines() == expected
    assert result.outputs["score.result"] == str(out)
    summary = result.steps[0].summary
    assert summary["total"] == 5 and summary["done"] == 5 and summary["succeeded_items"] == 13
    rows = list(
        csv.DictReader((tmp_path / "run/logs/sys/job_report/processed_mini-batches.csv").open())
    )
    assert sorted(int(r["Mini-batch Id"]) for r in rows) == [0, 1, 2, 3, 4]
    assert {r["Status"] for r in rows} == {"RUN_DONE"}
    assert "outcome: succeeded" in (tmp_path / "run/logs/job_result.txt").read_text()
    assert (tmp_path / "run/failed_mini_batches.jsonl").read_text() == ""
    own_log = (tmp_path / "run/logs/sys/daskprs.log").read_text()
    assert f"run {job} (" in own_log  # daskprs's own log of the run


TABLE_SCRIPT = """
import pandas as pd

def run(mini_batch, context):
    out = pd.DataFrame({"id": mini_batch["id"], "double": mini_batch["value"] * 2})
    out["mb"] = context.minibatch_index
    return out
"""


def _write_table(folder, rows=500):
    folder.mkdir(parents=True)
    df = pd.DataFrame(
        {
            "id": range(rows),
            "value": [i * 0.5 for i in range(rows)],
            "name": [f"n{i}" for i in range(rows)],
        }
    )
    df.iloc[: rows // 2].to_csv(folder / "part-1.csv", index=False)
    df.iloc[rows // 2 :].to_csv(folder / "part-2.csv", index=False)
    (folder / "MLTable").write_text(
        "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n"
        "      delimiter: ','\n      header: all_files_same_headers\n"
    )
    return df


def test_short_tries_packed_in_a_task_append_to_one_pack_and_the_output_is_exact(tmp_path, client):
    """Tries far shorter than a Dask task's cost are packed several to a task; their rows go
    to one pack a task, each try's a range its record names (daskprs.results.packs)."""
    from daskprs.results.ledger import read_ledger
    from daskprs.results.packs import is_pack_ref

    files = make_files(tmp_path / "data", 120, "f")
    job = write_job(
        tmp_path, FILE_ECHO, input_yaml="type: uri_folder\npath: ./data", mini_batch_size='"1"'
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == [p.name for p in files]
    step = tmp_path / "run" / "steps" / "score"
    state = read_ledger(str(step / "ledger.jsonl"))
    parts = [state.part_of(mb) for mb in range(120)]
    packed = [p for p in parts if p is not None and is_pack_ref(p)]
    assert len(packed) > 60  # most tries were packed (the first ones run one a task)
    packs = list((step / "parts").glob("*.pack"))
    assert 0 < len(packs) < len(packed)
    assert len(list((step / "parts").glob("*.part"))) == 120 - len(packed)


def test_a_file_list_job_never_imports_pandas_for_the_script(tmp_path, client):
    """Its processes start without pandas (a few hundred milliseconds each, at every start
    and after every kill); the script imports what it needs itself."""
    make_files(tmp_path / "data", 4, "a")
    job = write_job(
        tmp_path,
        "import sys\n\ndef run(mini_batch):\n    return [str('pandas' in sys.modules)]\n",
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == ["False"] * 4


def test_the_embedded_cluster_starts_while_the_step_plans_an_object_stores_input(
    tmp_path, monkeypatch, s3
):
    """Planning (a listing of an object store can take seconds) does not wait for the
    cluster to start, nor the cluster for planning. (A local input is planned first: its
    processes start, then the cluster; tests/execute/test_warm.py.)"""
    import contextlib
    import threading

    from daskprs import pipeline

    opening = threading.Event()
    real_open, real_plan = pipeline.open_cluster, pipeline.plan_input

    @contextlib.contextmanager
    def watched(**kwargs):
        opening.set()
        with real_open(**kwargs) as handle:
            yield handle

    def plan_once_the_cluster_starts(*args, **kwargs):
        assert opening.wait(20), "the cluster was not starting while the step planned"
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(pipeline, "open_cluster", watched)
    monkeypatch.setattr(pipeline, "plan_input", plan_once_the_cluster_starts)
    for i in range(3):
        s3.pipe(f"data/docs/a{i:03d}.txt", b"x\n")
    job = write_job(tmp_path, FILE_ECHO, input_yaml="type: uri_folder\npath: s3://data/docs")
    lines = []
    result = run_job(job, run_dir=tmp_path / "run", workers=1, echo=lines.append, force_rerun=True)
    assert result.ok, result.failure
    assert len(output_of(tmp_path / "run").read_text().splitlines()) == 3
    assert any(line.startswith("embedded local cluster: 1 worker slots") for line in lines)


def test_a_planning_error_closes_the_cluster_started_for_it(tmp_path):
    import psutil

    from daskprs.errors import PlanningError
    from daskprs.testing import poll_for

    (tmp_path / "data").mkdir()
    job = write_job(tmp_path, FILE_ECHO, input_yaml="type: uri_folder\npath: ./data")
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with pytest.raises(PlanningError, match="the folder holds no files"):
        run_job(job, run_dir=tmp_path / "run", workers=1, echo=lambda s: None, force_rerun=True)
    assert poll_for(lambda: {p.pid for p in me.children(recursive=True)} <= before, timeout=20)


def test_tabular_job_is_byte_identical_to_a_serial_computation(tmp_path, client):
    df = _write_table(tmp_path / "table")
    job = write_job(
        tmp_path,
        TABLE_SCRIPT.replace('out["mb"] = context.minibatch_index', "pass"),
        input_yaml="type: mltable\npath: ./table\nmode: direct",
        mini_batch_size='"1kb"',
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert result.steps[0].summary["total"] > 4  # really split
    expected = pd.DataFrame({"id": df["id"], "double": df["value"] * 2}).to_csv(
        sep=" ", header=False, index=False, lineterminator="\n"
    )
    assert output_of(tmp_path / "run").read_text() == expected


def test_tabular_mini_batches_never_cross_files_and_ids_follow_order(tmp_path, client):
    _write_table(tmp_path / "table", rows=200)
    job = write_job(
        tmp_path,
        TABLE_SCRIPT,
        input_yaml="type: mltable\npath: ./table",
        mini_batch_size='"100000"',
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok
    lines = output_of(tmp_path / "run").read_text().splitlines()
    assert len(lines) == 200
    # one mini-batch per file: rows 0-99 in mini-batch 0, 100-199 in 1
    assert {line.split()[2] for line in lines[:100]} == {"0"}
    assert {line.split()[2] for line in lines[100:]} == {"1"}


def test_first_try_fails_everywhere_all_succeed_on_retry(tmp_path, client):
    make_files(tmp_path / "data", 8)
    (tmp_path / "marks").mkdir()
    job = write_job(
        tmp_path,
        flaky_script(),
        input_yaml="type: uri_folder\npath: ./data",
        extra=f"environment_variables:\n  MARKS: {tmp_path / 'marks'}",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(8)
    ]
    rows = list(
        csv.DictReader((tmp_path / "run/logs/sys/job_report/processed_mini-batches.csv").open())
    )
    assert sorted((r["Mini-batch Id"], r["Try"], r["Status"]) for r in rows) == sorted(
        [(str(i), "1", "RUN_EXCEPTION") for i in range(4)]
        + [(str(i), "2", "RUN_DONE") for i in range(4)]
    )


BAD_ONE = """
import os

def run(mini_batch):
    for p in mini_batch:
        if os.path.basename(p) == "f003.txt":
            raise ValueError(f"cannot parse {os.path.basename(p)}")
    return [os.path.basename(p) for p in mini_batch]
"""


@pytest.mark.parametrize(
    ("extra", "ok"),
    [
        ("retry_settings:\n  max_retries: 1", True),
        ("retry_settings:\n  max_retries: 1\nmini_batch_error_threshold: 0", False),
        ("retry_settings:\n  max_retries: 1\nerror_threshold: 1", False),
        ("retry_settings:\n  max_retries: 1\nerror_threshold: 2", True),
    ],
)
def test_one_bad_input_fails_exactly_its_mini_batch(tmp_path, client, extra, ok):
    make_files(tmp_path / "data", 8)
    job = write_job(tmp_path, BAD_ONE, input_yaml="type: uri_folder\npath: ./data", extra=extra)
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok is ok
    failed = [json.loads(line) for line in (tmp_path / "run/failed_mini_batches.jsonl").open()]
    by_state = {f["id"]: f for f in failed if f["state"] == "FAILED"}
    assert list(by_state) == [1]
    entry = by_state[1]
    assert entry["status"] == "RUN_EXCEPTION" and entry["tries"] == 2
    assert entry["inputs"]["files"][1].endswith("f003.txt")
    assert "ValueError: cannot parse f003.txt (at score.py:" in entry["error"]
    assert "raise ValueError" in entry["traceback"]
    if ok:
        lines = output_of(tmp_path / "run").read_text().splitlines()
        assert lines == [f"f{i:03d}.txt" for i in (0, 1, 4, 5, 6, 7)]
        assert result.steps[0].summary["failed_items"] == 2
    else:
        assert "mini-batch 1: ValueError: cannot parse f003.txt" in result.failure
        assert "outcome: FAILED" in (tmp_path / "run/logs/job_result.txt").read_text()


NAMES = """
import os, time
from azureml_user.parallel_run import EntryScript

def run(mini_batch):
    time.sleep(0.05)
    return [f"{os.path.basename(p)} {EntryScript().agent_name}" for p in mini_batch]
"""


def test_embedded_cluster_names_nodes_and_processes_like_azure(tmp_path):
    make_files(tmp_path / "data", 12)
    job = write_job(
        tmp_path,
        NAMES,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra="resources:\n  instance_count: 2",
    )
    job.write_text(
        job.read_text().replace(
            "max_concurrency_per_instance: 2", "max_concurrency_per_instance: 1"
        )
    )
    result = run_job(job, run_dir=tmp_path / "run", echo=lambda s: None)
    assert result.ok, result.failure
    # instance_count x max_concurrency_per_instance = 2 worker processes, one per node
    stdout = tmp_path / "run/logs/user/stdout"
    assert sorted(str(p.relative_to(stdout)) for p in stdout.rglob("*.txt")) == [
        "node000/process000.stdout.txt",
        "node001/process000.stdout.txt",
    ]
    agents = {line.split()[1] for line in output_of(tmp_path / "run").read_text().splitlines()}
    assert agents == {"process000"}  # Azure's agent_name: the process, "processNNN"
    rows = list(
        csv.DictReader((tmp_path / "run/logs/sys/job_report/processed_mini-batches.csv").open())
    )
    assert {(r["Node"], r["Process"]) for r in rows} <= {
        ("node000", "process000"),
        ("node001", "process000"),
    }


def test_a_command_step_prepares_the_data_of_the_parallel_step(tmp_path, client):
    (tmp_path / "prep").mkdir()
    (tmp_path / "prep" / "make.py").write_text(
        "import os, sys\n"
        "out = sys.argv[sys.argv.index('--out') + 1]\n"
        "os.makedirs(out, exist_ok=True)\n"
        "for i in range(int(sys.argv[sys.argv.index('--n') + 1])):\n"
        "    open(os.path.join(out, f'g{i}.txt'), 'w').write(str(i * i))\n"
    )
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(
        "def run(mini_batch):\n    return [open(p).read() for p in mini_batch]\n"
    )
    job = tmp_path / "pipeline.yml"
    job.write_text(
        """\
type: pipeline
inputs:
  n: 5
jobs:
  score:
    type: parallel
    inputs:
      data: ${{parent.jobs.prep.outputs.data}}
    outputs:
      result: {type: uri_file}
    input_data: ${{inputs.data}}
    mini_batch_size: "2"
    task:
      type: run_function
      code: ./code
      entry_script: score.py
      append_row_to: ${{outputs.result}}
  prep:
    type: command
    code: ./prep
    command: python make.py --out ${{outputs.data}} --n ${{inputs.n}}
    inputs:
      n: ${{parent.inputs.n}}
    outputs:
      data: {type: uri_folder}
"""
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == ["0", "1", "4", "9", "16"]
    assert result.outputs["prep.data"] == str(tmp_path / "run/outputs/prep/data")


def test_a_failing_command_step_fails_the_job_and_points_at_its_log(tmp_path, client):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    job = tmp_path / "pipeline.yml"
    job.write_text(
        """\
type: pipeline
jobs:
  prep:
    type: command
    code: ./code
    command: python -c "import sys; print('no data today', file=sys.stderr); sys.exit(3)"
    outputs:
      data: {type: uri_folder}
  score:
    type: parallel
    inputs:
      data: ${{parent.jobs.prep.outputs.data}}
    input_data: ${{inputs.data}}
    task:
      type: run_function
      code: ./code
      entry_script: score.py
"""
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert not result.ok
    assert "command step prep exited with code 3" in result.failure
    assert "its last line on stderr: no data today" in result.failure
    log = tmp_path / "run/logs/steps/prep/stderr.txt"
    assert str(log) in result.failure and "no data today" in log.read_text()
    assert "no room left" not in result.failure
    assert result.steps == []  # the parallel step did not run


def test_a_command_step_that_fills_its_outputs_disk_says_so(tmp_path, client):
    """A command that fails because its output's disk is full: the message says that disk
    has no room left and how to continue, beside the command's last line on stderr."""
    from conftest import tmpfs

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "make.py").write_text(
        "import os, sys\n"
        "with open(os.path.join(sys.argv[1], 'big.bin'), 'wb') as f:\n"
        "    f.write(b'x' * 4_000_000)\n"
    )
    job = tmp_path / "job.yml"
    with tmpfs(tmp_path / "small", "size=256k") as small:
        job.write_text(
            f"""\
type: command
code: ./code
command: python make.py ${{{{outputs.data}}}}
outputs:
  data: {{type: uri_folder, path: {small}}}
"""
        )
        result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert not result.ok
    assert "exited with code 1; its last line on stderr: OSError: [Errno 28]" in result.failure
    assert f"The disk of {small} has no room left" in result.failure
    assert f"continue with: daskprs run --resume {tmp_path / 'run'}" in result.failure


def test_a_command_step_that_failed_reruns_in_empty_outputs_of_the_run_directory(tmp_path):
    """What a failed command wrote in the outputs the run directory holds is removed before
    a resume runs it again; an output with a path of its own is the user's, left as is."""
    from daskprs.api import resume_job

    (tmp_path / "code").mkdir()
    # fails the first time, after writing into both outputs
    (tmp_path / "code" / "make.py").write_text(
        "import os, sys\n"
        "for out in sys.argv[1:]:\n"
        "    open(os.path.join(out, f'from-{os.getpid()}'), 'w').close()\n"
        "if not os.path.exists('failed-once'):\n"
        "    open('failed-once', 'w').close()\n"
        "    sys.exit(1)\n"
    )
    job = tmp_path / "pipeline.yml"
    job.write_text(
        """\
type: pipeline
jobs:
  prep:
    type: command
    code: ./code
    command: python make.py ${{outputs.data}} ${{outputs.mine}}
    outputs:
      data: {type: uri_folder}
      mine: {type: uri_folder, path: ./mine}
"""
    )
    lines: list[str] = []
    first = run_job(job, run_dir=tmp_path / "run", echo=lines.append)
    assert not first.ok
    resumed = resume_job(tmp_path / "run", echo=lines.append)
    assert resumed.ok, resumed.failure
    assert len(list((tmp_path / "run/outputs/prep/data").iterdir())) == 1
    assert len(list((tmp_path / "mine").iterdir())) == 2
    assert any("runs again in empty output folders" in line for line in lines), lines


LITTERING = """
import os, shutil, time

def run(mini_batch):
    # a scratch file in the working folder; one mini-batch deletes the folder itself, one
    # is killed on its timeout: neither may leave a folder behind
    with open("scratch.bin", "wb") as f:
        f.write(b"x" * 100_000)
    name = os.path.basename(mini_batch[0])
    if name == "f001.txt":
        shutil.rmtree(os.getcwd())
    if name == "f002.txt" and not os.path.exists(os.environ["KILLED_ONCE"]):
        open(os.environ["KILLED_ONCE"], "x").close()
        time.sleep(3600)
    return [name]
"""


def test_the_entry_scripts_working_folders_are_removed_when_the_step_ends(tmp_path, monkeypatch):
    """Each process works in a private temporary folder; what scripts leave there (here 100 kB
    a mini-batch) went on piling up in the temporary folder run after run. The folders are
    removed when the step's processes end, also one whose process was killed on its timeout
    and the one a run() made after deleting its own."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    make_files(tmp_path / "data", 4)
    job = write_job(
        tmp_path,
        LITTERING,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=(
            f"environment_variables:\n  KILLED_ONCE: {tmp_path / 'killed'}\n"
            "retry_settings:\n  max_retries: 2\n  timeout: 3\n"
        ),
    )
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR read again by this process
    result = run_job(job, run_dir=tmp_path / "run", workers=2, echo=lambda s: None)
    assert result.ok, result.failure
    assert (tmp_path / "killed").exists()  # a process was killed on its timeout
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(4)
    ]
    assert [p.name for p in scratch.iterdir() if p.name.startswith("daskprs-")] == []
