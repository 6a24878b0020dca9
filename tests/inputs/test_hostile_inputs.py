"""Inputs that turn against the job: entries the listing cannot examine, files rewritten while
the job runs, empty files."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from conftest import output_of, write_job

from daskprs.api import resume_job, run_job
from daskprs.errors import PlanningError
from daskprs.inputs import listing
from daskprs.inputs.batches import BatchLoadError, FileBatch
from daskprs.inputs.plan import plan_input
from daskprs.inputs.planfile import decode_plan, encode_plan, read_plan
from daskprs.inputs.readers import load_batch
from daskprs.job.model import DataInput, MiniBatchSize
from daskprs.rundir import RunDir


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def folder_input(path: Path) -> DataInput:
    return DataInput("data", "uri_folder", str(path), "ro_mount")


# --------------------------------------------------------------------------------------------
# The listing: an entry that cannot be examined is left out alone, and named
# --------------------------------------------------------------------------------------------


def test_a_link_to_itself_is_left_out_alone_and_named(tmp_path, caplog):
    """``ln -s self in/sub/self``: every stat of it fails with ELOOP; the files beside it and
    the folder around it stay in the input."""
    caplog.set_level("DEBUG", logger="daskprs")
    touch(tmp_path / "in" / "b.txt")
    touch(tmp_path / "in" / "sub" / "a.txt")
    touch(tmp_path / "in" / "sub" / "z.txt")
    (tmp_path / "in" / "sub" / "self").symlink_to("self")
    plan = plan_input(folder_input(tmp_path / "in"), None)
    assert [f for b in plan.batches for f in b.files] == [
        str(tmp_path / "in" / n) for n in ("b.txt", "sub/a.txt", "sub/z.txt")
    ]
    [note] = plan.notes
    assert note.startswith(f"{tmp_path / 'in' / 'sub' / 'self'}: left out of the input")
    assert "ELOOP" in note and "move it out of the input" in note
    assert decode_plan(encode_plan(plan)).notes == plan.notes  # saved in plan.json
    assert note in caplog.text  # and in the run's log


def _not_files(folder: Path) -> list[Path]:
    """A named pipe, a socket and a link to the pipe in ``folder``: entries that are no
    files of data (opening the pipe would block)."""
    import socket

    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "pipe.txt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "sock"))
    sock.close()
    (folder / "to-pipe").symlink_to(folder / "pipe.txt")
    return [folder / "pipe.txt", folder / "sock", folder / "to-pipe"]


def test_pipes_sockets_and_links_to_them_are_left_out_of_a_listing_in_one_note(tmp_path, caplog):
    caplog.set_level("DEBUG", logger="daskprs")
    touch(tmp_path / "in" / "a.txt")
    odd = _not_files(tmp_path / "in" / "sub")
    plan = plan_input(folder_input(tmp_path / "in"), None)
    assert [f for b in plan.batches for f in b.files] == [str(tmp_path / "in" / "a.txt")]
    [note] = plan.notes
    assert note.startswith("3 entries left out of the input: not a regular file (a named pipe")
    assert all(str(p) in note for p in odd) and "move them out of the input" in note
    assert note in caplog.text


def test_a_run_shows_what_its_listing_left_out_once(tmp_path):
    """The note of an entry left out is a "note:" line of the run; it was shown a second time
    as a WARNING of the log."""
    import subprocess
    import sys

    from daskprs.testing import write_job

    touch(tmp_path / "data" / "a.txt")
    os.mkfifo(tmp_path / "data" / "pipe.txt")
    job = write_job(
        tmp_path,
        "def run(mini_batch):\n    return mini_batch\n",
        input_yaml="type: uri_folder\npath: ./data",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "daskprs", "run", str(job), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("1 entry left out of the input") == 1, proc.stderr
    assert "note: 1 entry left out of the input" in proc.stderr


def test_a_pipe_is_left_out_of_an_fsspec_listing_too(tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    class Listed(LocalFileSystem):  # ls overridden: listed through fsspec's find
        cachable = False

        def ls(self, path, detail=False, **kwargs):
            return super().ls(path, detail=detail, **kwargs)

    touch(tmp_path / "in" / "a.txt")
    os.mkfifo(tmp_path / "in" / "pipe.txt")
    found = listing.list_input(folder_input(tmp_path / "in"), listing.Storage(None, Listed()))
    assert [f.rel for f in found.files] == ["a.txt"]
    assert len(found.skipped) == 1 and "1 entry left out" in found.skipped[0]
    assert str(tmp_path / "in" / "pipe.txt") in found.skipped[0]


def test_a_folder_of_pipes_only_or_a_pipe_as_the_input_file_is_a_planning_error(tmp_path):
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(PlanningError, match=r"pipe\.txt: not a regular file"):
        plan_input(DataInput("data", "uri_file", str(tmp_path / "pipe.txt"), "ro_mount"), None)
    (tmp_path / "in").mkdir()
    os.mkfifo(tmp_path / "in" / "pipe.txt")
    with pytest.raises(PlanningError, match="no file of the folder could be listed: 1 entry"):
        plan_input(folder_input(tmp_path / "in"), None)


def test_a_pipe_in_a_plan_fails_its_load_saying_what_it_is_without_opening_it(tmp_path):
    """A plan made before pipes were left out lists one: reading it says what it is (it is
    not missing) and never opens it (that would wait for a writer)."""
    os.mkfifo(tmp_path / "pipe.txt")
    with pytest.raises(BatchLoadError, match=r"pipe\.txt: not a regular file"):
        load_batch(FileBatch(0, (str(tmp_path / "pipe.txt"),)), cache_dir=str(tmp_path))


READ = """
import os

