"""Planning: file lists, byte ranges, row groups, keys, and planning errors (no cluster)."""

from __future__ import annotations

import itertools
import os
import pickle
import socket
import ssl
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from daskprs.errors import PlanningError
from daskprs.inputs.batches import FileBatch, TableBatch
from daskprs.inputs.plan import Plan, list_files, plan_input
from daskprs.job.model import DataInput, MiniBatchSize


def touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def mltable(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLTable").write_text(textwrap.dedent(text))
    return folder


def folder_input(path: Path, mode: str = "ro_mount") -> DataInput:
    return DataInput("data", "uri_folder", str(path), mode)


def table_input(path: Path, mode: str | None = None) -> DataInput:
    return DataInput("data", "mltable", str(path), mode)  # type: ignore[arg-type]


def rels(files) -> list[str]:
    return [f.rel for f in files]


class CountingFS(LocalFileSystem):
    """A local filesystem that counts every byte read through it."""

    cachable = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bytes_read = 0
        self.opened: list[str] = []

    def _open(self, path, mode="rb", **kwargs):
        f = super()._open(path, mode, **kwargs)
        self.opened.append(path)
        read = f.read

        def counting_read(*a):
            data = read(*a)
            self.bytes_read += len(data)
            return data

        f.read = counting_read
        return f


# --------------------------------------------------------------------------------------------
# File lists
# --------------------------------------------------------------------------------------------


def test_file_lists_are_in_path_order_without_dotfiles_or_mltable_files(tmp_path):
    for name in [
        "b.txt",
        "a/z.txt",
        "a.txt",
        "A.txt",
        "_x",
        "é.txt",
        ".hidden",
        ".git/config",
        "deep/.cache/f.txt",
        "MLTable",
        "sub/MLTable",
        "sub/y.txt",
    ]:
        touch(tmp_path / name)
    files = list_files(folder_input(tmp_path))
    # code-point order of the relative path: "A" < "_" < "a" and "." < "/"
    assert rels(files) == ["A.txt", "_x", "a.txt", "a/z.txt", "b.txt", "sub/y.txt", "é.txt"]
    assert all(Path(f.url).is_absolute() for f in files)
    assert files[0].url == str(tmp_path / "A.txt")
    assert files[0].size == 1


def test_file_batches_hold_ten_files_by_default_and_count_their_files(tmp_path):
    for i in range(23):
        touch(tmp_path / f"f{i:03d}.txt")
    plan = plan_input(folder_input(tmp_path), None)
    assert plan.kind == "files"
    assert [len(b.files) for b in plan.batches] == [10, 10, 3]
    assert [b.index for b in plan.batches] == [0, 1, 2]
    assert plan.batches[0].files[0] == str(tmp_path / "f000.txt")
    assert plan.batches[2].files[-1] == str(tmp_path / "f022.txt")
    assert not plan.batches[0].direct
    assert plan.input_root == str(tmp_path)
    assert not plan.scanned and plan.seconds >= 0

    plan = plan_input(folder_input(tmp_path, "direct"), MiniBatchSize(4, "count"))
    assert [len(b.files) for b in plan.batches] == [4, 4, 4, 4, 4, 3]
    assert all(isinstance(b, FileBatch) and b.direct for b in plan.batches)
    # every file exactly once, in order
    assert [f for b in plan.batches for f in b.files] == [
        f.url for f in list_files(folder_input(tmp_path))
    ]
    pickle.loads(pickle.dumps(plan))


@pytest.mark.parametrize("size", [MiniBatchSize(1024, "bytes", "1kb"), MiniBatchSize(5, "rows")])
def test_a_byte_unit_on_a_file_list_is_refused(tmp_path, size):
    touch(tmp_path / "a.txt")
    with pytest.raises(PlanningError, match="counts files"):
        plan_input(folder_input(tmp_path), size)


def test_zero_files_per_mini_batch_is_refused(tmp_path):
    touch(tmp_path / "a.txt")
    with pytest.raises(PlanningError, match="at least 1"):
        plan_input(folder_input(tmp_path), MiniBatchSize(0, "count"))


def test_a_uri_file_input_is_one_mini_batch_of_one_file(tmp_path):
    f = touch(tmp_path / "one.csv", "a\n1\n")
    plan = plan_input(DataInput("d", "uri_file", str(f)), None)
    assert plan.kind == "files"
    assert [b.files for b in plan.batches] == [(str(f),)]


def test_a_file_url_is_read_as_a_local_path(tmp_path):
    touch(tmp_path / "a.txt")
    plan = plan_input(DataInput("d", "uri_folder", f"file://{tmp_path}"), None)
    assert plan.batches[0].files == (str(tmp_path / "a.txt"),)
    assert plan.batches[0].storage_options == {}


def test_mltable_paths_are_deduplicated_and_globs_expanded(tmp_path):
    for name in ["data/a.csv", "data/b.csv", "data/x/c.csv", "data/x/y/d.csv", "data/e.txt"]:
        touch(tmp_path / name)
    touch(tmp_path / "data/.hidden.csv")
    mltable(
        tmp_path,
        """\
        paths:
          - file: ./data/b.csv
          - folder: ./data/x
          - pattern: ./data/*.csv
        """,
    )
    files = list_files(table_input(tmp_path))
    assert rels(files) == ["data/a.csv", "data/b.csv", "data/x/c.csv", "data/x/y/d.csv"]


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("./data/*.csv", ["data/a.csv", "data/b.csv"]),
        ("./data/**/*.csv", ["data/a.csv", "data/b.csv", "data/x/c.csv", "data/x/y/d.csv"]),
        ("./**/c.csv", ["data/x/c.csv"]),
        ("./data/?.csv", ["data/a.csv", "data/b.csv"]),
        ("./data/[a-a].*", ["data/a.csv"]),
        ("./data/[!a].*", ["data/b.csv", "data/e.txt"]),
        ("./data/x/**", ["data/x/c.csv", "data/x/y/d.csv"]),
        ("./data/*/*.csv", ["data/x/c.csv"]),
        ("data/*.txt", ["data/e.txt"]),
    ],
)
def test_glob_patterns_match_like_azure(tmp_path, pattern, expected):
    for name in ["data/a.csv", "data/b.csv", "data/x/c.csv", "data/x/y/d.csv", "data/e.txt"]:
        touch(tmp_path / name)
    touch(tmp_path / "data/.h.csv")
    mltable(tmp_path, f"paths:\n  - pattern: {pattern}\n")
    assert rels(list_files(table_input(tmp_path))) == expected


