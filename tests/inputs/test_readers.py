"""Loading mini-batches: byte-range pieces read back equal the whole files (no cluster)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from daskprs.inputs.batches import FileBatch, TableBatch, TablePiece
from daskprs.inputs.mltable import TableRead, csv_read_options
from daskprs.inputs.plan import plan_input
from daskprs.inputs.readers import BatchLoadError, load_batch
from daskprs.job.model import DataInput, MiniBatchSize

SIZES = [1, 2, 5, 17, 64, 100, 333, 1000, 10**6]


def mltable(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLTable").write_text(textwrap.dedent(text))
    return folder


def csv_table(folder: Path, options: str = "{}", pattern: str = "./*.csv", more: str = "") -> Path:
    return mltable(
        folder,
        f"paths:\n  - pattern: {pattern}\ntransformations:\n  - read_delimited: {options}\n{more}",
    )


def plan_and_load(folder: Path, size, tmp_path: Path, **kw):
    if isinstance(size, int):
        size = MiniBatchSize(size, "bytes")
    plan = plan_input(DataInput("d", "mltable", str(folder), None), size, **kw)  # type: ignore[arg-type]
    frames = [load_batch(b, cache_dir=str(tmp_path / "cache")) for b in plan.batches]
    return plan, frames


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True)


CONTENT = {
    "plain": "a,b,c\n1,x,0.5\n2,y,1.5\n3,z,2.5\n4,w,3.5\n5,v,4.5\n",
    "no_trailing_newline": "a,b,c\n1,x,0.5\n2,y,1.5\n3,z,2.5",
    "crlf": "a,b,c\r\n1,x,0.5\r\n2,y,1.5\r\n3,,2.5\r\n4,w,\r\n",
    "crlf_no_trailing": "a,b,c\r\n1,x,0.5\r\n2,y,1.5",
    "quotes": 'a,b,c\n1,"x, y",0.5\n2,"say ""hi""",1.5\n3,,NA\n4,null,\n',
    "unicode": "a,b,c\n1,é,0.5\n2,日本,1.5\n3,ü,2.5\n",
    "blank_lines": "a,b,c\n1,x,0.5\n\n2,y,1.5\n\n\n3,z,2.5\n\n",
    "header_only": "a,b,c\n",
    "long_rows": "a,b,c\n" + "".join(f"{i},{'w' * (i * 37 % 300)},{i}\n" for i in range(60)),
}


@pytest.mark.parametrize("name", sorted(CONTENT))
@pytest.mark.parametrize("size", SIZES)
def test_byte_split_equals_whole_file(tmp_path, name, size):
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.csv").write_bytes(CONTENT[name].encode())
    csv_table(data, "{infer_column_types: false}")
    plan, frames = plan_and_load(data, size, tmp_path)
    read = plan.batches[0].read
    expected = pd.read_csv(data / "f.csv", **csv_read_options(read))
    got = concat(frames)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_index_type=False)
    assert all(len(f) > 0 for f in frames) or name == "header_only"
    if size == 1:
        assert len(plan.batches) == max(len(expected), 1)


@pytest.mark.parametrize("size", SIZES)
def test_byte_split_many_rows_and_files(tmp_path, size):
    data = tmp_path / "data"
    data.mkdir()
    rows = [f"{i},name {i},{i * 0.25}" for i in range(300)]
    (data / "a.csv").write_text("a,b,c\n" + "\n".join(rows[:120]) + "\n")
    (data / "b.csv").write_text("a,b,c\r\n" + "\r\n".join(rows[120:]))
    csv_table(data)
    plan, frames = plan_and_load(data, size, tmp_path)
    got = concat(frames)
    assert got["a"].tolist() == list(range(300))  # every row once, in order
    assert got["b"].tolist() == [f"name {i}" for i in range(300)]
    assert got["c"].tolist() == [i * 0.25 for i in range(300)]
    assert all(len(b.pieces) == 1 for b in plan.batches)
    assert len({b.pieces[0].path for b in plan.batches}) == 2


