"""Where the run writes fills up or cannot be written: a clear error naming the path and what
to do, found as early as it can be; the partial output removed so the space comes back."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_files, output_of, tmpfs, write_job

pytestmark = pytest.mark.slow


MANY_ROWS = """
import os

def run(mini_batch):
    return [os.path.basename(p) + " " + "x" * 200 for p in mini_batch for _ in range(500)]
"""


def with_output(job: Path, folder: Path) -> Path:
    """The job with its output ``result`` at ``folder`` (an explicit path)."""
    text = job.read_text()
    default = "      result:\n        type: uri_file\n"
    assert default in text
    job.write_text(
        text.replace(default, f"      result:\n        type: uri_folder\n        path: {folder}\n")
    )
    return job


def daskprs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "daskprs", *args], capture_output=True, text=True, timeout=300
    )


def test_a_full_disk_under_the_output_is_one_clear_line_and_no_leftovers(tmp_path):
    make_files(tmp_path / "data", 6)
    with tmpfs(tmp_path / "small", "size=256k") as small:
        job = write_job(
            tmp_path, MANY_ROWS, input_yaml="type: uri_folder\npath: ./data", mini_batch_size='"1"'
        )
        with_output(job, small / "out")
        run_dir = tmp_path / "run"
        proc = daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir))
        assert proc.returncode == 42, proc.stderr
        assert "no space left on the device" in proc.stderr
        assert f"continue with: daskprs run --resume {run_dir}" in proc.stderr
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
        # nothing half-written is left taking the space
        assert [p.name for p in (small / "out").iterdir()] == []


def test_an_output_location_that_cannot_be_written_is_found_before_anything_runs(tmp_path):
    make_files(tmp_path / "data", 2)
    with tmpfs(tmp_path / "readonly", "ro,size=64k") as readonly:
        job = write_job(tmp_path, MANY_ROWS, input_yaml="type: uri_folder\npath: ./data")
        with_output(job, readonly / "out")
        proc = daskprs("run", str(job), "--run-dir", str(tmp_path / "run"))
        assert proc.returncode == 2, proc.stderr
        assert f"cannot write the output {readonly / 'out'}" in proc.stderr
        assert "cluster" not in proc.stderr  # found before any cluster started


BIG_ROWS = """
import os

def run(mini_batch):
    return [os.path.basename(p) + " " + "x" * 1000 for p in mini_batch for _ in range(150)]
"""


def test_an_output_past_the_file_size_limit_says_so_and_is_not_named_as_written(tmp_path):
    """EFBIG (FAT32's 4 GiB, ``ulimit -f``) is not a full disk: the message names the limit
    and its fixes, and the output that does not exist is not printed as the run's output."""
    make_files(tmp_path / "data", 20)
    job = write_job(
        tmp_path, BIG_ROWS, input_yaml="type: uri_folder\npath: ./data", mini_batch_size='"1"'
    )
    run_dir = tmp_path / "run"
    limit = 2 * 2**20  # each part is 150 kB, the output 3 MB

    def small_files() -> None:
        resource.setrlimit(
            resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
        )

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "daskprs",
            "run",
            str(job),
            "--workers",
            "1",
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,
    )
    assert proc.returncode == 42, proc.stderr
    assert "grew past the largest file allowed there (File too large)" in proc.stderr
    assert (
        "ulimit -f" in proc.stderr
        and f"continue with: daskprs run --resume {run_dir}" in proc.stderr
    )
    assert "no space left" not in proc.stderr and "Traceback" not in proc.stderr
    assert "output score.result:" not in proc.stdout + proc.stderr
    assert list((run_dir / "outputs/score/result").iterdir()) == []


LIMITED_PROCESS = """
import os
import resource

def init():
    # the entry-script process alone may not write files past LIMIT while the flag exists
    if os.path.exists(os.environ["LIMIT_FLAG"]):
        limit = int(os.environ["LIMIT"])
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

def run(mini_batch):
    return [os.path.basename(p) + " " + "x" * 200 for p in mini_batch for _ in range(200)]
"""


