"""Resume after the driver was killed, rerun of failed mini-batches, refusal of changed runs."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import make_files, output_of, poll_for, report_and_ledger, write_job

from daskprs.cli import cli
from daskprs.results.ledger import ledger_tries, read_ledger

pytestmark = pytest.mark.slow

SLOW = """
import os, time

def run(mini_batch):
    time.sleep(0.2)
    return [os.path.basename(p) for p in mini_batch]
"""


def done_count(run_dir) -> int:
    ledger = run_dir / "steps/score/ledger.jsonl"
    if not ledger.exists():
        return 0
    return sum(1 for e in read_ledger(str(ledger)).entries.values() if e.state == "DONE")


def start_run(job, run_dir, output) -> subprocess.Popen:
    """`daskprs run` in its own session (so that its whole process group can be signalled)."""
    args = ["run", str(job), "--run-dir", str(run_dir), "--workers", "2"]
    return subprocess.Popen(
        [sys.executable, "-m", "daskprs", *args],
        cwd=job.parent,
        stdout=output,
        stderr=output,
        text=True,
        start_new_session=True,
        # SIGINT at its default even where pytest runs with it ignored (bash's background jobs)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_resume_after_the_driver_was_killed_runs_only_the_rest(tmp_path):
    make_files(tmp_path / "data", 40)
    job = write_job(
        tmp_path, SLOW, input_yaml="type: uri_folder\npath: ./data", mini_batch_size='"1"'
    )
    run_dir = tmp_path / "run"
    proc = start_run(job, run_dir, subprocess.DEVNULL)
    try:
        poll_for(lambda: done_count(run_dir) >= 15, timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
        proc.wait()
    before = done_count(run_dir)
    assert 15 <= before < 40
    assert not output_of(run_dir).exists()
    # as a kill between the ledger's write and the report's leaves it: the last rows lost,
    # one of them cut short
    report = run_dir / "logs/sys/job_report/processed_mini-batches.csv"
    with report.open("rb+") as f:
        f.truncate(report.stat().st_size - 40)
    result = CliRunner().invoke(cli, ["run", "--resume", str(run_dir), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert output_of(run_dir).read_text().splitlines() == [f"f{i:03d}.txt" for i in range(40)]
    rows = list(csv.DictReader((run_dir / "logs/sys/job_report/processed_mini-batches.csv").open()))
    ran_twice = [r for r in rows if r["Status"] == "RUN_DONE"]
    # every mini-batch committed once; the resumed session re-ran at most the unfinished ones
    # plus those the kill caught after their part was written but before the ledger said so
    ids = [int(r["Mini-batch Id"]) for r in ran_twice]
    assert set(ids) == set(range(40))
    assert len(ids) - 40 <= 2 * 2  # at most the tries in flight at the kill
    assert "resume: " in result.output
    rows, tries = report_and_ledger(run_dir)
    assert rows == tries


FLAKY_BY_FILE = """
import os

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if os.path.exists(os.environ["BROKEN"]) and "f004.txt" in names:
        raise ValueError("broken input f004")
    return names