def run(mini_batch):
    return [os.path.basename(p) + " " + str(len(open(p, "rb").read())) for p in mini_batch]
"""


@pytest.mark.slow
def test_a_job_whose_input_holds_a_pipe_runs_its_files_and_notes_the_pipe(tmp_path, client):
    for name in ("a.txt", "b.txt"):
        touch(tmp_path / "data" / name)
    os.mkfifo(tmp_path / "data" / "pipe.txt")
    job = write_job(
        tmp_path, READ, input_yaml="type: uri_folder\npath: ./data", mini_batch_size='"1"'
    )
    lines: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lines.append)
    assert result.ok, result.failure
    assert result.steps[0].summary["total"] == 2
    assert output_of(tmp_path / "run").read_text() == "a.txt 1\nb.txt 1\n"
    pipe = tmp_path / "data" / "pipe.txt"
    assert any(line.startswith("note: 1 entry left out") and str(pipe) in line for line in lines)


def _scandir_failing_for(monkeypatch, where: Path, fail_after: int | None = None):
    """``os.scandir`` as the listing sees it, failing for the folder ``where`` only: at once
    (PermissionError, as ``chmod 000`` gives a user that is not root: the tests run as root
    here, where ``chmod 000`` does not stop reading), or with EIO after ``fail_after``
    entries."""
    real = os.scandir

    class Failing:
        def __init__(self, path):
            self.it = real(path)
            self.given = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.it.close()

        def __iter__(self):
            return self

        def __next__(self):
            if self.given == fail_after:
                raise OSError(errno.EIO, os.strerror(errno.EIO), str(where))
            self.given += 1
            return next(self.it)

    def scandir(path="."):
        if os.fspath(path) != str(where):
            return real(path)
        if fail_after is None:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(where))
        return Failing(path)

    monkeypatch.setattr(listing.os, "scandir", scandir)


def test_a_folder_that_cannot_be_read_is_left_out_alone_and_named(tmp_path, monkeypatch):
    touch(tmp_path / "in" / "a.txt")
    touch(tmp_path / "in" / "locked" / "secret.txt")
    touch(tmp_path / "in" / "locked2" / "deeper" / "s.txt")
    touch(tmp_path / "in" / "open" / "b.txt")
    _scandir_failing_for(monkeypatch, tmp_path / "in" / "locked")
    plan = plan_input(folder_input(tmp_path / "in"), None)
    assert [f for b in plan.batches for f in b.files] == [
        str(tmp_path / "in" / n) for n in ("a.txt", "locked2/deeper/s.txt", "open/b.txt")
    ]
    [note] = plan.notes
    assert note.startswith(
        f"{tmp_path / 'in' / 'locked'}: folder left out of the input: it cannot be listed"
    )
    assert "EACCES" in note and "permissions" in note


def test_a_listing_that_fails_part_way_keeps_what_it_listed(tmp_path, monkeypatch):
    for name in ("a.txt", "b.txt", "c.txt"):
        touch(tmp_path / "in" / "sub" / name)
    touch(tmp_path / "in" / "top.txt")
    _scandir_failing_for(monkeypatch, tmp_path / "in" / "sub", fail_after=2)
    plan = plan_input(folder_input(tmp_path / "in"), None)
    files = [f for b in plan.batches for f in b.files]
    assert len(files) == 3 and str(tmp_path / "in" / "top.txt") in files
    [note] = plan.notes
    assert note.startswith(f"{tmp_path / 'in' / 'sub'}: listing this folder failed part-way")
    assert "EIO" in note


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 folder all the same")
def test_a_chmod_000_folder_is_left_out_alone_and_named(tmp_path):
    touch(tmp_path / "in" / "a.txt")
    touch(tmp_path / "in" / "locked" / "secret.txt")
    (tmp_path / "in" / "locked").chmod(0)
    try:
        plan = plan_input(folder_input(tmp_path / "in"), None)
    finally:
        (tmp_path / "in" / "locked").chmod(0o755)
    assert [f for b in plan.batches for f in b.files] == [str(tmp_path / "in" / "a.txt")]
    [note] = plan.notes
    assert "locked: folder left out of the input" in note


# --------------------------------------------------------------------------------------------
# A file rewritten after planning: its pieces are not read, and say why
# --------------------------------------------------------------------------------------------


def _table(folder: Path, rows: int = 300, name: str = "data.csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id,value,name", *(f"{i},{i * 0.5},n{i}" for i in range(rows))]
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    (folder / "MLTable").write_text(
        "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited:\n"
        "      delimiter: ','\n      header: all_files_same_headers\n"
    )
    return path


def _insert_rows_at_the_top(path: Path, n: int = 40) -> None:
    header, rest = path.read_text().split("\n", 1)
    new = "".join(f"{-i},{-i * 0.5},new{i}\n" for i in range(1, n + 1))
    path.write_text(f"{header}\n{new}{rest}")


def table_input(path: Path | str) -> DataInput:
    return DataInput("data", "mltable", str(path), None)  # type: ignore[arg-type]


def test_a_piece_of_a_file_rewritten_since_planning_is_not_read(tmp_path):
    csv = _table(tmp_path / "t")
    plan = plan_input(table_input(tmp_path / "t"), MiniBatchSize(1024, "bytes", "1kb"))
    assert len(plan.batches) > 2
    planned = csv.stat()
    assert load_batch(plan.batches[1], cache_dir=str(tmp_path)).shape[0] > 0  # unchanged: read
    _insert_rows_at_the_top(csv)
    with pytest.raises(BatchLoadError) as err:
        load_batch(plan.batches[1], cache_dir=str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{csv}: input changed since planning: ")
    assert f"planned {planned.st_size} bytes" in message
    assert f"found {csv.stat().st_size} bytes" in message
    assert "run the job anew" in message


def test_a_file_rewritten_while_its_range_is_read_is_not_used(tmp_path, monkeypatch):
    """The file is rewritten between the check before the read and the read itself (another
    process writes it in place): the bytes read belong to neither content, and the check after
    the read fails the mini-batch instead of letting them through."""
    from daskprs.inputs import tableread

    csv = _table(tmp_path / "t")
    plan = plan_input(table_input(tmp_path / "t"), MiniBatchSize(1024, "bytes", "1kb"))
    read = tableread.read_piece

    def rewritten_meanwhile(piece, *args):
        _insert_rows_at_the_top(csv)
        return read(piece, *args)

    monkeypatch.setattr(tableread, "read_piece", rewritten_meanwhile)
    with pytest.raises(BatchLoadError, match="input changed since planning"):
        load_batch(plan.batches[1], cache_dir=str(tmp_path))


def test_a_file_touched_since_planning_is_not_read_even_at_the_same_size(tmp_path):
    csv = _table(tmp_path / "t")
    plan = plan_input(table_input(tmp_path / "t"), None)
    text = csv.read_text()
    csv.write_text(text.replace("n1,", "x1,", 1))  # same size, other content
    os.utime(csv, (1_000_000_000, 1_000_000_000))
    with pytest.raises(BatchLoadError, match="input changed since planning") as err:
        load_batch(plan.batches[0], cache_dir=str(tmp_path))
    assert "modified 2001-09-09 01:46:40.000000 UTC" in str(err.value)  # what was found


def test_a_parquet_file_rewritten_since_planning_is_not_read(tmp_path):
    import pandas as pd

    (tmp_path / "t").mkdir()
    path = tmp_path / "t" / "p.parquet"
    pd.DataFrame({"id": range(100)}).to_parquet(path, row_group_size=10)
    (tmp_path / "t" / "MLTable").write_text(
        "paths:\n  - pattern: ./*.parquet\ntransformations:\n  - read_parquet: {}\n"
    )
    plan = plan_input(table_input(tmp_path / "t"), MiniBatchSize(20, "rows"))
    pd.DataFrame({"id": range(-50, 100)}).to_parquet(path, row_group_size=10)
    with pytest.raises(BatchLoadError, match=f"{path}: input changed since planning"):
        load_batch(plan.batches[2], cache_dir=str(tmp_path))


def test_a_file_gone_since_planning_is_named(tmp_path):
    csv = _table(tmp_path / "t")
    plan = plan_input(table_input(tmp_path / "t"), None)
    csv.unlink()
    with pytest.raises(BatchLoadError, match="file not found \\(it was listed when planning\\)"):
        load_batch(plan.batches[0], cache_dir=str(tmp_path))


def test_a_plan_written_without_sizes_and_times_reads_without_the_check(tmp_path):
    """plan.json of an older daskprs has no file_size or file_mtime: it still decodes, and its
    pieces are read as before (a resume checks the input against its fingerprint instead)."""
    csv = _table(tmp_path / "t")
    doc = json.loads(json.dumps(encode_plan(plan_input(table_input(tmp_path / "t"), None))))

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("file_size", "file_mtime")}
        return [strip(v) for v in value] if isinstance(value, list) else value

    old = decode_plan(strip(doc))
    [piece] = old.batches[0].pieces
    assert piece.file_size is None and piece.file_mtime is None
    os.utime(csv, (1_000_000_000, 1_000_000_000))  # touched: the new check would refuse it
    assert load_batch(old.batches[0], cache_dir=str(tmp_path)).shape == (300, 3)
    with pytest.raises(BatchLoadError, match="input changed since planning"):
        load_batch(decode_plan(doc).batches[0], cache_dir=str(tmp_path))


@pytest.mark.slow
def test_an_object_store_file_rewritten_since_planning_is_not_read(tmp_path, s3):
    """One metadata call checks it; not the listing cache, which in the process that planned
    still holds the planned size."""
    rows = "id,v\n" + "".join(f"{i},{i}\n" for i in range(300))
    s3.pipe("data/t/a.csv", rows.encode())
    s3.pipe(
        "data/t/MLTable",
        b"paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited: {}\n",
    )
    plan = plan_input(table_input("s3://data/t"), MiniBatchSize(512, "bytes", "512"))
    [piece] = plan.batches[1].pieces
    assert piece.file_size == len(rows) and piece.file_mtime is not None
    assert load_batch(plan.batches[1], cache_dir=str(tmp_path)).shape[0] > 0
    s3.pipe("data/t/a.csv", ("id,v\n-1,-1\n" + rows[5:]).encode())
    with pytest.raises(BatchLoadError) as err:
        load_batch(plan.batches[1], cache_dir=str(tmp_path))
    assert str(err.value).startswith(
        f"s3://data/t/a.csv: input changed since planning: planned {len(rows)} bytes"
    )
    assert f"found {len(rows) + 6} bytes" in str(err.value)


REWRITE_ON_FIRST_RUN = """
import os, time

