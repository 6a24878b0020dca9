"""Output you can trust: Azure's format, settings overrides, summary-only jobs, and the same
bytes from many workers through retries, timeouts and deaths as from one clean worker."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_files, output_of, write_job

from daskprs.api import run_job
from daskprs.job.files import read_step_settings
from daskprs.results.formatting import format_rows, result_length


def test_format_rows_lists_and_dataframes():
    assert format_rows(["a", 1, 2.5, None]) == b"a\n1\n2.5\nNone\n"
    assert format_rows(("x",)) == b"x\n"
    assert format_rows([]) == b""
    df = pd.DataFrame({"a": [1, 2], "b": ["x y", "z"]})
    assert format_rows(df) == b'1 "x y"\n2 z\n'
    assert format_rows(df, {"sep": ",", "header": True}) == b"a,b\n1,x y\n2,z\n"
    assert format_rows(df.iloc[:0]) == b""
    assert result_length(df) == 2 and result_length([1]) == 1
    assert result_length(None) is None and result_length("ab") is None


def test_a_file_size_limit_is_told_apart_from_a_full_disk():
    import errno

    from daskprs.results.storage import no_space, storage_problem

    too_big = OSError(errno.EFBIG, "File too large", "/mnt/usb/out.txt")
    full = OSError(errno.ENOSPC, "No space left on device")
    assert no_space(too_big) and no_space(full)  # the run stops alike for both
    problem, fix = storage_problem(too_big, "/elsewhere")
    assert problem.startswith("/mnt/usb/out.txt grew past the largest file allowed there")
    assert "FAT32" in problem and "ulimit -f" in fix and "space" not in problem + fix
    problem, fix = storage_problem(full, "/run/out.txt")
    assert problem == "no space left on the device of /run/out.txt (No space left on device)"
    assert fix == "Free some space there"


def test_settings_file_is_read_and_bad_ones_are_named(tmp_path):
    assert read_step_settings(str(tmp_path)) == {}
    f = tmp_path / "parallel_run_step.settings.json"
    f.write_text(json.dumps({"append_row": {"pandas.DataFrame.to_csv": {"sep": ","}}}))
    assert read_step_settings(str(tmp_path)) == {"sep": ","}
    f.write_text("{not json")
    with pytest.raises(ValueError, match=r"parallel_run_step\.settings\.json"):
        read_step_settings(str(tmp_path))
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected an object"):
        read_step_settings(str(tmp_path))
    f.write_text(json.dumps({"append_row": {"pandas.DataFrame.to_csv": {"sepp": ","}}}))
    with pytest.raises(ValueError, match="no option 'sepp'; did you mean `sep`"):
        read_step_settings(str(tmp_path))


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"sep": "ab"}, '"delimiter" must be a 1-character string'),
        ({"encoding": "utf-9"}, "unknown encoding: utf-9"),
    ],
)
def test_a_settings_value_to_csv_refuses_is_named_before_the_job_runs(tmp_path, options, error):
    f = tmp_path / "parallel_run_step.settings.json"
    f.write_text(json.dumps({"append_row": {"pandas.DataFrame.to_csv": options}}))
    with pytest.raises(ValueError) as caught:
        read_step_settings(str(tmp_path))
    message = str(caught.value)
    assert str(f) in message and error in message
    assert "one-character separator" in message  # how to fix it


class _NoStr:
    def __str__(self):
        raise ValueError("no str")


def test_the_first_item_or_row_that_cannot_be_written_is_found():
    from daskprs.results.formatting import first_unwritable

    assert first_unwritable(["a", "b"]) is None
    assert first_unwritable([]) is None
    assert first_unwritable(["a", "b", _NoStr(), _NoStr()]) == 2
    assert first_unwritable(("a", "bad \udcff")) == 1
    df = pd.DataFrame({"text": [f"row {i}" for i in range(1000)]})
    df.loc[777, "text"] = "café"
    assert first_unwritable(df, {"encoding": "ascii"}) == 777
    assert first_unwritable(df) is None
    assert first_unwritable(df.iloc[:3], {"sep": "ab"}) == 0  # every row: the first


def test_an_invalid_settings_file_fails_validation_naming_it(tmp_path):
    from click.testing import CliRunner

    from daskprs.cli import cli

    make_files(tmp_path / "data", 2)
    job = write_job(
        tmp_path, "def run(mb):\n    return mb\n", input_yaml="type: uri_folder\npath: ./data"
    )
    (tmp_path / "code/parallel_run_step.settings.json").write_text('{"append_row": [1]}')
    for command in (["validate", str(job)], ["run", str(job), "--run-dir", str(tmp_path / "r")]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 2, result.output
        assert "parallel_run_step.settings.json" in result.output
        assert "internal error" not in result.output
    assert not (tmp_path / "r").exists()  # refused before anything started


def test_a_bad_separator_in_the_settings_file_fails_validation(tmp_path):
    from click.testing import CliRunner

    from daskprs.cli import cli

    make_files(tmp_path / "data", 2)
    job = write_job(
        tmp_path, "def run(mb):\n    return mb\n", input_yaml="type: uri_folder\npath: ./data"
    )
    (tmp_path / "code/parallel_run_step.settings.json").write_text(
        json.dumps({"append_row": {"pandas.DataFrame.to_csv": {"sep": "ab"}}})
    )
    result = CliRunner().invoke(cli, ["validate", str(job)])
    assert result.exit_code == 2, result.output
    assert "parallel_run_step.settings.json" in result.output
    assert '"delimiter" must be a 1-character string' in result.output


TABLE = """
def run(mini_batch):
    return mini_batch[["id", "name"]]