"""


def test_rerun_failed_runs_only_the_failed_and_reassembles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_files(tmp_path / "data", 9)
    broken = tmp_path / "broken"
    broken.touch()
    job = write_job(
        tmp_path,
        FLAKY_BY_FILE,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"3"',
        extra=f"retry_settings:\n  max_retries: 0\nenvironment_variables:\n  BROKEN: {broken}",
    )
    runner = CliRunner()
    first = runner.invoke(cli, ["run", str(job), "--run-dir", "run", "--workers", "2"])
    assert first.exit_code == 0, first.output
    run_dir = tmp_path / "run"
    assert output_of(run_dir).read_text().splitlines() == [
        f"f{i:03d}.txt" for i in (0, 1, 2, 6, 7, 8)
    ]
    [failed] = [json.loads(x) for x in (run_dir / "failed_mini_batches.jsonl").open()]
    assert failed["id"] == 1
    broken.unlink()  # "fix" the input problem
    again = runner.invoke(cli, ["rerun-failed", str(run_dir), "--workers", "1"])
    assert again.exit_code == 0, again.output
    assert "rerun-failed: 1 of 3 mini-batches to run" in again.output
    assert output_of(run_dir).read_text().splitlines() == [f"f{i:03d}.txt" for i in range(9)]
    assert (run_dir / "failed_mini_batches.jsonl").read_text() == ""
    # a resume of a finished run has nothing to do and keeps the output
    done = runner.invoke(cli, ["run", "--resume", str(run_dir)])
    assert done.exit_code == 0, done.output
    assert "0 of 3 mini-batches to run" in done.output
    assert output_of(run_dir).read_text().splitlines() == [f"f{i:03d}.txt" for i in range(9)]


def test_resume_refuses_a_changed_job_or_input_unless_forced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_files(tmp_path / "data", 4)
    job = write_job(tmp_path, SLOW, input_yaml="type: uri_folder\npath: ./data")
    runner = CliRunner()
    assert (
        runner.invoke(cli, ["run", str(job), "--run-dir", "run", "--workers", "1"]).exit_code == 0
    )
    job.write_text(job.read_text().replace('mini_batch_size: "2"', 'mini_batch_size: "1"'))
    refused = runner.invoke(cli, ["run", "--resume", "run"])
    assert refused.exit_code == 2
    assert "mini_batch_size" in refused.output and "--force" in refused.output
    refused = runner.invoke(cli, ["rerun-failed", "run"])
    assert refused.exit_code == 2 and "add --force" not in refused.output
    assert "then rerun the failed mini-batches" in " ".join(refused.output.split())
    job.write_text(job.read_text().replace('mini_batch_size: "1"', 'mini_batch_size: "2"'))
    make_files(tmp_path / "data", 5)  # one more file in the input
    refused = runner.invoke(cli, ["run", "--resume", "run"])
    assert refused.exit_code == 2
    assert "input of step score" in refused.output and "2 -> 3 mini-batches" in refused.output
    # cut otherwise, the mini-batches done so far cannot be kept: the message says what
    # --force will do
    assert "add --force to continue (the step starts over: every mini-batch runs" in " ".join(
        refused.output.split()
    )
    # rerun-failed takes no --force: it names the command that accepts the change
    refused = runner.invoke(cli, ["rerun-failed", "run"])
    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert "add --force" not in said
    assert f"accept it with `daskprs run --resume {tmp_path / 'run'} --force`" in said
    forced = runner.invoke(cli, ["run", "--resume", "run", "--force", "--workers", "1"])
    assert forced.exit_code == 0, forced.output
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt" for i in range(5)
    ]
    missing = runner.invoke(cli, ["run", "--resume", str(tmp_path / "data")])
    assert missing.exit_code == 2
    assert "not a daskprs run directory" in missing.output


MARKED = """
import os, time

def run(mini_batch):
    open(os.path.join(os.environ["MARKS"], str(os.getpid())), "a").close()
    time.sleep(0.2)
    return [os.path.basename(p) for p in mini_batch]