def test_mltable_paths_may_be_absolute_or_outside_its_folder(tmp_path):
    other = tmp_path / "other"
    touch(other / "z.csv")
    touch(tmp_path / "t" / "a.csv")
    mltable(tmp_path / "t", f"paths:\n  - file: {other / 'z.csv'}\n  - file: ./a.csv\n")
    files = list_files(table_input(tmp_path / "t"))
    # the relative path "../other/z.csv" sorts before "a.csv"
    assert rels(files) == ["../other/z.csv", "a.csv"]
    assert [f.url for f in files] == [str(other / "z.csv"), str(tmp_path / "t/a.csv")]


def test_mltable_without_read_is_a_file_list(tmp_path):
    touch(tmp_path / "a.csv")
    mltable(tmp_path, "paths:\n  - pattern: ./*.csv\n")
    plan = plan_input(table_input(tmp_path), None)
    assert plan.kind == "files" and plan.batches[0].files == (str(tmp_path / "a.csv"),)


@pytest.mark.parametrize(
    "mode, kind",
    [
        (None, "tabular"),
        ("direct", "tabular"),
        ("ro_mount", "files"),
        ("download", "files"),
        ("eval_mount", "files"),
    ],
)
def test_the_input_mode_decides_tabular_or_file_list(tmp_path, mode, kind):
    touch(tmp_path / "a.csv", "a\n1\n")
    mltable(tmp_path, "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited: {}\n")
    plan = plan_input(table_input(tmp_path, mode), None)
    assert plan.kind == kind
    if kind == "files":
        assert any("run() receives its files" in n for n in plan.notes)
        assert plan.batches[0].files == (str(tmp_path / "a.csv"),)


def test_mltable_path_may_name_the_file(tmp_path):
    touch(tmp_path / "a.csv", "a\n1\n")
    mltable(tmp_path, "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited: {}\n")
    plan = plan_input(table_input(tmp_path / "MLTable"), None)
    assert plan.kind == "tabular" and plan.input_root == str(tmp_path)


class FsspecListingFS(LocalFileSystem):
    """Local, but with ``ls`` overridden: the planner lists it through fsspec's ``find``
    instead of its own ``os.scandir`` walk, so the two can be compared."""

    cachable = False

    def ls(self, path, detail=False, **kwargs):
        return super().ls(path, detail=detail, **kwargs)


def unlinked(files) -> list:
    """``files`` as fsspec's find lists them: no mtime for a symlink (its listing gives the
    link's own time; the local walk gives the target's, as a read's ``stat`` sees it)."""
    return [replace(f, mtime=None) if os.path.islink(f.url) else f for f in files]