@pytest.mark.parametrize("size", [1, 30, 10**6])
def test_header_modes(tmp_path, size):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("h1,h2\n1,x\n2,\n")
    (data / "b.csv").write_text("h1,h2\n3,z\n4,q\n")
    (data / "c.csv").write_text("k1,k2\n5,w\n")
    base = (data / "a.csv", data / "b.csv", data / "c.csv")

    def run(mode: str) -> pd.DataFrame:
        csv_table(data, f"{{header: {mode}, infer_column_types: false}}")
        return concat(plan_and_load(data, size, tmp_path)[1])

    # values checked against mltable 1.7.0 on the same folder
    same = run("all_files_same_headers")
    assert same.columns.tolist() == ["h1", "h2"]
    assert same.fillna("<NA>").values.tolist() == [
        ["1", "x"],
        ["2", "<NA>"],
        ["3", "z"],
        ["4", "q"],
        ["5", "w"],
    ]
    first = run("from_first_file")
    assert first.columns.tolist() == ["h1", "h2"]
    assert first["h1"].tolist() == ["1", "2", "h1", "3", "4", "k1", "5"]
    none = run("no_header")
    assert none.columns.tolist() == ["Column1", "Column2"]
    assert none["Column1"].tolist() == ["h1", "1", "2", "h1", "3", "4", "k1", "5"]
    different = run("all_files_different_headers")
    assert different.columns.tolist() == ["h1", "h2", "k1", "k2"]
    assert different["k1"].tolist()[-1] == "5"
    assert different["h1"].tolist()[:4] == ["1", "2", "3", "4"]
    assert len(base) == 3