"""


@pytest.mark.slow
def test_settings_json_overrides_to_csv_end_to_end(tmp_path, client):
    (tmp_path / "table").mkdir()
    pd.DataFrame({"id": [1, 2], "name": ["a b", "c"]}).to_csv(tmp_path / "table/t.csv", index=False)
    (tmp_path / "table/MLTable").write_text(
        "paths:\n  - file: ./t.csv\ntransformations:\n  - read_delimited: {delimiter: ','}\n"
    )
    job = write_job(tmp_path, TABLE, input_yaml="type: mltable\npath: ./table")
    (tmp_path / "code/parallel_run_step.settings.json").write_text(
        json.dumps({"append_row": {"pandas.DataFrame.to_csv": {"sep": ";"}}})
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text() == "1;a b\n2;c\n"


SUMMARY_ONLY = """
import os
from azureml_user.parallel_run import EntryScript

def run(mini_batch, context):
    out = EntryScript().output_dir
    with open(os.path.join(out, f"mb-{context.minibatch_index}.txt"), "w") as f:
        f.write("\\n".join(os.path.basename(p) for p in mini_batch))
    EntryScript().logger.info("wrote mini-batch %d", context.minibatch_index)
    return []
"""


@pytest.mark.slow
def test_summary_only_job_writes_through_output_dir(tmp_path, client):
    make_files(tmp_path / "data", 5)
    job = write_job(
        tmp_path, SUMMARY_ONLY, input_yaml="type: uri_folder\npath: ./data", append_row=False
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure  # every run() returned [], as Azure's examples do
    out = tmp_path / "run/outputs/score/result"
    assert sorted(p.name for p in out.iterdir()) == ["mb-0.txt", "mb-1.txt", "mb-2.txt"]
    assert (out / "mb-2.txt").read_text() == "f004.txt"
    assert not output_of(tmp_path / "run").exists()
    logs = list((tmp_path / "run/logs/user/entry_script_log").rglob("*.log.txt"))
    assert any("wrote mini-batch 1" in p.read_text() for p in logs)


CHAOS = """
import os, time
import pandas as pd

def run(mini_batch, context):
    i = context.minibatch_index
    marker = os.path.join(os.environ["MARKS"], str(i))
    first = not os.path.exists(marker)
    open(marker, "a").close()
    if first and i % 5 == 1:
        raise RuntimeError("flaky")
    if first and i % 5 == 2:
        os._exit(3)
    if first and i == 3:
        time.sleep(3600)
    if first and i % 5 == 4:
        return None
    return pd.DataFrame({"id": mini_batch["id"], "sq": mini_batch["v"] ** 2})