def odd_tree(root: Path) -> Path:
    """Nested folders, dotfiles, dot-folders (nested too), MLTable files and a folder named
    MLTable, symlinks to a file, to a folder and to nothing, a fifo, an empty folder."""
    for name in [
        "b.txt",
        "a/z.txt",
        "a-b/c.txt",
        "a.b/c.txt",
        "é/x.txt",
        ".hidden",
        ".dot/sub/deeper/y.txt",
        "deep/er/.cache/f.txt",
        "deep/er/.f",
        "deep/er/g.txt",
        "MLTable",
        "sub/MLTable",
        "sub/y.txt",
        "MLTable.d/z.txt",
        "target/t.txt",
    ]:
        touch(root / name, name * 3)
    # files in a folder named MLTable are listed; only files named MLTable are skipped
    (root / "tables" / "MLTable").mkdir(parents=True)
    touch(root / "tables" / "MLTable" / "part.csv")
    (root / "empty" / "inner").mkdir(parents=True)
    (root / "link-file.txt").symlink_to(root / "target" / "t.txt")
    (root / "link-folder").symlink_to(root / "target", target_is_directory=True)
    (root / "link-broken").symlink_to(root / "nowhere")
    (root / ".link-hidden").symlink_to(root / "target" / "t.txt")
    if hasattr(os, "mkfifo"):
        os.mkfifo(root / "fifo")
    return root


def test_local_walk_matches_fsspec_find(tmp_path):
    root = odd_tree(tmp_path / "in")
    fast = list_files(folder_input(root))
    slow = list_files(folder_input(root), fs=FsspecListingFS())
    # the same, except that a link to a folder is descended (fsspec lists it as one file)
    assert unlinked(f for f in fast if not f.rel.startswith("link-folder")) == [
        f for f in slow if f.rel != "link-folder"
    ]
    by_rel = {f.rel: f for f in fast}
    assert "a-b/c.txt" in by_rel and "tables/MLTable/part.csv" in by_rel
    assert not [r for r in by_rel if r.startswith(".") or "/." in r or r.endswith("MLTable")]
    # like fsspec's find: a symlink counts as a file with its target's size (0 if dangling)
    assert by_rel["link-file.txt"].size == (root / "target/t.txt").stat().st_size
    assert by_rel["link-file.txt"].url == str(root / "link-file.txt")
    assert by_rel["link-broken"].size == 0
    # a link to a folder is descended
    assert "link-folder" not in by_rel and "link-folder/t.txt" in by_rel


def test_a_link_cycle_ends(tmp_path):
    touch(tmp_path / "in" / "a" / "x.txt")
    (tmp_path / "in" / "a" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)
    assert rels(list_files(folder_input(tmp_path / "in"))) == ["a/x.txt"]


def test_local_walk_matches_fsspec_find_in_mltable_paths(tmp_path):
    odd_tree(tmp_path / "in")
    (tmp_path / "in" / "MLTable").unlink()
    mltable(
        tmp_path,
        """\
        paths:
          - folder: ./in/deep
          - folder: ./in
          - pattern: ./in/**/*.txt
          - pattern: ./in/*
          - pattern: ./in/sub
          - file: ./in/link-file.txt
        """,
    )
    fast = list_files(table_input(tmp_path))
    slow = list_files(table_input(tmp_path), fs=FsspecListingFS())
    # the same, except that a link to a folder is descended (fsspec lists it as one file)
    assert unlinked(f for f in fast if "link-folder/" not in f.rel) == [
        f for f in slow if not f.rel.endswith("link-folder")
    ]
    assert len({f.url for f in fast}) == len(fast)
    assert "in/deep/er/g.txt" in rels(fast) and "in/link-file.txt" in rels(fast)


def test_local_walk_does_not_use_fsspec_find(tmp_path, monkeypatch):
    touch(tmp_path / "x" / "a.txt")

    def no_find(*args, **kwargs):
        raise AssertionError("fsspec find() was called")

    monkeypatch.setattr(LocalFileSystem, "find", no_find)
    assert rels(list_files(folder_input(tmp_path))) == ["x/a.txt"]


def test_a_symlinked_input_folder_is_listed_through_the_link(tmp_path):
    touch(tmp_path / "real" / "a.txt")
    touch(tmp_path / "real" / "s" / "b.txt")
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    files = list_files(folder_input(tmp_path / "link"))
    assert rels(files) == ["a.txt", "s/b.txt"]
    assert [f.url for f in files] == [str(tmp_path / "link/a.txt"), str(tmp_path / "link/s/b.txt")]
    assert files == list_files(folder_input(tmp_path / "link"), fs=FsspecListingFS())


