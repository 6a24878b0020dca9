"""The tries of one Dask task append their rows to one pack, each a range its record names
(daskprs.results.packs): the references, the output assembled from ranges, a slot's process
appending to a pack, and a job whose short tries are packed."""

from __future__ import annotations

import errno
import os
import textwrap

import pytest

from daskprs.results.output import _copy_parts, _ranges, assemble
from daskprs.results.packs import is_pack_ref, pack_ref, split_ref


def test_a_reference_names_a_range_of_a_pack_and_nothing_else_is_taken_for_one(tmp_path):
    pack = str(tmp_path / "parts" / "00007.s0n7.pack")
    assert split_ref(pack_ref(pack, 12, 30)) == (pack, 12, 30)
    assert is_pack_ref(pack_ref(pack, 0, 0))
    for whole in (
        str(tmp_path / "parts" / "00007.s0n7.part"),
        "s3://bucket/run/parts/00007.s0n7.part",
        "/odd/name.pack",
        "/odd/name.pack:12",
        "/odd/name.part:1+2",
    ):
        assert not is_pack_ref(whole) and split_ref(whole) == (whole, 0, None)


def _pack(path, rows):
    """Write ``rows`` (bytes each) to ``path`` with junk between them; their references."""
    refs = []
    with open(path, "wb") as f:
        for i, row in enumerate(rows):
            if i % 2:
                f.write(b"JUNK OF A TRY CUT SHORT\n")  # never read
            refs.append(pack_ref(str(path), f.tell(), len(row)))
            f.write(row)
    return refs


def test_consecutive_ranges_of_a_pack_are_copied_in_one_go():
    refs = [pack_ref("/p/a.pack", 0, 5), pack_ref("/p/a.pack", 5, 3), "/p/b.part"]
    refs += [pack_ref("/p/a.pack", 8, 2), pack_ref("/p/a.pack", 20, 2)]
    refs += [pack_ref("/p/c.pack", 22, 1)]
    assert list(_ranges(refs)) == [
        ("/p/a.pack", 0, 8),
        ("/p/b.part", 0, None),
        ("/p/a.pack", 8, 2),
        ("/p/a.pack", 20, 2),
        ("/p/c.pack", 22, 1),
    ]


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_the_output_holds_each_range_once_in_order_and_no_junk(tmp_path, monkeypatch, kernel_copy):
    if not kernel_copy:

        def refuse(*args, **kwargs):
            raise OSError(errno.EXDEV, "cross-device")

        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    rows = [f"row {i}\n".encode() * (i + 1) for i in range(7)]
    one = _pack(tmp_path / "a.pack", rows[:4])
    whole = tmp_path / "b.part"
    whole.write_bytes(rows[4])
    two = _pack(tmp_path / "c.pack", rows[5:])
    refs = [*one, str(whole), *two]
    dest = tmp_path / "out.txt"
    assert assemble(refs, str(dest)) == sum(map(len, rows))
    assert dest.read_bytes() == b"".join(rows)
    # a part made of every other range (retried tries elsewhere): only those ranges
    with open(tmp_path / "some.txt", "wb") as out:
        assert _copy_parts(refs[::2], out) == sum(len(r) for r in rows[::2])
    assert (tmp_path / "some.txt").read_bytes() == b"".join(rows[::2])


def test_a_range_past_the_end_of_its_pack_is_an_error_that_names_it(tmp_path):
    refs = _pack(tmp_path / "a.pack", [b"one\n"])
    path, offset, _ = split_ref(refs[0])
    with open(tmp_path / "out", "wb") as out, pytest.raises(OSError, match=r"a\.pack"):
        _copy_parts([pack_ref(path, offset, 100)], out)


SCRIPT = """
import os

def init():
    pass

def run(mini_batch):
    name = os.path.basename(mini_batch[0])
    if name == "die.txt" and not os.path.exists(os.environ["DIED"]):
        open(os.environ["DIED"], "w").close()
        os._exit(3)
    return [f"{name} {i}" for i in range(len(name))]
"""


def test_a_process_appends_the_tries_of_a_task_to_one_pack_after_what_a_dead_one_left(tmp_path):
    from daskprs.execute.child import ChildConfig
    from daskprs.execute.deadlines import Deadlines
    from daskprs.execute.slot import Slot
    from daskprs.execute.wire import RunTask
    from daskprs.inputs.batches import FileBatch
    from daskprs.rundir import LogsDir

    code = tmp_path / "code"
    code.mkdir()
    (code / "score.py").write_text(textwrap.dedent(SCRIPT))
    names = ["a.txt", "bb.txt", "die.txt", "ccc.txt"]
    for name in names:
        (tmp_path / name).write_text("x\n")
    pack = tmp_path / "parts" / "00000.s0n0.pack"
    pack.parent.mkdir()
    pack.write_bytes(b"left by a process killed while it wrote\n")
    cfg = ChildConfig(
        code_dir=str(code),
        entry_script="score.py",
        env={"DIED": str(tmp_path / "died")},
        logs=LogsDir(str(tmp_path / "logs")),
        cache_dir=str(tmp_path / "cache"),
    )
    slot = Slot(cfg)
    records = []
    try:
        for i, name in enumerate([*names, "die.txt"]):
            task = RunTask(FileBatch(i, (str(tmp_path / name),)), 1, str(pack), pack=True)
            records.append(slot.run(task, Deadlines()))
    finally:
        slot.stop()
    assert [r.status for r in records] == ["RUN_DONE"] * 2 + ["PROCESS_DIED"] + ["RUN_DONE"] * 2
    done = [r.part for r in records if r.status == "RUN_DONE"]
    assert all(is_pack_ref(p) and split_ref(p)[0] == str(pack) for p in done)
    starts = [split_ref(p)[1] for p in done]
    assert starts == sorted(starts) and starts[0] == len(
        b"left by a process killed while it wrote\n"
    )
    with open(tmp_path / "out", "wb") as out:
        _copy_parts(done, out)
    want = [f"{n} {i}" for n in ["a.txt", "bb.txt", "ccc.txt", "die.txt"] for i in range(len(n))]
    assert (tmp_path / "out").read_text().splitlines() == want


def test_the_growing_output_reads_ranges_ended_in_any_order_keeping_a_pack_open(tmp_path):
    from daskprs.results.output import PartialOutput

    rows = [f"row {i}\n".encode() for i in range(12)]
    refs = _pack(tmp_path / "a.pack", rows[:5]) + _pack(tmp_path / "b.pack", rows[5:])
    out = PartialOutput(str(tmp_path / "out.txt"), list(range(12)))
    for mb in [1, 0, 2, 4, 3, 7, 5, 6, 11, 8, 9, 10]:  # tasks end out of order
        out.ended(mb, refs[mb])
    out.close()
    assert open(out.path, "rb").read() == b"".join(rows)
    assert out.count == 12 and out._held == []


def test_a_pack_gone_before_the_output_is_written_names_its_first_mini_batch(tmp_path):
    from daskprs.execute.step import _assemble

    pack = tmp_path / "parts" / "00003.s0n3.pack"
    refs = {3: pack_ref(str(pack), 0, 4), 4: pack_ref(str(pack), 4, 4)}
    stop = _assemble(str(tmp_path / "out.txt"), refs, None, "daskprs resume ...")
    assert "the committed part of mini-batch 3" in stop.failure
    assert "is gone, deleted while the step ran" in stop.failure