def run(mini_batch, context):
    marks = os.environ["MARKS"]
    try:
        os.close(os.open(os.path.join(marks, "rewriter"), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        # not the first run(): its rows were read already; wait for the rewrite, so that
        # every mini-batch read after this one is read after the rewrite
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(marks, "rewritten")):
            assert time.monotonic() < deadline, "the first run() never rewrote the input"
            time.sleep(0.01)
    else:
        path = os.environ["CSV"]
        with open(path) as f:
            header, rest = f.read().split("\\n", 1)
        new = "".join(f"{-i},{-i * 0.5},new{i}\\n" for i in range(1, 41))
        with open(path, "w") as f:  # rows inserted at the top, in place
            f.write(f"{header}\\n{new}{rest}")
        open(os.path.join(marks, "rewritten"), "w").close()
    return [f"{context.minibatch_index} {i}" for i in mini_batch["id"]]
"""


@pytest.mark.slow
def test_an_input_rewritten_during_the_run_fails_its_later_mini_batches(tmp_path, client):
    """The first run() inserts rows at the top of the input CSV. Mini-batches read before that
    write their rows (the planned ones); every one read after fails, saying the input changed,
    instead of writing rows shifted by the insertion (missing, twice, cut mid-line)."""
    csv = _table(tmp_path / "t", rows=400)
    original = csv.read_bytes()
    (tmp_path / "marks").mkdir()
    job = write_job(
        tmp_path,
        REWRITE_ON_FIRST_RUN,
        input_yaml="type: mltable\npath: ./t",
        mini_batch_size='"1kb"',
        extra=f"environment_variables:\n  CSV: {csv}\n  MARKS: {tmp_path / 'marks'}",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert (tmp_path / "marks" / "rewritten").exists()
    step = result.steps[0]
    total = step.summary["total"]
    assert total >= 6
    failed = {f.id: f for f in step.failed}
    # at most two mini-batches (one per process) were read before the rewrite
    assert len(failed) >= total - 2 and step.summary["done"] == total - len(failed)
    for f in failed.values():
        assert f.status == "LOAD_ERROR", f
        assert f"{csv}: input changed since planning: planned {len(original)} bytes" in f.error
    # the mini-batches that ran wrote exactly their planned rows, from the original bytes
    plan = read_plan(RunDir(str(tmp_path / "run")).step("score").plan)
    expected = []
    for batch in plan.batches:
        if batch.index in failed:
            continue
        [piece] = batch.pieces
        lines = original[piece.start : piece.end].decode().splitlines()
        ids = [line.split(",")[0] for line in lines[1 if piece.skip_header else 0 :]]
        expected += [f"{batch.index} {i}" for i in ids]
    assert output_of(tmp_path / "run").read_text().splitlines() == expected


FAIL_MB_1_WHILE_MARKED = """
import os

def run(mini_batch, context):
    if context.minibatch_index == 1 and os.path.exists(os.environ["FAIL"]):
        raise RuntimeError("told to fail")
    return [f"{context.minibatch_index} {i}" for i in mini_batch["id"]]
"""


@pytest.mark.slow
def test_rerun_failed_with_force_on_a_touched_input_reads_it_and_keeps_what_is_done(
    tmp_path, client
):
    """The file's time changed, not its cuts: --force accepts it, keeps the done mini-batches
    and reads the failed one against the new size and time (not the planned ones, which would
    fail it with "input changed since planning")."""
    from daskprs.api import resume_job

    csv = _table(tmp_path / "t", rows=200)
    (tmp_path / "fail").touch()
    job = write_job(
        tmp_path,
        FAIL_MB_1_WHILE_MARKED,
        input_yaml="type: mltable\npath: ./t",
        mini_batch_size='"1kb"',
        extra="retry_settings:\n  max_retries: 0\n"
        f"environment_variables:\n  FAIL: {tmp_path / 'fail'}",
    )
    first = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert [f.id for f in first.steps[0].failed] == [1]
    total = first.steps[0].summary["total"]
    (tmp_path / "fail").unlink()
    os.utime(csv, (1_000_000_000, 1_000_000_000))
    lines: list[str] = []
    again = resume_job(
        tmp_path / "run", rerun_failed=True, force=True, client=client, echo=lines.append
    )
    assert again.ok and not again.steps[0].failed, again.failure
    assert f"[score] rerun-failed: 1 of {total} mini-batches to run" in lines
    ids = [line.split()[1] for line in output_of(tmp_path / "run").read_text().splitlines()]
    assert ids == [str(i) for i in range(200)]


# --------------------------------------------------------------------------------------------
# Empty files: an empty input makes an empty output
# --------------------------------------------------------------------------------------------

COUNT_ROWS = """
def run(mini_batch, context):
    return [f"{context.minibatch_index} {len(mini_batch)}"]
"""


@pytest.mark.slow
@pytest.mark.parametrize("files", [["a.csv"], ["a.csv", "b.csv", "c.csv"]])
def test_an_mltable_of_empty_csv_files_makes_an_empty_output(tmp_path, client, files):
    """As a file list whose run() returns [] does: the job succeeds, the append_row_to file
    is empty, and the plan's note names the empty files (it used to say "1 done", then fail
    with "no mini-batch succeeded")."""
    _table(tmp_path / "t")
    (tmp_path / "t" / "data.csv").unlink()
    for name in files:
        (tmp_path / "t" / name).write_bytes(b"")
    job = write_job(
        tmp_path, COUNT_ROWS, input_yaml="type: mltable\npath: ./t", mini_batch_size='"1mb"'
    )
    lines: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lines.append)
    assert result.ok, result.failure
    summary = result.steps[0].summary
    assert summary["done"] == summary["total"] == len(files) and summary["failed"] == 0
    assert output_of(tmp_path / "run").read_text() == ""
    notes = [line for line in lines if line.startswith("note: every input file is empty")]
    assert len(notes) == 1 and all(str(tmp_path / "t" / name) in notes[0] for name in files)
    assert lines[-1].startswith("job succeeded")


@pytest.mark.slow
def test_empty_csv_files_among_others_give_no_rows_and_are_named(tmp_path, client):
    _table(tmp_path / "t", rows=5, name="b.csv")
    (tmp_path / "t" / "a.csv").write_bytes(b"")
    job = write_job(
        tmp_path, COUNT_ROWS, input_yaml="type: mltable\npath: ./t", mini_batch_size='"1mb"'
    )
    lines: list[str] = []
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lines.append)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text() == "1 5\n"  # mini-batch 0 (a.csv): no rows
    assert f"note: 1 of 2 input files are empty (0 bytes): {tmp_path / 't' / 'a.csv'}" in lines


def test_an_input_folder_that_cannot_be_listed_is_a_planning_error_that_says_why(
    tmp_path, monkeypatch
):
    touch(tmp_path / "in" / "a.txt")
    _scandir_failing_for(monkeypatch, tmp_path / "in")
    with pytest.raises(PlanningError, match="no file of the folder could be listed: ") as err:
        plan_input(folder_input(tmp_path / "in"), None)
    assert "folder left out of the input: it cannot be listed (EACCES" in str(err.value)


@pytest.mark.slow
def test_rerun_failed_with_force_on_a_grown_input_starts_the_step_over(tmp_path, client):
    """Rows appended: the cuts changed, so --force starts the step over; the new session's
    tries never meet the claims and parts of the old one (same names)."""
    from daskprs.api import resume_job

    csv = _table(tmp_path / "t", rows=200)
    (tmp_path / "fail").touch()
    job = write_job(
        tmp_path,
        FAIL_MB_1_WHILE_MARKED,
        input_yaml="type: mltable\npath: ./t",
        mini_batch_size='"1kb"',
        extra="retry_settings:\n  max_retries: 0\n"
        f"environment_variables:\n  FAIL: {tmp_path / 'fail'}",
    )
    first = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert [f.id for f in first.steps[0].failed] == [1]
    (tmp_path / "fail").unlink()
    with open(csv, "a", encoding="utf-8") as f:
        f.writelines(f"{i},{i * 0.5},n{i}\n" for i in range(200, 260))
    again = resume_job(
        tmp_path / "run", rerun_failed=True, force=True, client=client, echo=lambda s: None
    )
    assert again.ok and not again.steps[0].failed, again.failure
    ids = [line.split()[1] for line in output_of(tmp_path / "run").read_text().splitlines()]
    assert ids == [str(i) for i in range(260)]


NAMES_READ = """
import os