@pytest.mark.parametrize("lister", [None, FsspecListingFS])
def test_listed_files_keep_paths_relative_to_the_root_in_order(tmp_path, lister):
    for name in ["a/b", "a-c", "a.d", "a/a/a", "B"]:
        touch(tmp_path / name)
    fs = lister() if lister else None
    files = list_files(DataInput("d", "uri_folder", str(tmp_path) + "/"), fs=fs)
    assert rels(files) == ["B", "a-c", "a.d", "a/a/a", "a/b"]
    assert [f.url for f in files] == [str(tmp_path / r) for r in rels(files)]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_a_missing_input_folder_is_named(tmp_path):
    with pytest.raises(PlanningError, match=r"nope.*not found"):
        plan_input(folder_input(tmp_path / "nope"), None)


def test_an_empty_input_folder_is_refused(tmp_path):
    touch(tmp_path / ".only-hidden")
    with pytest.raises(PlanningError, match="holds no files"):
        plan_input(folder_input(tmp_path), None)


@pytest.mark.parametrize("lister", [None, FsspecListingFS])
def test_folder_of_dot_folders_and_mltables_is_empty(tmp_path, lister):
    touch(tmp_path / ".git" / "config")
    touch(tmp_path / "a" / ".cache" / "f.txt")
    touch(tmp_path / "a" / "MLTable")
    (tmp_path / "b").mkdir()
    fs = lister() if lister else None
    with pytest.raises(PlanningError) as err:
        plan_input(folder_input(tmp_path), None, fs=fs)
    assert str(err.value) == (
        f"{tmp_path}: the folder holds no files (dotfiles and MLTable files are not counted); "
        f"put the input files there or fix the path"
    )


@pytest.mark.parametrize("lister", [None, FsspecListingFS])
def test_listers_give_the_same_error_words(tmp_path, lister):
    touch(tmp_path / "f.txt")
    fs = lister() if lister else None
    with pytest.raises(PlanningError) as err:
        plan_input(folder_input(tmp_path / "nope"), None, fs=fs)
    assert str(err.value) == (
        f"{tmp_path / 'nope'}: folder not found; check the path (and the MLTable paths)"
    )
    with pytest.raises(PlanningError) as err:
        plan_input(folder_input(tmp_path / "f.txt"), None, fs=fs)
    assert str(err.value) == (
        f"{tmp_path / 'f.txt'}: is a file, not a folder; use 'file:' or type uri_file"
    )


class FailingStore(AbstractFileSystem):
    """An object store whose every request fails with ``error``, as one that cannot be
    reached, or that refuses the credentials, fails (no network needed)."""

    protocol = "s3"
    cachable = False

    def __init__(self, error: BaseException):
        super().__init__()
        self.error = error

    def exists(self, path, **kwargs):
        raise self.error

    def info(self, path, **kwargs):
        raise self.error


def _refused_plan(url: str, error: BaseException) -> str:
    with pytest.raises(PlanningError) as err:
        plan_input(DataInput("data", "uri_folder", url, "ro_mount"), None, fs=FailingStore(error))
    assert err.value.__cause__ is error  # kept for the Python API; the command shows the line
    return str(err.value)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("timed out"),
        socket.gaierror(-2, "Name or service not known"),
        ssl.SSLCertVerificationError(1, "certificate verify failed"),
    ],
)
def test_a_store_that_cannot_be_reached_is_a_planning_error_naming_the_url(error):
    message = _refused_plan("s3://bucket/data", error)
    assert message.startswith(
        f"s3://bucket/data: cannot reach the object store ({type(error).__name__}: "
    )
    assert "check the endpoint and the credentials in the environment: AWS_ENDPOINT_URL" in message


def test_botocore_and_azure_errors_say_what_went_wrong_in_one_line():
    botocore = pytest.importorskip("botocore.exceptions")
    message = _refused_plan(
        "s3://bucket/data", botocore.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    )
    assert "cannot reach the object store (EndpointConnectionError: Could not connect" in message
    message = _refused_plan("s3://bucket/data", botocore.NoCredentialsError())
    assert message == (
        "s3://bucket/data: the object store refused access (NoCredentialsError: Unable to "
        "locate credentials); check the credentials in the environment, and their access: "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    )
    azure = pytest.importorskip("azure.core.exceptions")
    chain = "\n".join(
        ["DefaultAzureCredential failed to retrieve a token from the included credentials."]
        + ["\tAzureCliCredential: Azure CLI not found on path"] * 4
    )
    message = _refused_plan(
        "abfs://c@acct.dfs.core.windows.net/d", azure.ClientAuthenticationError(chain)
    )
    assert message.startswith(
        "abfs://c@acct.dfs.core.windows.net/d: the object store refused access "
        "(ClientAuthenticationError: DefaultAzureCredential failed to retrieve a token from the "
        "included credentials.); check the credentials in the environment, and their access: "
        "AZURE_STORAGE_CONNECTION_STRING"
    )
    assert "\n" not in message and "AzureCliCredential" not in message  # its first line only
    unreachable = azure.ServiceRequestError("Cannot connect to host 127.0.0.1:1")
    message = _refused_plan("abfs://c/d", unreachable)
    assert message.startswith("abfs://c/d: cannot reach the object store (ServiceRequestError")