"""


@pytest.mark.slow
def test_many_workers_through_failures_give_the_bytes_of_one_clean_worker(tmp_path):
    data = tmp_path / "table"
    data.mkdir()
    df = pd.DataFrame({"id": range(2000), "v": range(2000)})
    for k in range(4):
        df.iloc[k * 500 : (k + 1) * 500].to_csv(data / f"p{k}.csv", index=False)
    (data / "MLTable").write_text(
        "paths:\n  - pattern: ./p*.csv\ntransformations:\n  - read_delimited: {delimiter: ','}\n"
    )
    outputs = []
    for name, workers, chaos in (("clean", 1, False), ("chaos", 3, True)):
        folder = tmp_path / name
        (folder / "marks").mkdir(parents=True)
        if not chaos:  # every marker present: the script never misbehaves
            for i in range(100):
                (folder / "marks" / str(i)).touch()
        job = write_job(
            folder,
            CHAOS,
            input_yaml=f"type: mltable\npath: {data}",
            mini_batch_size='"1kb"',
            extra=f"retry_settings:\n  max_retries: 2\n  timeout: 3\n"
            f"environment_variables:\n  MARKS: {folder / 'marks'}",
        )
        result = run_job(job, run_dir=folder / "run", workers=workers, echo=lambda s: None)
        assert result.ok, result.failure
        assert result.steps[0].summary["total"] >= 12
        out = output_of(folder / "run")
        outputs.append(out.read_bytes())
        assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no partial left
        report = (folder / "run/logs/sys/job_report/processed_mini-batches.csv").read_text()
        for status in ("RUN_EXCEPTION", "PROCESS_DIED", "RUN_TIMEOUT", "WRONG_RETURN"):
            assert (status in report) is chaos
    assert outputs[0] == outputs[1]
    expected = pd.DataFrame({"id": df["id"], "sq": df["v"] ** 2}).to_csv(
        sep=" ", header=False, index=False, lineterminator="\n"
    )
    assert outputs[0].decode() == expected


MONITORED = """
def run(mini_batch):
    return [len(mini_batch)]