def test_empty_as_string_and_na_text(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("a,b\n1,\n2,NA\n3,null\n")
    csv_table(data, "{empty_as_string: true}")
    got = concat(plan_and_load(data, None, tmp_path)[1])
    assert got["b"].tolist() == ["", "NA", "null"]
    csv_table(data, "{}")
    got = concat(plan_and_load(data, None, tmp_path)[1])
    assert got["b"].isna().tolist() == [True, False, False]


def test_delimiter_encoding_and_path_column(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_bytes("a;b\n1;é\n2;ü\n".encode("latin-1"))
    csv_table(data, "{delimiter: ';', encoding: latin1, include_path_column: true}")
    got = concat(plan_and_load(data, 1, tmp_path)[1])
    assert got.columns.tolist() == ["Path", "a", "b"]
    assert got["b"].tolist() == ["é", "ü"]
    assert got["Path"].tolist() == [str(data / "a.csv")] * 2


def test_infer_types_per_batch(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("n,f,s\n" + "".join(f"{i},{i}.5,s{i}\n" for i in range(50)))
    csv_table(data)
    _, frames = plan_and_load(data, 100, tmp_path)
    assert all(f["n"].dtype == "int64" and f["f"].dtype == "float64" for f in frames)
    csv_table(data, "{infer_column_types: false}")
    _, frames = plan_and_load(data, 100, tmp_path)
    assert all(pd.api.types.is_string_dtype(f["n"]) for f in frames)


def test_json_lines_split(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    records = [{"i": i, "s": f"v{i}", "nested": {"k": i}} for i in range(100)]
    (data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    mltable(data, "paths:\n  - pattern: ./*.jsonl\ntransformations:\n  - read_json_lines: {}\n")
    for size in (1, 50, 1000, 10**6):
        plan, frames = plan_and_load(data, size, tmp_path)
        got = concat(frames)
        assert got["i"].tolist() == list(range(100))
        assert got["nested"].tolist() == [{"k": i} for i in range(100)]
        assert not any(b.pieces[0].skip_header for b in plan.batches)


def test_json_lines_invalid(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    mltable(data, "paths:\n  - pattern: ./*.jsonl\ntransformations:\n  - read_json_lines: {}\n")
    with pytest.raises(BatchLoadError, match=r"a\.jsonl bytes \[0:\d+\).*not a JSON object"):
        plan_and_load(data, None, tmp_path)
    mltable(
        data,
        "paths:\n  - pattern: ./*.jsonl\ntransformations:\n"
        "  - read_json_lines: {invalid_lines: drop}\n",
    )
    assert concat(plan_and_load(data, None, tmp_path)[1])["a"].tolist() == [1, 2]


def test_read_failure_names_file_and_range(tmp_path):
    read = TableRead("delimited")
    batch = TableBatch(3, (TablePiece(str(tmp_path / "gone.csv"), 10, 20),), read)
    with pytest.raises(BatchLoadError, match=r"gone\.csv bytes \[10:20\)"):
        load_batch(batch, cache_dir=str(tmp_path))


def test_file_batch_local_and_direct(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("x")
    assert load_batch(FileBatch(0, (str(f),)), cache_dir=str(tmp_path / "c")) == [str(f)]
    urls = ("s3://bucket/a.txt", "s3://bucket/b.txt")
    assert load_batch(FileBatch(0, urls, direct=True), cache_dir=str(tmp_path)) == list(urls)
    with pytest.raises(BatchLoadError, match=r"gone\.txt: file not found"):
        load_batch(FileBatch(0, (str(tmp_path / "gone.txt"),)), cache_dir=str(tmp_path))


def test_file_batch_remote_downloads_to_cache(tmp_path):
    import fsspec

    # a file:// URL goes through the same download path as s3://
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "x" / "a.txt").write_text("one")
    (src / "a.txt").write_text("two")
    urls = (f"file://{src}/x/a.txt", f"file://{src}/a.txt")
    cache = tmp_path / "cache"
    got = load_batch(FileBatch(0, urls), cache_dir=str(cache))
    assert [Path(p).read_text() for p in got] == ["one", "two"]
    assert len(set(got)) == 2 and all(p.startswith(str(cache)) for p in got)
    assert [os.path.basename(p) for p in got] == ["a.txt", "a.txt"]
    assert load_batch(FileBatch(0, urls), cache_dir=str(cache)) == got  # reused
    assert fsspec.filesystem("file").exists(got[0])


# --------------------------------------------------------------------------------------------
# Parquet, scans, take/skip, keys
# --------------------------------------------------------------------------------------------


def write_parquet(path: Path, start: int, n: int, row_group_size: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"a": list(range(start, start + n)), "s": [f"v{i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("size", [MiniBatchSize(7, "rows"), MiniBatchSize(300, "bytes"), None])
def test_parquet_round_trip(tmp_path, size):
    data = tmp_path / "data"
    data.mkdir()
    write_parquet(data / "a.parquet", 0, 100, 10)
    write_parquet(data / "b.parquet", 100, 35, 10)
    mltable(
        data,
        "paths:\n  - pattern: ./*.parquet\ntransformations:\n"
        "  - read_parquet: {include_path_column: true}\n",
    )
    plan, frames = plan_and_load(data, size, tmp_path)
    assert [len(f) for f in frames] == [b.n_items for b in plan.batches]
    got = concat(frames)
    assert got["a"].tolist() == list(range(135))
    assert got.columns.tolist() == ["Path", "a", "s"]
    assert got["Path"].iloc[-1] == str(data / "b.parquet")


@pytest.mark.parametrize("rows", [1, 3, 7, 1000])
def test_rows_unit_round_trip(tmp_path, rows):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("a,b\n" + "".join(f"{i},x{i}\n" for i in range(40)) + "\n")
    (data / "b.csv").write_text("a,b\n\n" + "\n".join(f"{i},y{i}" for i in range(40, 50)))
    csv_table(data)
    plan, frames = plan_and_load(data, MiniBatchSize(rows, "rows"), tmp_path)
    assert [len(f) for f in frames] == [b.n_items for b in plan.batches]
    assert all(len(f) <= rows for f in frames)
    assert concat(frames)["a"].tolist() == list(range(50))


@pytest.mark.parametrize("size", [1, 20, 100, 10**6, MiniBatchSize(3, "rows")])
def test_multi_line_round_trip(tmp_path, size):
    data = tmp_path / "data"
    data.mkdir()
    rows = ["id,text,n"]
    for i in range(60):
        text = f'"a {i}\nb ""{i}"",\r\nc"' if i % 4 == 0 else f"t{i}"
        rows.append(f"{i},{text},{i}")
    (data / "a.csv").write_text("\n".join(rows) + "\n")
    csv_table(data, "{support_multi_line: true}")
    plan, frames = plan_and_load(data, size, tmp_path)
    expected = pd.read_csv(data / "a.csv", keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(concat(frames), expected, check_dtype=False)
    if size != 10**6:
        assert plan.scanned
        assert [len(f) for f in frames] == [b.n_items for b in plan.batches]


@pytest.mark.parametrize("size", [1, 15, 10**6, MiniBatchSize(4, "rows")])
@pytest.mark.parametrize(
    "ops, rows",
    [
        ("  - skip: 3\n  - take: 12\n", list(range(3, 15))),
        ("  - take: 5\n", list(range(5))),
        ("  - skip: 18\n", [18, 19]),
        ("  - take: 12\n  - skip: 10\n  - take: 1\n", [10]),
        ("  - skip: 30\n", []),
        ("  - skip: 2\n  - take: 10\n  - filter: 'col(\"a\") % 3 == 0'\n", [3, 6, 9]),
    ],
)
def test_global_take_skip_round_trip(tmp_path, size, ops, rows):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("a\n" + "".join(f"{i}\n" for i in range(10)))
    (data / "b.csv").write_text("a\n" + "".join(f"{i}\n" for i in range(10, 20)))
    csv_table(data, more=ops)
    plan, frames = plan_and_load(data, size, tmp_path)
    got = concat(frames) if frames else pd.DataFrame({"a": []})
    assert got["a"].tolist() == rows
    if frames and "filter" not in ops:
        assert [len(f) for f in frames] == [b.n_items for b in plan.batches]
        assert all(len(f) for f in frames)


def test_global_take_skip_parquet(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_parquet(data / "a.parquet", 0, 100, 10)
    write_parquet(data / "b.parquet", 100, 100, 10)
    mltable(
        data,
        "paths:\n  - pattern: ./*.parquet\ntransformations:\n  - read_parquet\n"
        "  - skip: 95\n  - take: 20\n",
    )
    plan, frames = plan_and_load(data, MiniBatchSize(30, "rows"), tmp_path)
    assert not plan.scanned
    assert concat(frames)["a"].tolist() == list(range(95, 115))
    assert [b.row_lower_bound for b in plan.batches] == [0, 5]


def test_partition_keys_round_trip(tmp_path):
    data = tmp_path / "data"
    for store, brand, v in [("S1", "a", 1), ("S1", "b", 2), ("S2", "a", 3), ("S1", "a", 4)]:
        (data / store / brand).mkdir(parents=True, exist_ok=True)
        (data / store / brand / f"f{v}.csv").write_text(f"v\n{v}\n{v * 10}\n")
    csv_table(
        data,
        pattern="./**/*.csv",
        more="  - extract_columns_from_partition_format: "
        "{partition_format: '{Store}/{Brand}/{file_name}.csv'}\n",
    )
    plan, frames = plan_and_load(data, None, tmp_path, partition_keys=["Store", "Brand"])
    assert [b.keys for b in plan.batches] == [
        {"Store": "S1", "Brand": "a"},
        {"Store": "S1", "Brand": "b"},
        {"Store": "S2", "Brand": "a"},
    ]
    first = frames[0]
    assert first["v"].tolist() == [1, 10, 4, 40]
    assert first["Store"].tolist() == ["S1"] * 4
    assert first["file_name"].tolist() == ["f1", "f1", "f4", "f4"]


def test_filter_to_empty_and_header_only_give_empty_frames(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.csv").write_text("a,b\n1,x\n")
    (data / "b.csv").write_text("a,b\n")
    csv_table(data, more="  - filter: 'col(\"a\") > 5'\n")
    _, frames = plan_and_load(data, None, tmp_path)
    assert [len(f) for f in frames] == [0, 0]
    assert all(f.columns.tolist() == ["a", "b"] for f in frames)


def test_staged_partitions_load_as_they_were_staged(tmp_path):
    import pickle

    from daskprs.inputs.batches import StagedBatch

    df = pd.DataFrame({"a": [1, 2, 3]}, index=[7, 8, 9])
    df.to_parquet(tmp_path / "0.parquet")
    with open(tmp_path / "1.pkl", "wb") as f:
        pickle.dump(["x", {"y": 1}], f)
    frame = StagedBatch(0, str(tmp_path / "0.parquet"), "parquet", 3, row_lower_bound=0)
    items = StagedBatch(1, str(tmp_path / "1.pkl"), "pickle", 2)
    pd.testing.assert_frame_equal(load_batch(frame, cache_dir=str(tmp_path)), df)
    assert load_batch(items, cache_dir=str(tmp_path)) == ["x", {"y": 1}]
    assert frame.n_items == 3 and frame.describe()["partition"] == 0
    assert repr(items) == "StagedBatch(1: partition 1, 2 rows)"
    gone = StagedBatch(2, str(tmp_path / "2.pkl"), "pickle", 1)
    with pytest.raises(BatchLoadError, match=r"staged partition 2 .*2\.pkl"):
        load_batch(gone, cache_dir=str(tmp_path))