"""


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_exits_130_keeps_work_and_says_how_to_resume(tmp_path, sig):
    from conftest import pid_alive

    make_files(tmp_path / "data", 30)
    marks = tmp_path / "marks"
    marks.mkdir()
    job = write_job(
        tmp_path,
        MARKED,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  MARKS: {marks}",
    )
    run_dir = tmp_path / "run"
    proc = start_run(job, run_dir, subprocess.PIPE)
    try:
        poll_for(lambda: done_count(run_dir) >= 5, timeout=120)
        started = descendants(proc.pid)  # the Dask workers and the entry-script processes
        proc.send_signal(sig)  # to the driver only
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert f"daskprs run --resume {run_dir}" in err
    assert "Traceback" not in err
    assert "interrupted" in (run_dir / "logs/job_result.txt").read_text()
    # nothing left running: workers, their entry-script processes (in sessions of their own)
    scripts = [int(p.name) for p in marks.iterdir()]
    assert scripts and started
    for pid in {*started, *scripts}:
        poll_for(lambda pid=pid: not pid_alive(pid), timeout=30)
    # the ledger is consistent: every mini-batch it calls done has its committed part
    ledger = read_ledger(str(run_dir / "steps/score/ledger.jsonl"))
    states = {e.state for e in ledger.entries.values()}
    assert states <= {"DONE", "CANCELLED", "PENDING"}, states
    done = [e for e in ledger.entries.values() if e.state == "DONE"]
    assert len(done) >= 5 and all(e.part and os.path.isfile(e.part) for e in done)
    result = CliRunner().invoke(cli, ["run", "--resume", str(run_dir), "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert output_of(run_dir).read_text().splitlines() == [f"f{i:03d}.txt" for i in range(30)]
    rows = list(csv.DictReader((run_dir / "logs/sys/job_report/processed_mini-batches.csv").open()))
    ids = [int(r["Mini-batch Id"]) for r in rows if r["Status"] == "RUN_DONE"]
    kept = {mb for mb, e in ledger.entries.items() if e.state == "DONE"}
    assert all(ids.count(mb) <= 1 for mb in kept)  # what was committed did not run again


ECHO_NAMES = """
import os

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def _step_yaml(
    name: str,
    data: str,
    script: str,
    *,
    output: str = "uri_file",
    task: str = "      append_row_to: ${{outputs.result}}\n",
    extra: str = "",
) -> str:
    """A parallel step of one file a mini-batch, appending its rows to its output: ``task``
    (the task's last lines) says otherwise, ``extra`` adds fields to the step."""
    return (
        f"  {name}:\n    type: parallel\n    inputs:\n      data: {data}\n"
        f"    outputs:\n      result: {{type: {output}}}\n    input_data: ${{{{inputs.data}}}}\n"
        f'    mini_batch_size: "1"\n{extra}    task:\n      type: run_function\n'
        f"      code: ./code\n      entry_script: {script}\n{task}"
    )


TWO_STEPS = (
    "type: pipeline\njobs:\n"
    + _step_yaml("score", "{type: uri_folder, path: ./data}", "names.py")
    + _step_yaml("count", "${{parent.jobs.score.outputs.result}}", "lines.py")
)


def _two_step_job(tmp_path):
    make_files(tmp_path / "data", 3)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "names.py").write_text(ECHO_NAMES)
    (tmp_path / "code" / "lines.py").write_text(
        "def run(mini_batch):\n    return [len(open(p).read().split()) for p in mini_batch]\n"
    )
    (tmp_path / "job.yml").write_text(TWO_STEPS)
    return tmp_path / "job.yml"


def test_a_pipeline_killed_in_its_second_step_is_resumed(tmp_path):
    """The first step, all done, keeps its output as it is (it is the second step's input,
    fingerprinted when the run started): the resume runs the second step's rest, not refused
    as if the input had changed."""
    from daskprs.api import resume_job, run_job
    from daskprs.results.ledger import snapshot_path

    job = _two_step_job(tmp_path)
    run = tmp_path / "run"
    assert run_job(job, run_dir=run, workers=1, echo=lambda s: None).ok
    first = run / "outputs/score/result/parallel_run_step.txt"
    written = first.stat().st_mtime_ns
    # the driver was killed as the second step began: its ledger holds its header alone
    ledger = run / "steps/count/ledger.jsonl"
    ledger.write_bytes(ledger.read_bytes().splitlines(keepends=True)[0])
    os.unlink(snapshot_path(str(ledger)))
    (run / "outputs/count/result/parallel_run_step.txt").unlink()
    again = resume_job(run, workers=1, echo=lambda s: None)
    assert again.ok, again.failure
    assert first.stat().st_mtime_ns == written  # not written again
    assert (run / "outputs/count/result/parallel_run_step.txt").read_text() == "3\n"
    # the second step's first tries, gone from its ledger, are gone from the report too
    rows, tries = report_and_ledger(run, "score", "count")
    assert rows == tries and len(rows) == 3 + 1


