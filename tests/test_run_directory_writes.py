"""A run directory or output that the machine will not let daskprs write: a clear error that
says what to fix (never an internal error), nothing half-written left, and records that say
the run failed."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from conftest import can_hide_folders, make_files, tmpfs, write_job

from daskprs.api import resume_job, run_job
from daskprs.errors import (
    JobFailed,
    ResumeRefused,
    RunRecordUnreadable,
    StorageError,
    UserInputError,
)
from daskprs.rundir import RunDir, default_run_dir, write_json

ECHO = "import os\n\ndef run(mini_batch):\n    return [os.path.basename(p) for p in mini_batch]\n"


def _job(tmp_path):
    make_files(tmp_path / "data", 3)
    return write_job(tmp_path, ECHO, input_yaml="type: uri_folder\npath: ./data")


def _quiet(line: str) -> None:
    pass


def test_a_run_directory_under_a_file_is_a_clear_error_and_leaves_nothing(tmp_path):
    job = _job(tmp_path)
    (tmp_path / "taken").write_text("a file, not a folder\n")
    with pytest.raises(UserInputError, match=r"cannot write the run directory .*Give --run-dir"):
        run_job(job, run_dir=tmp_path / "taken" / "run", workers=1, echo=_quiet)
    assert (tmp_path / "taken").read_text() == "a file, not a folder\n"


@pytest.mark.parametrize("given", ["file", "mapping"])
def test_a_start_that_cannot_write_its_record_leaves_no_folder_it_made(
    tmp_path, monkeypatch, given
):
    """A default run directory whose record the disk refuses: neither it nor the
    ``daskprs-runs`` folder made for it stays, nor the job.yml written for a mapping."""
    import yaml

    job = _job(tmp_path)
    monkeypatch.chdir(tmp_path)
    kept = sorted(tmp_path.rglob("*"))

    def refuse(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", self.record)

    monkeypatch.setattr(RunDir, "write_record", refuse)
    doc = job if given == "file" else yaml.safe_load(job.read_text())
    with pytest.raises(UserInputError, match=r"cannot write the run directory .*Free some space"):
        run_job(doc, workers=1, echo=_quiet)
    assert not (tmp_path / "daskprs-runs").exists()
    assert sorted(tmp_path.rglob("*")) == kept


def test_a_run_directory_name_too_long_says_to_give_a_shorter_one(tmp_path):
    job = _job(tmp_path)
    with pytest.raises(UserInputError, match="Give a shorter --run-dir"):
        run_job(job, run_dir=tmp_path / ("r" * 300), workers=1, echo=_quiet)


def test_a_default_run_directory_name_fits_a_file_name_for_any_job_file_name(tmp_path):
    name = os.path.basename(default_run_dir("é" * 200))  # 400 bytes of stem
    assert len(name.encode()) <= 255 and name.startswith("é" * 100)


@pytest.mark.skipif(not can_hide_folders(), reason="needs mount namespaces (root)")
def test_a_read_only_run_directory_is_exit_2_and_a_clear_error(tmp_path):
    job = _job(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (
        f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && exec {sys.executable} -m daskprs run "
        f"{job} --workers 1 --run-dir {ro / 'run'}"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot write the run directory" in proc.stderr
    assert "Read-only file system" in proc.stderr and "internal error" not in proc.stderr


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    loop: list = []
    loop.append(loop)  # no JSON for it
    with pytest.raises(ValueError):
        write_json(str(tmp_path / "x.json"), loop)
    assert os.listdir(tmp_path) == []


def test_a_run_record_cut_short_is_named_and_the_folder_not_offered_for_resume(tmp_path):
    job = _job(tmp_path)
    run = tmp_path / "run"
    assert run_job(job, run_dir=run, workers=1, echo=_quiet).ok
    (run / "run.json").write_text("")  # a crash as it was written
    with pytest.raises(RunRecordUnreadable, match=r"cannot be read .*new run directory"):
        resume_job(run, workers=1, echo=_quiet)
    with pytest.raises(UserInputError, match="holds no run record that `--resume` could"):
        run_job(job, run_dir=run, workers=1, echo=_quiet)
    assert issubclass(RunRecordUnreadable, ResumeRefused)  # exit 2


def test_a_start_whose_first_write_failed_is_taken_over_by_the_next_run(tmp_path):
    job = _job(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json.tmp").write_text('{"job_f')  # a full disk at the first write
    notes: list[str] = []
    assert run_job(job, run_dir=run, workers=1, echo=notes.append).ok
    assert any("stopped before any step began" in n for n in notes)
    assert not (run / "run.json.tmp").exists()


def test_a_run_directory_held_by_another_driver_gets_no_write(tmp_path):
    job = _job(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from daskprs.rundir import RunDir; RunDir({str(run)!r}).lock(); "
         "print('held', flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(UserInputError):
            run_job(job, run_dir=run, workers=1, echo=_quiet)
        assert sorted(os.listdir(run)) == ["run.lock"]  # no run.json, no job.json of its own
    finally:
        holder.kill()
        holder.wait()


def test_an_internal_error_is_recorded_as_a_failure_not_a_success(tmp_path, monkeypatch):
    job = _job(tmp_path)

    def broken(self):
        raise RuntimeError("something daskprs did not expect")

    monkeypatch.setattr("daskprs.api.StepsRunner.run", broken)
    with pytest.raises(RuntimeError):
        run_job(job, run_dir=tmp_path / "run", workers=1, echo=_quiet)
    result = (tmp_path / "run/logs/job_result.txt").read_text()
    assert "outcome: FAILED" in result
    assert "internal error of daskprs: RuntimeError: something daskprs did not expect" in result
    assert RunDir(str(tmp_path / "run")).lock_owner() is None  # released


def test_a_disk_that_refuses_a_write_mid_run_says_which_and_how_to_continue(tmp_path, monkeypatch):
    job = _job(tmp_path)
    run = tmp_path / "run"

    def refused(self):
        raise OSError(errno.EROFS, "Read-only file system", str(run / "steps/score/ledger.jsonl"))

    monkeypatch.setattr("daskprs.api.StepsRunner.run", refused)
    with pytest.raises(StorageError, match=r"ledger\.jsonl: Read-only file system") as err:
        run_job(job, run_dir=run, workers=1, echo=_quiet)
    assert f"daskprs run --resume {run}" in str(err.value) and err.value.exit_code == 42
    assert "outcome: FAILED" in (run / "logs/job_result.txt").read_text()


def test_an_output_name_as_long_as_a_file_name_may_be_is_written(tmp_path):
    job = _job(tmp_path)
    name = "o" * 245 + ".txt"
    text = job.read_text().replace(
        "type: uri_file", f"type: uri_file\n        path: ./out/{name}", 1
    )
    assert text != job.read_text()
    job.write_text(text)
    (tmp_path / "out").mkdir()
    result = run_job(job, run_dir=tmp_path / "run", workers=1, echo=_quiet)
    assert result.ok, result.failure
    assert (tmp_path / "out" / name).read_text() == "f000.txt\nf001.txt\nf002.txt\n"
    assert os.listdir(tmp_path / "out") == [name]


def test_a_thread_limit_says_which_limit_and_how_to_continue(tmp_path, monkeypatch):
    job = _job(tmp_path)
    run = tmp_path / "run"

    def no_thread(self):
        raise RuntimeError("can't start new thread")  # what threading says at pids.max

    monkeypatch.setattr("daskprs.api.StepsRunner.run", no_thread)
    with pytest.raises(JobFailed, match="refused the driver a new thread") as err:
        run_job(job, run_dir=run, workers=1, echo=_quiet)
    assert f"daskprs run --resume {run}" in str(err.value)
    assert "outcome: FAILED" in (run / "logs/job_result.txt").read_text()


def test_a_write_that_finds_no_room_names_the_file_it_wrote(tmp_path):
    """A full disk's error from a write (not an open) names no file: the ledger's and
    replace_file's name theirs, so the run's message says which file (it named the run
    directory)."""
    from daskprs.inputs.batches import FileBatch
    from daskprs.inputs.plan import Plan
    from daskprs.inputs.planfile import write_plan
    from daskprs.observe.logs import write_jsonl
    from daskprs.results.ledger import Ledger
    from daskprs.rundir import replace_file

    with tmpfs(tmp_path / "small", "size=8k") as small:
        target = small / "overview.txt"
        with pytest.raises(OSError) as err:
            replace_file(str(target), "x" * 100_000)
        assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)
        assert list(small.iterdir()) == []
        for name, write in (
            (
                "plan.json",
                lambda p: write_plan(p, Plan("files", (FileBatch(0, ("x" * 9000,)),), "/d")),
            ),
            ("failed.jsonl", lambda p: write_jsonl(p, [{"x": "y" * 9000}])),
        ):
            with pytest.raises(OSError) as err:
                write(str(small / name))
            assert err.value.filename == str(small / name)
            assert list(small.iterdir()) == []  # no temporary file left
        ledger = Ledger(str(small / "ledger.jsonl"))
        with pytest.raises(OSError) as err:
            ledger.start_session({"step": "score", "pad": "x" * 100_000})
        assert err.value.errno == errno.ENOSPC
        assert err.value.filename == str(small / "ledger.jsonl")
        ledger.close()
