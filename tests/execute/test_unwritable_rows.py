"""Rows ``run()`` returns that cannot be written (an item whose ``str()`` raises, a lone
surrogate, a value the ``to_csv`` options cannot encode): the try fails as WRONG_RETURN naming
the exception and the item, its process lives on, and nothing of the try is left in its part."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import make_files, output_of, write_job

from daskprs.api import run_job
from daskprs.execute.child import ChildConfig
from daskprs.execute.deadlines import Deadlines
from daskprs.execute.slot import Slot
from daskprs.execute.wire import RunTask
from daskprs.inputs.batches import FileBatch
from daskprs.results.output import _copy_parts
from daskprs.results.packs import split_ref
from daskprs.rundir import LogsDir

SCRIPT = """
import os
import pandas as pd

class NoStr:
    def __str__(self):
        raise ValueError("no str for you")

def init():
    with open(os.environ["INITS"], "a") as f:
        f.write("init\\n")

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    if name == "nostr.txt":
        return ["fine", NoStr()]
    if name == "surrogate.txt":  # os.listdir's name of a file whose name is not UTF-8
        return ["bad \\udcff name"]
    if name == "accent.txt":  # not ASCII, after thousands of rows that were written first
        return pd.DataFrame({"text": [f"row {i} of many" for i in range(5000)] + ["café"]})
    return pd.DataFrame({"text": [f"{name} {i}" for i in range(3)]})
"""


@pytest.fixture
def slot(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(textwrap.dedent(SCRIPT))
    for name in ("a.txt", "b.txt", "nostr.txt", "surrogate.txt", "accent.txt"):
        (tmp_path / name).write_text("x\n")
    config = ChildConfig(
        code_dir=str(code),
        entry_script="score.py",
        env={"INITS": str(tmp_path / "inits")},
        logs=LogsDir(str(tmp_path / "logs")),
        cache_dir=str(tmp_path / "cache"),
        to_csv={"encoding": "ascii"},
    )
    slot = Slot(config)
    yield slot
    slot.stop()


def _task(tmp_path, mb: int, name: str, part, pack: bool = True) -> RunTask:
    return RunTask(FileBatch(mb, (str(tmp_path / name),)), 1, str(part), pack=pack)


def test_unwritable_rows_fail_their_try_naming_the_item_and_the_process_lives_on(tmp_path, slot):
    pack = tmp_path / "parts" / "00000.s0n0.pack"
    pack.parent.mkdir()
    names = ["a.txt", "accent.txt", "nostr.txt", "surrogate.txt", "b.txt"]
    records = [slot.run(_task(tmp_path, i, n, pack), Deadlines()) for i, n in enumerate(names)]
    assert [r.status for r in records] == ["RUN_DONE", *["WRONG_RETURN"] * 3, "RUN_DONE"]
    accent, nostr, surrogate = records[1:4]
    assert "DataFrame whose row 5000 (index 5000) cannot be written" in accent.error
    assert "UnicodeEncodeError: 'ascii' codec can't encode" in accent.error
    assert "{'encoding': 'ascii'}" in accent.error  # the options that wrote it
    assert "list whose item 1 cannot be written" in nostr.error
    assert "ValueError: no str for you (at score.py:" in nostr.error
    assert "list whose item 0 cannot be written" in surrogate.error
    assert "surrogates not allowed" in surrogate.error
    assert all(r.failed == r.total and r.part is None for r in records[1:4])
    # one process ran them all: init() once, no restart
    assert slot.started == 1
    assert (tmp_path / "inits").read_text() == "init\n"
    # the rows written before the failing one were cut from the pack: the next try begins
    # where the failed one began, and the pack holds the good tries' rows and nothing else
    first, last = (split_ref(r.part) for r in (records[0], records[4]))
    assert last[1] == first[1] + first[2]
    assert pack.stat().st_size == last[1] + last[2]
    with open(tmp_path / "out", "wb") as out:
        _copy_parts([records[0].part, records[4].part], out)
    assert (tmp_path / "out").read_text().splitlines() == [
        f'"{name} {i}"' for name in ("a.txt", "b.txt") for i in range(3)
    ]
    # the error log names it too
    errors = (tmp_path / "logs/user/error/node000/process000.txt").read_text()
    assert "no str for you" in errors


def test_a_part_of_its_own_is_removed_when_its_rows_cannot_be_written(tmp_path, slot):
    part = tmp_path / "00001.s0n1.part"
    record = slot.run(_task(tmp_path, 1, "accent.txt", part, pack=False), Deadlines())
    assert record.status == "WRONG_RETURN" and "row 5000" in record.error
    assert not part.exists()


NOSTR = """
import os

class NoStr:
    def __str__(self):
        raise ValueError("no str for you")

def init():
    with open(os.environ["INITS"], "a") as f:
        f.write(f"{os.getpid()}\\n")

def run(mini_batch):
    names = [os.path.basename(p) for p in mini_batch]
    return [NoStr()] if "f001.txt" in names else names
"""


@pytest.mark.slow
def test_a_job_whose_rows_cannot_be_written_says_why_and_keeps_its_processes(tmp_path, client):
    make_files(tmp_path / "data", 3)
    inits = tmp_path / "inits"
    job = write_job(
        tmp_path,
        NOSTR,
        input_yaml="type: uri_folder\npath: ./data",
        mini_batch_size='"1"',
        max_concurrency=1,
        extra=f"environment_variables:\n  INITS: {inits}",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure  # one mini-batch failed, within the budgets
    assert output_of(tmp_path / "run").read_text().splitlines() == ["f000.txt", "f002.txt"]
    failed = [json.loads(line) for line in open(tmp_path / "run/failed_mini_batches.jsonl")]
    assert [(f["id"], f["status"], f["tries"]) for f in failed] == [(1, "WRONG_RETURN", 3)]
    assert "list whose item 0 cannot be written" in failed[0]["error"]
    assert "ValueError: no str for you" in failed[0]["error"]
    # no process died: each of the embedded cluster's processes ran init() once at most
    pids = inits.read_text().split()
    assert len(pids) == len(set(pids)) <= 2