def test_a_done_step_whose_output_was_changed_writes_it_again(tmp_path):
    """A session that runs nothing keeps the output only while it is the one the step wrote:
    one changed (or removed) since is assembled again from the committed parts."""
    from daskprs.api import resume_job, run_job

    job = write_job(tmp_path, ECHO_NAMES, input_yaml="type: uri_folder\npath: ./data")
    make_files(tmp_path / "data", 3)
    run = tmp_path / "run"
    assert run_job(job, run_dir=run, workers=1, echo=lambda s: None).ok
    out = output_of(run)
    out.write_text("changed\n")
    assert resume_job(run, rerun_failed=True, workers=1, echo=lambda s: None).ok
    assert out.read_text() == "".join(f"f{i:03d}.txt\n" for i in range(3))
    out.unlink()
    assert resume_job(run, rerun_failed=True, workers=1, echo=lambda s: None).ok
    assert out.read_text() == "".join(f"f{i:03d}.txt\n" for i in range(3))


BROKEN_F001 = """
import os, shutil, sys

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    if os.path.exists(os.environ["BROKEN"]) and "f001.txt" in names:
        raise ValueError("broken input f001")
    if "--out" in sys.argv:  # a folder output: a copy of each file
        out = sys.argv[sys.argv.index("--out") + 1]
        for p in mini_batch:
            shutil.copy(p, os.path.join(out, os.path.basename(p)))
    return names
"""


def _failing_pipeline(tmp_path, folder: bool = False):
    """``score`` fails on f001 of 3 files while the file ``broken`` exists (within the
    thresholds), and ``count`` reads its output: the lines of its ``append_row_to`` file, or
    with ``folder`` the names of the files its script copies into its output folder."""
    make_files(tmp_path / "data", 3)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "score.py").write_text(BROKEN_F001)
    (tmp_path / "code" / "names.py").write_text(ECHO_NAMES)
    (tmp_path / "code" / "lines.py").write_text(
        "def run(mini_batch):\n    return [len(open(p).read().split()) for p in mini_batch]\n"
    )
    broken = tmp_path / "broken"
    broken.touch()
    retries = "    retry_settings: {max_retries: 0}\n"
    extra = retries + f"    environment_variables: {{BROKEN: {broken}}}\n"
    score = (
        _step_yaml(
            "score",
            "{type: uri_folder, path: ./data}",
            "score.py",
            output="uri_folder",
            task="      program_arguments: --out ${{outputs.result}}\n",
            extra=extra,
        )
        if folder
        else _step_yaml("score", "{type: uri_folder, path: ./data}", "score.py", extra=extra)
    )
    count = _step_yaml(
        "count", "${{parent.jobs.score.outputs.result}}", "names.py" if folder else "lines.py"
    )
    (tmp_path / "job.yml").write_text("type: pipeline\njobs:\n" + score + count)
    return tmp_path / "job.yml", broken


def _records_agree(run) -> None:
    """A finished run's records say what an uninterrupted run's would: succeeded, nothing
    failed, one row of the try report for each try of the ledgers, nothing left to run."""
    assert (run / "failed_mini_batches.jsonl").read_text() == ""
    assert "outcome: succeeded" in (run / "logs/job_result.txt").read_text()
    rows, tries = report_and_ledger(run, "score", "count")
    assert rows == tries
    status = CliRunner().invoke(cli, ["status", str(run)])
    assert "SUCCEEDED" in status.output and "next: nothing left to run" in status.output


def test_rerun_failed_runs_a_step_reading_the_rewritten_output_again(tmp_path):
    """rerun-failed rewrites score's output: count, which read the old one, runs again over
    the new one from scratch (not refused as if someone had changed its input)."""
    from daskprs.api import resume_job, run_job

    job, broken = _failing_pipeline(tmp_path)
    run = tmp_path / "run"
    first = run_job(job, run_dir=run, workers=1, echo=lambda s: None)
    assert first.ok and [f.id for s in first.steps for f in s.failed] == [1]
    counted = run / "outputs/count/result/parallel_run_step.txt"
    assert counted.read_text() == "2\n"
    broken.unlink()  # the fix
    said: list[str] = []
    again = resume_job(run, rerun_failed=True, workers=1, echo=said.append)
    assert again.ok, again.failure
    assert (run / "outputs/score/result/parallel_run_step.txt").read_text().split() == [
        f"f{i:03d}.txt" for i in range(3)
    ]
    assert counted.read_text() == "3\n"
    assert (
        "note: step count runs again: its input, the output of step score, was written "
        "again in this session" in said
    )
    # the old tries of count are set aside with its ledger: one try, in this session
    tries = ledger_tries(str(run / "steps/count/ledger.jsonl"))
    assert [(t.mb, t.try_no, str(t.status)) for t in tries] == [(0, 1, "RUN_DONE")]
    assert list((run / "steps/count").glob("ledger.jsonl.before-rerun-*"))
    _records_agree(run)


