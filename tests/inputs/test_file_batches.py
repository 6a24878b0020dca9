"""A file list's plan kept packed (issue 23: a million mini-batches in one driver): it reads
as the tuple of descriptors it replaces, in the plan file too; a local folder's listing is
packed as it is walked, and its stats serve the input's digests."""

from __future__ import annotations

import os
import stat

import pytest

from daskprs.inputs import listing
from daskprs.inputs.batches import FileBatch, FileBatches
from daskprs.inputs.listing import ListedFile, list_files
from daskprs.inputs.plan import Plan, plan_input
from daskprs.inputs.planfile import read_plan, write_plan
from daskprs.job.model import DataInput, MiniBatchSize
from daskprs.results import reuse
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


def test_packed_paths_iterate_and_slice_as_they_index(monkeypatch):
    """Iterated and sliced a block of names at a time (ASCII blocks sliced from one decode,
    others name by name): the paths indexing gives, across blocks, folders and odd names."""
    from daskprs.inputs import batches

    monkeypatch.setattr(batches, "_ITER_BLOCK", 3)
    paths = [f"/d/{k % 3}/f{k}" for k in range(8)]
    paths += ["/d/caf\u00e9", "/d/bad\udcff", "/e/", "/e/x", "rel", "s3://b/k"]
    packed = batches.PackedPaths(paths)
    assert list(packed) == [packed[i] for i in range(len(packed))] == paths
    assert list(batches.PackedPaths()) == []
    # a slice is decoded at once: the same paths, for any bounds and steps
    n = len(paths)
    for lo in range(-n - 1, n + 2):
        for hi in (None, *range(-n - 1, n + 2)):
            for step in (None, 1, 2, -1, -3):
                assert packed[lo:hi:step] == paths[lo:hi:step], (lo, hi, step)


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


def _tricky_folder(root):
    """Names whose order as paths differs from a plain sort of each folder's names, links
    (to a file, to a folder, to nothing, back up the tree), a FIFO and hidden entries."""
    for rel in (
        "a!", "a/x", "a/y/z", "a-b", "a0", "a.txt", "A", "_", "b/.hidden", ".dot/in",
        "b/MLTable", "MLTable/inside", "c/d/e", "c/d!", "c/d0", "é", "z",
    ):  # fmt: skip
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rel)
    os.symlink(root / "z", root / "link-to-z")
    os.symlink(root / "c", root / "link-to-c")
    os.symlink(root / "gone", root / "dangling")
    os.symlink(root, root / "c" / "loop")
    os.mkfifo(root / "fifo")


def _old_listing(folder):
    """What the listing made before it was packed: the walk it had (a stack of folders, no
    order), its ``(path, rel, size, mtime)`` tuples sorted by ``rel``; entries that are not
    regular files (a fifo) left out, as the listing leaves them out now."""
    found = []
    stack = [(str(folder), "", frozenset())]
    while stack:
        path, prefix, above = stack.pop()
        st = os.stat(path)
        here = (st.st_dev, st.st_ino)
        if here in above:  # a link back into a folder we are in
            continue
        above = above | {here}
        with os.scandir(path) as it:
            for entry in it:
                name = entry.name
                if name[0] == ".":
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False) or (
                        entry.is_symlink() and entry.is_dir()
                    ):
                        stack.append((entry.path, f"{prefix}{name}/", above))
                        continue
                except OSError:
                    continue
                if name == "MLTable":
                    continue
                try:
                    target = entry.stat(follow_symlinks=entry.is_symlink())
                except FileNotFoundError:  # a link to nothing
                    found.append((entry.path, prefix + name, 0, None))
                    continue
                if not stat.S_ISREG(target.st_mode):
                    continue
                found.append((entry.path, prefix + name, target.st_size, target.st_mtime))
    found.sort(key=lambda f: f[1])
    return [ListedFile(*f) for f in found]


def test_a_local_folder_is_listed_packed_in_the_order_and_with_the_stats_of_a_sorted_walk(
    tmp_path,
):
    root = tmp_path / "in"
    _tricky_folder(root)
    got = listing.list_input(DataInput("d", "uri_folder", str(root)), listing.Storage(None, None))
    assert isinstance(got.files, listing.PackedListing)
    assert list(got.files) == _old_listing(root)
    rels = [f.rel for f in got.files]
    assert rels == sorted(rels) and "a/x" in rels and "dangling" in rels and "b/.hidden" not in rels
    assert got.files[-1] == _old_listing(root)[-1]
    stats = got.files.stats
    assert stats.missing == {rels.index("dangling")} and not stats.irregular
    assert "fifo" not in rels and len(got.skipped) == 1 and "/in/fifo" in got.skipped[0]
    # the public listing is the tuple it always was
    assert list_files(DataInput("d", "uri_folder", str(root))) == tuple(_old_listing(root))


@pytest.mark.parametrize("count", [1, 3])
def test_the_input_digests_from_the_listing_stats_are_those_a_stat_of_each_file_gives(
    tmp_path, count
):
    root = tmp_path / "runs" / "r1" / "in"
    _tricky_folder(root)
    plan = plan_input(DataInput("d", "uri_folder", str(root)), MiniBatchSize(count, "count"))
    assert isinstance(plan.batches, FileBatches) and plan.batches.stats is not None
    unlisted = FileBatches(list(plan.batches.files), count)  # digests by stat, as before
    assert input_digest(plan.batches) == input_digest(unlisted)
    run = str(tmp_path / "runs" / "r1")
    assert reuse._plan_digest(plan.batches, run) == reuse._plan_digest(unlisted, run)
    assert reuse._plan_digest(plan.batches, run) == reuse._plan_digest(tuple(unlisted), run)
    # the listed digests are the listing's stat: a stat now sees the file changed since
    (root / "a0").write_text("longer than it was")
    assert input_digest(unlisted) != input_digest(plan.batches)


def _input_digest_as_defined(paths: list[str], per_batch: int) -> dict:
    """input_digest as earlier runs' records hold it, for one-file mini-batches (``repr`` of
    each descriptor) or others, then each file's ``path NUL size NUL mtime_ns`` line; a path
    as the filesystem's bytes."""
    import hashlib

    h, stats = hashlib.sha256(), hashlib.sha256()
    batches = FileBatches(paths, per_batch)
    for described in batches:
        h.update(repr(described.describe()).encode())
    for path in paths:
        st = os.stat(path)
        stats.update(os.fsencode(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n"))
    return {"batches": len(batches), "plan": h.hexdigest(), "files": stats.hexdigest()}


@pytest.mark.parametrize("count", [1, 2])
def test_the_input_digest_is_the_one_earlier_runs_recorded(tmp_path, count):
    """Taken a chunk at a time from the listing's stats: the digest a stat and an update per
    file gave (so a --resume of an earlier run finds its input unchanged)."""
    root = tmp_path / "in"
    for rel in ("a.txt", "b/c.txt", "b/d/e", "z", "caf\u00e9"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel * 2)
    with open(os.path.join(os.fsencode(root), b"not-utf8-\xff"), "wb") as f:
        f.write(b"x")
    plan = plan_input(DataInput("d", "uri_folder", str(root)), MiniBatchSize(count, "count"))
    assert isinstance(plan.batches, FileBatches) and plan.batches.stats is not None
    assert not plan.batches.stats.missing  # the listing's lines, a chunk at a time
    paths = list(plan.batches.files)
    assert len(paths) == 6
    assert input_digest(plan.batches) == _input_digest_as_defined(paths, count)
    assert input_digest(FileBatches(paths, count)) == _input_digest_as_defined(paths, count)