def test_a_long_store_error_is_cut_to_one_short_line():
    message = _refused_plan("s3://bucket/data", PermissionError("no " * 500 + "\nmore"))
    assert "(PermissionError: no no" in message and "...)" in message
    assert len(message) < 600 and "more" not in message


def test_only_a_stores_errors_become_planning_errors(tmp_path):
    data = DataInput("data", "uri_folder", "s3://b/d")
    with pytest.raises(PlanningError, match=r"^s3://b/d: cannot reach the object store"):
        list_files(data, fs=FailingStore(TimeoutError()))
    for bug in (TypeError("a bug"), KeyError("Contents"), ValueError("x")):  # daskprs's: exit 1
        with pytest.raises(type(bug)):
            plan_input(data, None, fs=FailingStore(bug))
        with pytest.raises(type(bug)):
            list_files(data, fs=FailingStore(bug))

    class Refusing(LocalFileSystem):
        cachable = False

        def exists(self, path, **kwargs):
            raise PermissionError(13, "Permission denied", path)

    with pytest.raises(PermissionError):  # a local folder is no store to reach
        plan_input(folder_input(tmp_path), None, fs=Refusing())


class BucketProbe(FailingStore):
    """A store that says a bucket alone does not exist whatever went wrong, as s3fs's
    ``exists`` does (it swallows every error of its probes), while ``info`` raises it."""

    def exists(self, path, **kwargs):
        return False


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "cannot reach the object store"),
        (PermissionError(13, "Access Denied"), "the object store refused access"),
        (FileNotFoundError("somebucket"), "folder not found; check the path"),
    ],
)
def test_a_bucket_alone_is_not_found_only_when_the_store_says_so(error, said):
    data = DataInput("data", "uri_folder", "s3://somebucket")
    with pytest.raises(PlanningError) as err:
        plan_input(data, None, fs=BucketProbe(error))
    assert str(err.value).startswith(f"s3://somebucket: {said}"), err.value


def test_a_pattern_matching_nothing_is_refused(tmp_path):
    touch(tmp_path / "a.txt")
    mltable(tmp_path, "paths:\n  - pattern: ./*.parquet\n")
    with pytest.raises(PlanningError, match=r"\*\.parquet.*matches no file"):
        plan_input(table_input(tmp_path), None)


def test_a_missing_file_entry_is_named(tmp_path):
    mltable(tmp_path, "paths:\n  - file: ./gone.csv\n")
    with pytest.raises(PlanningError, match=r"gone\.csv: file not found"):
        plan_input(table_input(tmp_path), None)


def test_an_mltable_input_without_an_mltable_file_is_refused(tmp_path):
    touch(tmp_path / "a.csv")
    with pytest.raises(PlanningError, match="no MLTable file"):
        plan_input(table_input(tmp_path), None)


def test_a_uri_file_that_is_a_folder_is_refused(tmp_path):
    touch(tmp_path / "a.csv")
    with pytest.raises(PlanningError, match="is a folder"):
        plan_input(DataInput("d", "uri_file", str(tmp_path)), None)


def test_an_unresolved_azureml_url_is_refused_with_the_fix():
    with pytest.raises(PlanningError, match=r"azureml://.*unresolved.*daskprs.yaml"):
        plan_input(DataInput("d", "uri_folder", "azureml://datastores/ws/paths/x"), None)


def test_an_unknown_protocol_is_refused():
    with pytest.raises(PlanningError, match="unknown protocol 'nosuchproto'"):
        plan_input(DataInput("d", "uri_folder", "nosuchproto://bucket/x"), None)


def test_memory_urls_are_refused_as_inputs():
    with pytest.raises(PlanningError, match="memory://"):
        plan_input(DataInput("d", "uri_folder", "memory://x"), None)


def test_a_corrupt_parquet_footer_names_the_file(tmp_path):
    touch(tmp_path / "bad.parquet", "not parquet at all")
    mltable(tmp_path, "paths:\n  - pattern: ./*.parquet\ntransformations:\n  - read_parquet\n")
    with pytest.raises(PlanningError, match=r"bad\.parquet: cannot read the parquet footer"):
        plan_input(table_input(tmp_path), None)