def test_a_step_reading_a_folder_output_runs_again_when_a_session_rewrites_it(tmp_path):
    """score's script writes files into its output folder, which count lists: a rerun that
    adds the file it failed on gives count one mini-batch more, and count starts over. A
    file someone else adds there is still refused (score wrote nothing in that session)."""
    from daskprs.api import resume_job, run_job
    from daskprs.errors import ResumeRefused

    job, broken = _failing_pipeline(tmp_path, folder=True)
    run = tmp_path / "run"
    assert run_job(job, run_dir=run, workers=1, echo=lambda s: None).ok
    counted = run / "outputs/count/result/parallel_run_step.txt"
    assert counted.read_text().split() == ["f000.txt", "f002.txt"]
    (run / "outputs/score/result/f009.txt").write_text("not score's\n")
    with pytest.raises(ResumeRefused, match=r"the input of step count \(.*\) changed"):
        resume_job(run, workers=1, echo=lambda s: None)
    (run / "outputs/score/result/f009.txt").unlink()
    broken.unlink()
    said: list[str] = []
    again = resume_job(run, rerun_failed=True, workers=1, echo=said.append)
    assert again.ok, again.failure
    assert counted.read_text().split() == [f"f{i:03d}.txt" for i in range(3)]
    assert any(line.startswith("note: step count runs again") for line in said)
    _records_agree(run)


def _copy(source, dest) -> None:
    """Copy a file or a folder over ``dest`` (what was there is removed)."""
    if dest.is_dir():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest)
    else:
        shutil.copy2(source, dest)


def _rerun_failed_unwriting(run, broken, unwritten) -> None:
    """Fix score (remove ``broken``) and rerun its failed mini-batches, then put back the
    files and folders ``unwritten`` names (relative to ``run``) as they were before."""
    from daskprs.api import resume_job

    kept = run.parent / "kept"
    for name in unwritten:
        _copy(run / name, kept / name)
    broken.unlink()
    assert resume_job(run, rerun_failed=True, workers=1, echo=lambda s: None).ok
    for name in unwritten:
        _copy(kept / name, run / name)
    shutil.rmtree(kept)


def test_resume_after_a_crash_in_the_step_a_later_step_reads_runs_that_step_again(tmp_path):
    """A rerun-failed killed once score's rerun was committed, before score's output was
    written: the resume writes it, and count, which the first session ran over the old one,
    starts over."""
    from daskprs.api import resume_job, run_job

    job, broken = _failing_pipeline(tmp_path)
    run = tmp_path / "run"
    assert run_job(job, run_dir=run, workers=1, echo=lambda s: None).ok
    # what a driver killed before writing score's output had not written yet: score's output
    # and its record, everything of count, the run record (count's input fingerprint)
    unwritten = ("outputs/score", "steps/score/output.json", "steps/count", "outputs/count")
    _rerun_failed_unwriting(run, broken, (*unwritten, "run.json"))
    counted = run / "outputs/count/result/parallel_run_step.txt"
    assert counted.read_text() == "2\n"  # over score's output without f001
    said: list[str] = []
    again = resume_job(run, workers=1, echo=said.append)
    assert again.ok, again.failure
    assert "[score] resume: 0 of 3 mini-batches to run" in said
    assert counted.read_text() == "3\n"
    assert any(line.startswith("note: step count runs again") for line in said)
    _records_agree(run)