def run(mini_batch):
    return [f"{os.path.basename(p)!a} {open(p, 'rb').read().decode()}" for p in mini_batch]
"""


def test_file_names_that_are_not_utf8_run_resume_and_are_reused(tmp_path):
    """A name the filesystem holds as bytes that are not UTF-8 (``bad\\xff``) is listed, read
    and digested as its bytes: the job runs (its planning used to end in a traceback), a
    resume finds the input unchanged, and a second run reuses the step."""
    data = tmp_path / "data"
    data.mkdir()
    for name in (b"a.txt", b"bad\xff.txt", "caf\u00e9".encode()):
        with open(os.path.join(os.fsencode(data), name), "wb") as f:
            f.write(b"%d" % len(name))
    job = write_job(
        tmp_path, NAMES_READ, input_yaml="type: uri_folder\npath: ./data", mini_batch_size='"1"'
    )
    result = run_job(job, run_dir=tmp_path / "runs" / "one", workers=1, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "runs" / "one").read_text() == (
        "'a.txt' 5\n'bad\\udcff.txt' 8\n'caf\\xe9' 5\n"
    )
    again = resume_job(tmp_path / "runs" / "one", workers=1, echo=lambda s: None)
    assert again.ok, again.failure
    lines: list[str] = []
    second = run_job(job, run_dir=tmp_path / "runs" / "two", workers=1, echo=lines.append)
    assert second.ok and any("reused" in line for line in lines), lines