def test_an_unknown_transformation_is_named_with_a_suggestion(tmp_path):
    touch(tmp_path / "a.csv")
    mltable(tmp_path, "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimted: {}\n")
    with pytest.raises(PlanningError, match=r"read_delimted.*did you mean 'read_delimited'"):
        plan_input(table_input(tmp_path), None)


# --------------------------------------------------------------------------------------------
# Tabular: byte ranges from metadata
# --------------------------------------------------------------------------------------------


def csv_table(folder: Path, options: str = "{}", pattern: str = "./*.csv", more: str = "") -> Path:
    return mltable(
        folder,
        f"paths:\n  - pattern: {pattern}\ntransformations:\n  - read_delimited: {options}\n{more}",
    )


def write_rows(path: Path, n: int, *, header: str = "a,b,c", newline: str = "\n") -> Path:
    lines = [header] if header else []
    lines += [f"{i},text {i},{i * 0.5}" for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


def test_byte_ranges_cover_file_at_line_boundaries(tmp_path):
    f = write_rows(tmp_path / "a.csv", 500)
    data = f.read_bytes()
    csv_table(tmp_path)
    plan = plan_input(table_input(tmp_path), MiniBatchSize(1000, "bytes"))
    assert plan.kind == "tabular" and not plan.scanned
    pieces = [b.pieces[0] for b in plan.batches]
    assert all(len(b.pieces) == 1 and isinstance(b, TableBatch) for b in plan.batches)
    assert pieces[0].start == 0 and pieces[0].skip_header
    assert not any(p.skip_header for p in pieces[1:])
    assert pieces[-1].end == len(data)
    for a, b in itertools.pairwise(pieces):
        assert a.end == b.start
        assert data[a.end - 1 : a.end] == b"\n"
    assert all(p.end > p.start for p in pieces)
    # about the requested size
    assert all(p.end - p.start < 1000 + 40 for p in pieces)
    assert len(pieces) == pytest.approx(len(data) / 1000, abs=2)
    assert pieces[0].n_rows is None and plan.batches[0].row_lower_bound is None
    assert plan.batches[0].read.columns == ("a", "b", "c")


def test_small_files_are_one_batch_each_never_crossing(tmp_path):
    write_rows(tmp_path / "a.csv", 3)
    write_rows(tmp_path / "b.csv", 0)  # header only
    (tmp_path / "c.csv").write_bytes(b"")  # empty file
    csv_table(tmp_path)
    plan = plan_input(table_input(tmp_path), None)
    assert [b.pieces[0].path for b in plan.batches] == [
        str(tmp_path / n) for n in ("a.csv", "b.csv", "c.csv")
    ]
    assert [b.pieces[0].skip_header for b in plan.batches] == [True, True, True]


def test_default_split_reads_no_data_rows(tmp_path):
    f = write_rows(tmp_path / "big.csv", 150_000)
    size = f.stat().st_size
    assert size > 3_000_000
    csv_table(tmp_path)
    fs = CountingFS()
    plan = plan_input(table_input(tmp_path), None, fs=fs)
    assert len(plan.batches) >= 3
    assert not plan.scanned
    data_bytes = fs.bytes_read - (tmp_path / "MLTable").stat().st_size
    # only the header and one small probe window per cut point were read
    assert data_bytes < 0.05 * size
    assert data_bytes <= (len(plan.batches) + 2) * 16 * 1024


def test_from_first_file_headers_are_read_from_the_first_file_only(tmp_path):
    write_rows(tmp_path / "a.csv", 5)
    write_rows(tmp_path / "b.csv", 5, header="")
    csv_table(tmp_path, "{header: from_first_file}")
    plan = plan_input(table_input(tmp_path), None)
    assert [b.pieces[0].skip_header for b in plan.batches] == [True, False]
    assert plan.batches[1].read.columns == ("a", "b", "c")


def test_without_a_header_no_line_is_skipped(tmp_path):
    write_rows(tmp_path / "a.csv", 50, header="")
    csv_table(tmp_path, "{header: no_header}")
    plan = plan_input(table_input(tmp_path), MiniBatchSize(100, "count"))
    assert len(plan.batches) > 3
    assert not any(b.pieces[0].skip_header for b in plan.batches)


def test_utf16_files_are_never_cut_into_byte_ranges(tmp_path):
    (tmp_path / "a.csv").write_text("a,b\n" + "1,2\n" * 200, encoding="utf-16")
    csv_table(tmp_path, "{encoding: utf16}")
    plan = plan_input(table_input(tmp_path), MiniBatchSize(100, "bytes"))
    assert len(plan.batches) == 1
    assert any("never cut" in n for n in plan.notes)


def test_a_plan_pickles_for_dask(tmp_path):
    write_rows(tmp_path / "a.csv", 100)
    csv_table(tmp_path)
    plan = plan_input(table_input(tmp_path), MiniBatchSize(300, "bytes"))
    again = pickle.loads(pickle.dumps(plan))
    assert isinstance(again, Plan) and again.batches == plan.batches


# --------------------------------------------------------------------------------------------
# Parquet: row groups from footers
# --------------------------------------------------------------------------------------------


def write_parquet(path: Path, start: int, n: int, row_group_size: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"a": list(range(start, start + n)), "s": [f"v{i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def parquet_table(folder: Path, more: str = "") -> Path:
    return mltable(
        folder,
        f"paths:\n  - pattern: ./*.parquet\ntransformations:\n  - read_parquet: {{}}\n{more}",
    )


def test_parquet_splits_by_row_groups_for_a_row_count(tmp_path):
    write_parquet(tmp_path / "a.parquet", 0, 1000, 100)
    write_parquet(tmp_path / "b.parquet", 1000, 250, 100)
    parquet_table(tmp_path)
    plan = plan_input(table_input(tmp_path), MiniBatchSize(300, "rows"))
    got = [(Path(b.pieces[0].path).name, b.pieces[0].row_groups, b.n_items) for b in plan.batches]
    assert got == [
        ("a.parquet", (0, 1, 2), 300),
        ("a.parquet", (3, 4, 5), 300),
        ("a.parquet", (6, 7, 8), 300),
        ("a.parquet", (9,), 100),
        ("b.parquet", (0, 1, 2), 250),
    ]
    assert [b.row_lower_bound for b in plan.batches] == [0, 300, 600, 900, 1000]
    assert not plan.scanned


def test_parquet_splits_by_row_group_bytes_from_footers_only(tmp_path):
    f = write_parquet(tmp_path / "a.parquet", 0, 20_000, 1000)
    parquet_table(tmp_path)
    fs = CountingFS()
    import pyarrow.parquet as pq

    md = pq.ParquetFile(f).metadata
    one_group = sum(md.row_group(0).column(j).total_compressed_size for j in range(2))
    budget = 3 * one_group
    plan = plan_input(table_input(tmp_path), MiniBatchSize(budget, "bytes"), fs=fs)
    groups = [b.pieces[0].row_groups for b in plan.batches]
    assert [g for group in groups for g in group] == list(range(20))
    assert 5 <= len(groups) <= 10
    for group in groups:
        size = sum(md.row_group(g).column(j).total_compressed_size for g in group for j in range(2))
        assert size <= budget or len(group) == 1
    assert sum(b.n_items for b in plan.batches) == 20_000
    assert fs.bytes_read < f.stat().st_size / 2  # the footer, not the data


def test_a_parquet_row_group_bigger_than_a_mini_batch_is_noted(tmp_path):
    write_parquet(tmp_path / "a.parquet", 0, 500, 500)
    parquet_table(tmp_path)
    plan = plan_input(table_input(tmp_path), MiniBatchSize(100, "rows"))
    assert len(plan.batches) == 1 and plan.batches[0].n_items == 500
    assert any("never split" in n for n in plan.notes)


# --------------------------------------------------------------------------------------------
# Scans: rows unit, multi-line, global take/skip
# --------------------------------------------------------------------------------------------


def test_a_row_count_unit_scans_csv_and_counts_rows(tmp_path):
    (tmp_path / "a.csv").write_text("a,b\n" + "".join(f"{i},x\n" for i in range(10)) + "\n\n")
    (tmp_path / "b.csv").write_text("a,b\r\n" + "\r\n".join(f"{i},y" for i in range(10, 15)))
    csv_table(tmp_path)
    plan = plan_input(table_input(tmp_path), MiniBatchSize(4, "rows"))
    assert plan.scanned and any("scanned" in n for n in plan.notes)
    assert [b.n_items for b in plan.batches] == [4, 4, 2, 4, 1]
    assert [b.row_lower_bound for b in plan.batches] == [0, 4, 8, 10, 14]
    assert plan.batches[2].pieces[0].end == (tmp_path / "a.csv").stat().st_size


def test_multi_line_cuts_never_inside_quotes(tmp_path):
    rows = ["id,text"]
    for i in range(100):
        rows.append(f'{i},"first {i}\nsecond ""quoted"" {i}\n"' if i % 2 else f"{i},plain")
    data = ("\n".join(rows) + "\n").encode()
    (tmp_path / "a.csv").write_bytes(data)
    csv_table(tmp_path, "{support_multi_line: true}")
    plan = plan_input(table_input(tmp_path), MiniBatchSize(50, "bytes"))
    assert plan.scanned
    starts = [b.pieces[0].start for b in plan.batches[1:]]
    # every range starts at a row (a digit), never inside a quoted field
    assert all(data[s : s + 1].isdigit() and data[s - 1 : s] == b"\n" for s in starts)
    for s in starts:
        assert data[:s].count(b'"') % 2 == 0
    assert sum(b.n_items for b in plan.batches) == 100


def test_a_global_take_and_skip_become_per_batch_bounds(tmp_path):
    (tmp_path / "a.csv").write_text("a\n" + "".join(f"{i}\n" for i in range(10)))
    (tmp_path / "b.csv").write_text("a\n" + "".join(f"{i}\n" for i in range(10, 20)))
    csv_table(tmp_path, "{}", more="  - skip: 3\n  - keep_columns: [a]\n  - take: 12\n")
    plan = plan_input(table_input(tmp_path), MiniBatchSize(6, "bytes"))
    assert plan.scanned
    assert sum(b.n_items for b in plan.batches) == 12
    assert plan.batches[0].row_lower_bound == 0
    names = [[t.name for t in b.read.transforms] for b in plan.batches]
    assert all("keep_columns" in n for n in names)
    assert names[0][0] == "skip"


def test_take_after_filter_not_yet_supported(tmp_path):
    (tmp_path / "a.csv").write_text("a\n1\n")
    csv_table(tmp_path, "{}", more="  - filter: 'col(\"a\") > 0'\n  - take: 1\n")
    with pytest.raises(PlanningError, match=r"take after filter.*not yet supported"):
        plan_input(table_input(tmp_path), None)


# --------------------------------------------------------------------------------------------
# Partition keys
# --------------------------------------------------------------------------------------------

KEYED = "  - extract_columns_from_partition_format: {partition_format: '{Store}/{Brand}/{f}.csv'}\n"


def keyed_folder(tmp_path: Path) -> Path:
    for store, brand, name in [
        ("S2", "b", "x"),
        ("S1", "b", "y"),
        ("S1", "a", "x"),
        ("S1", "b", "x"),
        ("S10", "a", "x"),
    ]:
        touch(tmp_path / store / brand / f"{name}.csv", "v\n1\n2\n")
    return tmp_path


def test_partition_keys_group_tabular_rows_by_key(tmp_path):
    keyed_folder(tmp_path)
    csv_table(tmp_path, "{}", pattern="./**/*.csv", more=KEYED)
    plan = plan_input(table_input(tmp_path), MiniBatchSize(1, "bytes"), ["Store", "Brand"])
    assert [b.keys for b in plan.batches] == [
        {"Store": "S1", "Brand": "a"},
        {"Store": "S1", "Brand": "b"},
        {"Store": "S10", "Brand": "a"},
        {"Store": "S2", "Brand": "b"},
    ]
    second = plan.batches[1]
    assert [Path(p.path).relative_to(tmp_path).as_posix() for p in second.pieces] == [
        "S1/b/x.csv",
        "S1/b/y.csv",
    ]
    assert all(p.start == 0 and p.skip_header for p in second.pieces)


def test_partition_keys_group_files_by_key(tmp_path):
    keyed_folder(tmp_path)
    mltable(tmp_path, f"paths:\n  - pattern: ./**/*.csv\ntransformations:\n{KEYED}")
    plan = plan_input(table_input(tmp_path, "ro_mount"), None, ["Brand"])
    assert plan.kind == "files"
    assert [(b.keys, len(b.files)) for b in plan.batches] == [
        ({"Brand": "a"}, 2),
        ({"Brand": "b"}, 3),
    ]


def test_bad_partition_keys_are_refused(tmp_path):
    keyed_folder(tmp_path)
    touch(tmp_path / "loose.csv", "v\n1\n")
    csv_table(tmp_path, "{}", pattern="./**/*.csv", more=KEYED)
    with pytest.raises(PlanningError, match=r"loose\.csv: the path \(below .*\) does not match"):
        plan_input(table_input(tmp_path), None, ["Store"])
    with pytest.raises(PlanningError, match=r"\['Shop'\] are not in the partition format"):
        plan_input(table_input(tmp_path), None, ["Shop"])
    with pytest.raises(PlanningError, match="need an MLTable input"):
        plan_input(folder_input(tmp_path), None, ["Store"])