def test_a_step_interrupted_before_it_ran_over_the_rewritten_output_runs_again(tmp_path):
    """Ctrl-C as count begins, once rerun-failed wrote score's output: the run record keeps
    that count has to run again, and the resume, with nothing to run in score, runs it over
    score's new output from scratch."""
    from daskprs.api import resume_job, run_job

    job, broken = _failing_pipeline(tmp_path)
    run = tmp_path / "run"
    assert run_job(job, run_dir=run, workers=1, echo=lambda s: None).ok
    broken.unlink()

    def interrupt_at_count(line: str) -> None:
        if line.startswith("note: step count"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resume_job(run, rerun_failed=True, workers=1, echo=interrupt_at_count)
    counted = run / "outputs/count/result/parallel_run_step.txt"
    assert counted.read_text() == "2\n"
    said: list[str] = []
    again = resume_job(run, workers=1, echo=said.append)
    assert again.ok, again.failure
    assert "[score] resume: 0 of 3 mini-batches to run" in said
    assert counted.read_text() == "3\n"
    assert (
        "note: step count runs again: its input, the output of step score, was written "
        "again in an earlier session" in said
    )
    assert "rewritten" not in json.loads((run / "run.json").read_text())
    _records_agree(run)


def test_force_starts_over_a_step_whose_input_an_earlier_step_rewrote(tmp_path):
    """A run whose record does not say that score wrote count's input again (left so by an
    earlier daskprs, which refused count): the resume refuses count, and --force runs it
    again from scratch, not keeping its tries over score's old output."""
    from daskprs.api import resume_job, run_job
    from daskprs.errors import ResumeRefused

    job, broken = _failing_pipeline(tmp_path)
    run = tmp_path / "run"
    assert run_job(job, run_dir=run, workers=1, echo=lambda s: None).ok
    _rerun_failed_unwriting(run, broken, ("steps/count", "outputs/count", "run.json"))
    with pytest.raises(ResumeRefused, match=r"add --force to continue \(the step starts over: "):
        resume_job(run, workers=1, echo=lambda s: None)
    said: list[str] = []
    forced = resume_job(run, force=True, workers=1, echo=said.append)
    assert forced.ok, forced.failure
    assert (run / "outputs/count/result/parallel_run_step.txt").read_text() == "3\n"
    assert any(line.endswith("--force given: the step starts over") for line in said)
    _records_agree(run)


TAGS = """
import os

def run(mini_batch):
    with open(os.environ["MODEL"]) as f:
        lines = len(f.read().split())
    return [f"{os.path.basename(p)} {lines}" for p in mini_batch]
"""


def test_a_step_reading_a_rewritten_output_as_a_side_input_runs_again(tmp_path):
    """``tag`` splits its own data, and reads score's output as a side input (a model, a
    lookup): not fingerprinted, so when rerun-failed writes that output again, tag runs again
    over it, from scratch, as an uninterrupted run would."""
    from daskprs.api import resume_job, run_job

    job, broken = _failing_pipeline(tmp_path)
    (tmp_path / "code" / "tags.py").write_text(TAGS)
    tag = (
        "  tag:\n    type: parallel\n    inputs:\n      data: {type: uri_folder, path: ./data}\n"
        "      model: ${{parent.jobs.score.outputs.result}}\n"
        "    outputs:\n      result: {type: uri_file}\n    input_data: ${{inputs.data}}\n"
        '    mini_batch_size: "1"\n    environment_variables:\n      MODEL: ${{inputs.model}}\n'
        "    task:\n      type: run_function\n      code: ./code\n      entry_script: tags.py\n"
        "      append_row_to: ${{outputs.result}}\n"
    )
    job.write_text(job.read_text() + tag)
    run = tmp_path / "run"
    assert run_job(job, run_dir=run, workers=1, echo=lambda s: None).ok
    tagged = run / "outputs/tag/result/parallel_run_step.txt"
    assert tagged.read_text().splitlines() == [f"f{i:03d}.txt 2" for i in range(3)]
    broken.unlink()  # the fix
    said: list[str] = []
    assert resume_job(run, rerun_failed=True, workers=1, echo=said.append).ok
    assert tagged.read_text().splitlines() == [f"f{i:03d}.txt 3" for i in range(3)]
    assert any(line.startswith("note: step tag runs again") for line in said)