"""


@pytest.mark.slow
def test_resource_monitor_and_profiler_write_their_files(tmp_path, client):
    import pstats

    make_files(tmp_path / "data", 4)
    job = write_job(
        tmp_path,
        MONITORED,
        input_yaml="type: uri_folder\npath: ./data",
        program_arguments="--resource_monitor_interval 0.2 --profiling_module cProfile",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert not any("not yet applied" in n for n in result.notes)
    perf = list((tmp_path / "run/logs/perf").rglob("*.csv"))
    assert perf
    lines = perf[0].read_text().splitlines()
    assert lines[0].startswith("Time,Node CPU Percent") and len(lines) >= 2
    profiles = list((tmp_path / "run/logs/sys/node").rglob("*.profile"))
    assert profiles
    stats = pstats.Stats(str(profiles[0]))
    assert any(func[2] == "run" for func in stats.stats)  # the entry script's run() is in it


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_assemble_concatenates_parts_in_order(tmp_path, monkeypatch, kernel_copy):
    import errno
    import os

    from daskprs.results.output import assemble

    if not kernel_copy:

        def refuse(*args, **kwargs):
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    parts = []
    for i in range(5):
        p = tmp_path / f"p{i}"
        p.write_bytes(bytes([65 + i]) * (1000 * (i + 1)) + b"\n")
        parts.append(str(p))
    dest = tmp_path / "out" / "all.txt"
    assert assemble(parts, str(dest)) == sum(os.path.getsize(p) for p in parts)
    assert dest.read_bytes() == b"".join(open(p, "rb").read() for p in parts)


def _parts(tmp_path, n):
    parts = []
    for i in range(n):
        p = tmp_path / "parts" / f"p{i}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(f"row {i}\n".encode() * (i + 1))
        parts.append(str(p))
    return parts


def test_the_output_grows_in_order_while_the_step_runs(tmp_path):
    """Parts join the partial output as soon as every earlier mini-batch has ended; the
    final assembly renames that file into place instead of copying it all again."""
    import os

    from daskprs.results.output import PartialOutput, assemble, partial_path

    parts = _parts(tmp_path, 6)
    dest = tmp_path / "out" / "result.txt"
    partial = PartialOutput(str(dest), range(6))
    for mb in (1, 3, 0, 2):  # mini-batch 2 failed: nothing of it is written
        partial.ended(mb, None if mb == 2 else parts[mb])
    partial.close()
    path = partial_path(str(dest))
    assert partial.count == 3  # 0, 1 and 3: 4 and 5 had not ended
    grown = [parts[0], parts[1], parts[3]]
    assert open(path, "rb").read() == b"".join(open(p, "rb").read() for p in grown)
    inode = os.stat(path).st_ino
    final = [parts[0], parts[1], parts[3], parts[4], parts[5]]
    assert assemble(final, str(dest)) == sum(os.path.getsize(p) for p in final)
    assert os.stat(dest).st_ino == inode  # continued and renamed, not rebuilt
    assert dest.read_bytes() == b"".join(open(p, "rb").read() for p in final)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["result.txt"]


@pytest.mark.parametrize("damage", ["other parts", "truncated", "no manifest"])
def test_a_partial_output_that_does_not_match_is_rebuilt(tmp_path, damage):
    import os

    from daskprs.results.output import PartialOutput, assemble, partial_path

    parts = _parts(tmp_path, 4)
    dest = tmp_path / "out" / "result.txt"
    partial = PartialOutput(str(dest), range(4))
    for mb in range(3):
        partial.ended(mb, parts[mb])
    partial.close()
    path = partial_path(str(dest))
    final = list(parts)
    if damage == "other parts":  # a rerun committed another try of mini-batch 1
        final[1] = str(tmp_path / "parts" / "p1-try2")
        open(final[1], "wb").write(b"again\n")
    elif damage == "truncated":
        os.truncate(path, os.path.getsize(path) - 1)
    else:
        os.unlink(f"{path}.json")
    assemble(final, str(dest))
    assert dest.read_bytes() == b"".join(open(p, "rb").read() for p in final)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["result.txt"]


def test_an_interrupted_step_leaves_no_partial_output(tmp_path):
    from daskprs.results.output import PartialOutput

    parts = _parts(tmp_path, 2)
    dest = tmp_path / "out" / "result.txt"
    partial = PartialOutput(str(dest), range(2))
    partial.ended(0, parts[0])
    partial.close(keep=False)
    assert list(dest.parent.iterdir()) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_assembled_output_has_the_umasks_mode_as_an_uninterrupted_one(tmp_path):
    from daskprs.results.output import PartialOutput, assemble

    parts = []
    for i in range(3):
        (tmp_path / f"p{i}").write_bytes(f"row {i}\n".encode())
        parts.append(str(tmp_path / f"p{i}"))
    expected = 0o666 & ~_umask()
    # a resume or rerun: assembled at the end
    assemble(parts, str(tmp_path / "resumed" / "out.txt"))
    assert (tmp_path / "resumed" / "out.txt").stat().st_mode & 0o777 == expected
    # a fresh step: grown while it ran, then renamed into place
    dest = str(tmp_path / "fresh" / "out.txt")
    growing = PartialOutput(dest, [0, 1, 2])
    for i, part in enumerate(parts):
        growing.ended(i, part)
    growing.close()
    assemble(parts, dest)
    assert (tmp_path / "fresh" / "out.txt").stat().st_mode & 0o777 == expected


def test_temporary_files_a_killed_assembly_left_are_replaced_by_the_next(tmp_path):
    from daskprs.results.output import assemble, partial_path, temporary_path

    (tmp_path / "p0").write_bytes(b"row\n")
    dest = tmp_path / "out" / "parallel_run_step.txt"
    dest.parent.mkdir()
    # what a driver killed during the final assembly, or while the output grew, leaves
    Path(temporary_path(str(dest))).write_bytes(b"half a row")
    Path(partial_path(str(dest))).write_bytes(b"half")
    assemble([str(tmp_path / "p0")], str(dest))
    assert sorted(p.name for p in dest.parent.iterdir()) == ["parallel_run_step.txt"]
    assert dest.read_bytes() == b"row\n"