@pytest.mark.parametrize("limit", [20_000, 0])
def test_rows_an_entry_script_process_cannot_write_stop_the_step_without_using_a_try(
    tmp_path, limit
):
    """The disk under an entry-script process's part refuses its rows (here its file-size
    limit, as a full disk would): the step stops at once, saying which file and why, no try
    is used up and the process is not restarted; after the fix, --resume completes the job.
    With no room at all (``limit`` 0) its error log cannot be written either: that costs the
    log line, not the process."""
    from daskprs.results.ledger import ledger_tries

    make_files(tmp_path / "data", 4)
    flag = tmp_path / "limit"
    flag.touch()
    job = write_job(
        tmp_path,
        LIMITED_PROCESS,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  LIMIT_FLAG: {flag}\n  LIMIT: '{limit}'\n",
    )
    run_dir = tmp_path / "run"
    proc = daskprs("run", str(job), "--workers", "1", "--run-dir", str(run_dir))
    assert proc.returncode == 42, proc.stderr
    assert "grew past the largest file allowed there (File too large)" in proc.stderr
    assert (
        "while entry-script process node000/process000 wrote the rows of mini-batch 0; every "
        "mini-batch done is kept" in proc.stderr
    )
    assert f"continue with: daskprs run --resume {run_dir}" in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    # no try is on record (none failed, none used up), and the process lived on
    assert list(ledger_tries(str(run_dir / "steps/score/ledger.jsonl"))) == []
    errors = run_dir / "logs/user/error/node000/process000.txt"
    if limit:
        assert "mini-batch 0: " in errors.read_text()
        assert "grew past the largest file" in errors.read_text()
    assert not output_of(run_dir).exists()  # (only its hidden partial, for the resume)
    # the records say which budget stopped it, and status points to the resume
    assert "stopped by: storage" in (run_dir / "logs/job_result.txt").read_text()
    status = daskprs("status", str(run_dir))
    assert f"next: daskprs run --resume {run_dir}    (after making room" in status.stdout
    assert "before it ran" not in status.stdout and "with failures" not in status.stdout

    flag.unlink()
    proc = daskprs("run", "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    rows = output_of(run_dir).read_text().splitlines()
    assert [r.split()[0] for r in rows[::200]] == [f"f{i:03d}.txt" for i in range(4)]
    assert len(rows) == 800


@pytest.mark.parametrize(
    ("out_type", "where", "why"),
    [
        ("uri_folder", "data/f000.txt/out", "is a file, so no folder can be made inside it"),
        ("uri_file", "data/f000.txt/out.txt", "is a file, so no folder can be made inside it"),
        ("uri_folder", "data/f000.txt", "is a file, not a folder"),
        ("uri_file", "data", "is a folder, not a file"),
        ("uri_folder", "/proc/daskprs-nope/out", "/proc takes no new file or folder"),
    ],
)
def test_an_output_path_that_cannot_be_made_is_refused_by_validate_and_run(
    tmp_path, out_type, where, why
):
    """A file where the output's folder must be, or a file system that takes no folder (root
    passes every permission check): ``validate`` says so and ``run`` refuses before anything
    runs, exit 2 naming the output (it crashed as an internal error once the step started)."""
    make_files(tmp_path / "data", 2)
    job = write_job(tmp_path, MANY_ROWS, input_yaml="type: uri_folder\npath: ./data")
    text = job.read_text()
    default = "      result:\n        type: uri_file\n"
    path = where if where.startswith("/") else str(tmp_path / where)
    job.write_text(
        text.replace(default, f"      result:\n        type: {out_type}\n        path: {path}\n")
    )
    for args in (("validate", str(job)), ("run", str(job), "--run-dir", str(tmp_path / "run"))):
        proc = daskprs(*args)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"cannot write the output {path} (score.result): " in proc.stderr
        assert why in proc.stderr
        assert "Traceback" not in proc.stderr


ROWS_OF_FILE = """
import os, time

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    if name == "f002.txt":  # held until the test has made the disk refuse what follows
        while not os.path.exists(os.environ["GO"]):
            time.sleep(0.01)
    return [name + " " + "x" * 200 for _ in range(50)]
"""


def _rows_job(tmp_path: Path, n: int, go: Path) -> Path:
    """A job over ``n`` files, one a mini-batch, whose f002 waits for the file ``go``."""
    make_files(tmp_path / "data", n)
    return write_job(
        tmp_path,
        ROWS_OF_FILE,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        extra=f"environment_variables:\n  GO: {go}\n",
    )


def _rows(names) -> list[str]:
    return [f"{n} " + "x" * 200 for n in names for _ in range(50)]


def test_a_claims_folder_that_refuses_writes_stops_the_step_without_using_a_try(tmp_path):
    """The folder of the tries' claims turns read-only while the step runs: the step stops at
    once (exit 42) naming it and the fix, no try is used (it looped resubmitting tasks whose
    claim failed, at full CPU, until the progress timeout); --resume completes the job."""
    from daskprs.results.ledger import ledger_tries
    from daskprs.testing import poll_for

    go = tmp_path / "go"
    job = _rows_job(tmp_path, 6, go)
    run_dir = tmp_path / "run"
    claims = run_dir / "steps/score/claims"
    argv = ["run", str(job), "--workers", "1", "--run-dir", str(run_dir)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "daskprs", *argv],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll_for(lambda: any(claims.glob("00002.*")), timeout=120)  # f002 runs, held
        with tmpfs(claims, "ro,size=64k"):
            go.touch()
            _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 42, err
    assert f"{claims}/00003." in err
    assert ": Read-only file system while the worker claimed mini-batch 3; " in err
    assert "every mini-batch done is kept. Fix its permissions or its mount" in err
    assert f"continue with: daskprs run --resume {run_dir}" in err
    assert "Traceback" not in err and "internal error" not in err
    tried = list(ledger_tries(str(run_dir / "steps/score/ledger.jsonl")))
    assert [(t.mb, str(t.status)) for t in tried] == [(i, "RUN_DONE") for i in range(3)]

    proc = subprocess.run(
        [sys.executable, "-m", "daskprs", "run", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names = [f"f{i:03d}.txt" for i in range(6)]
    assert output_of(run_dir).read_text().splitlines() == _rows(names)


def test_a_full_staging_folder_stops_the_step_without_using_a_try(tmp_path):
    """Workers stage their rows in a folder whose disk fills up: the step stops (exit 42)
    naming it; the tries were counted PROCESS_DIED until their mini-batches FAILED, and the
    job 'succeeded' with a partial output. After the fix --resume completes the job."""
    from daskprs.results.ledger import ledger_tries

    (tmp_path / "go").touch()
    job = _rows_job(tmp_path, 12, tmp_path / "go")
    run_dir = tmp_path / "run"
    staging = tmp_path / "staging"
    with tmpfs(staging, "size=40k"):
        proc = daskprs(
            "run", str(job), "--workers", "1", "--run-dir", str(run_dir),
            "--staging", str(staging / "s"),
        )  # fmt: skip
    assert proc.returncode == 42, proc.stderr
    assert "no space left on the device of " in proc.stderr
    assert "were staged; every mini-batch done is kept. Free some space there" in proc.stderr
    tried = list(ledger_tries(str(run_dir / "steps/score/ledger.jsonl")))
    assert tried and all(str(t.status) == "RUN_DONE" for t in tried)  # none failed
    proc = daskprs("run", "--resume", str(run_dir), "--staging", str(staging / "s"))
    assert proc.returncode == 0, proc.stderr
    names = [f"f{i:03d}.txt" for i in range(12)]
    assert output_of(run_dir).read_text().splitlines() == _rows(names)


def test_a_reused_steps_copy_that_finds_no_room_stops_with_nothing_at_the_outputs_name(tmp_path):
    """A run that reuses an earlier run's step copies its output; past the file-size limit it
    was exit 1 ('internal error', a shutil.Error) with the copy cut short at the output's
    name. Now exit 42 naming the limit, nothing at that name; --resume completes the copy."""
    make_files(tmp_path / "data", 20)
    job = write_job(
        tmp_path, BIG_ROWS, input_yaml="type: uri_folder\npath: ./data", mini_batch_size='"1"'
    )
    first, second = tmp_path / "runs/first", tmp_path / "runs/second"
    assert daskprs("run", str(job), "--workers", "1", "--run-dir", str(first)).returncode == 0
    limit = 2 * 2**20  # the output is 3 MB

    def small_files() -> None:
        resource.setrlimit(
            resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
        )

    argv = [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", str(second)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    assert proc.returncode == 42, proc.stderr
    assert "reused" in proc.stderr
    assert "grew past the largest file allowed there (File too large)" in proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    assert not output_of(second).exists()
    assert daskprs("run", "--resume", str(second)).returncode == 0
    assert output_of(second).read_bytes() == output_of(first).read_bytes()
