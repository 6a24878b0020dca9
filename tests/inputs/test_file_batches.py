"""A file list's plan kept packed (issue 23: a million mini-batches in one driver): it reads
as the tuple of descriptors it replaces, in the plan file too."""

from __future__ import annotations

import pytest

from daskprs.inputs.batches import FileBatch, FileBatches
from daskprs.inputs.plan import Plan, plan_input
from daskprs.inputs.planfile import read_plan, write_plan
from daskprs.job.model import DataInput, MiniBatchSize
from daskprs.results.fingerprint import input_digest

PATHS = ["/data/a/x.png", "/data/a/y.png", "/data/b/z.png", "s3://bucket/k/w.png", "rel.png"]


@pytest.mark.parametrize("count", [1, 2, 5, 7])
def test_packed_batches_read_as_the_tuple_they_replace(count):
    options = {"anon": True}
    packed = FileBatches(PATHS, count, direct=True, storage_options=options)
    plain = tuple(
        FileBatch(i, tuple(PATHS[k : k + count]), True, None, options)
        for i, k in enumerate(range(0, len(PATHS), count))
    )
    assert len(packed) == len(plain)
    assert list(packed) == list(plain) and packed == plain and plain == packed
    assert packed[-1] == plain[-1] and packed[1:] == plain[1:]
    assert dict(packed.item_counts()) == {b.index: b.n_items for b in plain}
    assert input_digest(packed) == input_digest(plain)
    with pytest.raises(IndexError):
        packed[len(plain)]


def test_a_file_list_plan_is_packed_and_reads_back_equal(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(7):
        (folder / f"f{i}.txt").write_text(str(i))
    plan = plan_input(DataInput("d", "uri_folder", str(folder)), MiniBatchSize(2, "count"))
    assert isinstance(plan.batches, FileBatches) and len(plan.batches) == 4
    assert plan.by_index[3] == plan.batches[3] and 4 not in plan.by_index
    assert list(plan.by_index) == [0, 1, 2, 3]
    assert dict(plan.item_counts()) == {0: 2, 1: 2, 2: 2, 3: 1}
    path = str(tmp_path / "plan.json")
    write_plan(path, plan)
    again = read_plan(path)
    assert isinstance(again.batches, FileBatches) and again == plan
    unpacked = Plan(plan.kind, tuple(plan.batches), plan.input_root, plan.notes, plan.seconds)
    assert unpacked == plan
