"""The MLTable file: parsing, the filter language, transformations (pure; no cluster)."""

from __future__ import annotations

import pickle
import textwrap

import pandas as pd
import pytest

from daskprs.errors import PlanningError
from daskprs.inputs.mltable import (
    MLTableSpec,
    TableRead,
    Transform,
    apply_transforms,
    join_path,
    load_mltable,
    match_partition_format,
    parse_filter,
    parse_mltable,
    partition_columns,
)


def parse(text: str, folder: str = "/data/t") -> MLTableSpec:
    return parse_mltable(textwrap.dedent(text), folder)


def read_with(*transforms: str, **options) -> TableRead:
    """A TableRead from transformation YAML lines after read_delimited."""
    body = "".join(f"  - {t}\n" for t in transforms)
    spec = parse(f"paths: [{{file: a.csv}}]\ntransformations:\n  - read_delimited: {{}}\n{body}")
    assert spec.read is not None
    return TableRead(**{**spec.read.__dict__, **options})


FRAME = pd.DataFrame(
    {
        "a": [1, 2, 3, 4, 5],
        "b": ["x", "y", "x", "z", None],
        "c": ["1.5", "2", "bad", "4", ""],
    }
)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def test_paths_resolved_against_folder():
    spec = parse(
        """\
        paths:
          - file: ./a.csv
          - folder: sub/dir/
          - pattern: ../other/**/*.csv
          - file: /abs/x.csv
          - pattern: s3://bucket/k/*.parquet
        """
    )
    assert [(p.kind, p.path) for p in spec.paths] == [
        ("file", "/data/t/a.csv"),
        ("folder", "/data/t/sub/dir"),
        ("pattern", "/data/other/**/*.csv"),
        ("file", "/abs/x.csv"),
        ("pattern", "s3://bucket/k/*.parquet"),
    ]
    assert spec.read is None and spec.source == "/data/t/MLTable"
    assert join_path("s3://b/t", "./x/../y.csv") == "s3://b/t/y.csv"


def test_read_delimited_options():
    spec = parse(
        """\
        type: mltable
        paths: [{pattern: ./*.csv}]
        transformations:
          - read_delimited:
              delimiter: ";"
              encoding: latin1
              header: no_header
              empty_as_string: true
              include_path_column: true
              infer_column_types: false
              support_multi_line: true
          - take: 5
        traits:
          index_columns: [a]
        metadata: {anything: 1}
        """
    )
    r = spec.read
    assert r is not None
    assert (r.reader, r.delimiter, r.encoding, r.codec, r.header) == (
        "delimited",
        ";",
        "latin1",
        "latin-1",
        "no_header",
    )
    assert r.empty_as_string and r.include_path_column and r.support_multi_line
    assert not r.infer_column_types
    assert r.transforms == (Transform("take", 5),)
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_defaults_and_other_readers():
    r = parse("paths: [{file: a.csv}]\ntransformations: [read_delimited]\n").read
    assert r == TableRead("delimited", source="/data/t/MLTable")
    assert r.header == "all_files_same_headers" and r.infer_column_types
    assert r.codec == "utf-8" and r.has_header(False)
    p = parse("paths: [{file: a.parquet}]\ntransformations: [{read_parquet: {}}]\n").read
    assert p.reader == "parquet" and not p.has_header(True)
    j = parse(
        "paths: [{file: a.jsonl}]\ntransformations:\n"
        "  - read_json_lines: {invalid_lines: drop, encoding: utf8bom}\n"
    ).read
    assert (j.reader, j.invalid_lines, j.codec) == ("json_lines", "drop", "utf-8-sig")
    ff = parse("paths: [{file: a}]\ntransformations: [{read_delimited: {header: from_first_file}}]")
    assert ff.read.has_header(True) and not ff.read.has_header(False)


def test_partition_format_forms():
    a = parse(
        "paths: [{folder: .}]\ntransformations:\n"
        "  - read_delimited: {}\n"
        "  - extract_columns_from_partition_format: {partition_format: '{A}/{B}/{f}.csv'}\n"
    )
    b = parse(
        "paths: [{folder: .}]\ntransformations:\n"
        "  - extract_columns_from_partition_format: '{A}/{B}/{f}.csv'\n"
    )
    assert a.partition_format == b.partition_format == "{A}/{B}/{f}.csv"
    assert a.read.partition_format == "{A}/{B}/{f}.csv"
    assert b.read is None and not b.notes


def test_transforms_without_read_are_noted():
    spec = parse("paths: [{folder: .}]\ntransformations:\n  - take: 3\n")
    assert spec.read is None and "take not applied" in spec.notes[0]


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "paths: [{file: a}]\ntransformations: [{read_csv: {}}]",
            r"unknown transformation 'read_csv'",
        ),
        ("paths: [{file: a}]\ntransformations: [{tak: 3}]", r"'tak'.*did you mean 'take'"),
        (
            "paths: [{file: a}]\ntransformations: [{read_delimited: {delimeter: ';'}}]",
            r"'delimeter'.*'delimiter'",
        ),
        (
            "paths: [{file: a}]\ntransformations: [{read_delimited: {header: first}}]",
            "header 'first' is unknown",
        ),
        (
            "paths: [{file: a}]\ntransformations: [{read_delimited: {encoding: ebcdic}}]",
            "unknown encoding",
        ),
        ("paths: [{file: a}]\ntransformations: [{take: -1}]", "row count >= 0"),
        ("paths: [{file: a}]\ntransformations: [{filter: 'import os'}]", "not a valid expression"),
        (
            "paths: [{file: a}]\ntransformations: [{read_delta_lake: {}}]",
            "read_delta_lake is not supported",
        ),
        ("paths: [{file: a}]\ntransformations: [read_parquet, read_parquet]", "only one read"),
        (
            "paths: [{file: a}]\ntransformations:\n"
            "  - convert_column_types: [{columns: a, column_type: date}]",
            "unknown column type",
        ),
        ("paths: [{files: a}]", r"unknown kind 'files'.*'file'"),
        ("paths: []", "non-empty list"),
        ("path: [{file: a}]", r"unknown key 'path'.*'paths'"),
        (
            "paths: [{file: a}]\ntransformations:\n"
            "  - extract_columns_from_partition_format: 'no/columns'",
            "names no column",
        ),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_errors_name_the_file_and_the_fix(text, message):
    with pytest.raises(PlanningError, match=message) as info:
        parse_mltable(text, "/data/t")
    assert "/data/t/MLTable" in str(info.value)


def test_load_mltable_from_folder_or_file(tmp_path):
    (tmp_path / "MLTable").write_text("paths: [{pattern: ./*.csv}]\n")
    assert load_mltable(str(tmp_path)).paths[0].path == f"{tmp_path}/*.csv"
    assert load_mltable(str(tmp_path / "MLTable")).folder == str(tmp_path)
    with pytest.raises(PlanningError, match="no MLTable file"):
        load_mltable(str(tmp_path / "nope"))


# --------------------------------------------------------------------------------------------
# The filter language
# --------------------------------------------------------------------------------------------


def run_filter(expr: str, df: pd.DataFrame = FRAME) -> list:
    return apply_transforms(df, read_with(f"filter: '{expr}'"), "/x.csv")["a"].tolist()


@pytest.mark.parametrize(
    "expr, rows",
    [
        ('col("a") > 3', [4, 5]),
        ('col("a") > 1 and col("b") == "x"', [3]),
        ('col("a") == 1 or col("b") == "z"', [1, 4]),
        ('not col("a") > 3', [1, 2, 3]),
        ('1 < col("a") <= 3', [2, 3]),
        ('col("a") + 1 > 5', [5]),
        ('col("a") % 2 == 0', [2, 4]),
        ('col("b") in ["y", "z"]', [2, 4]),
        ('col("b") not in ["x"]', [2, 4, 5]),
        ('col("b").startswith("x")', [1, 3]),
        ('col("b").isnull()', [5]),
        ('col("c") >= 2', [2, 4]),  # a string column compared with a number
        ('col("c") == "bad"', [3]),
        ('(col("a") > 1) & (col("a") < 4)', [2, 3]),
        ("True", [1, 2, 3, 4, 5]),
        ('col("a") > -1', [1, 2, 3, 4, 5]),
    ],
)
def test_filter_expressions(expr, rows):
    assert run_filter(expr) == rows


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('echo hi')",
        "open('/etc/passwd')",
        'col("a").__class__',
        "col('a').__class__.__bases__",
        "(lambda: 1)()",
        "[x for x in ()]",
        "a > 1",
        "col(a) > 1",
        'col("a") if True else 1',
        'col("a").apply(print)',
        "getattr(col('a'), 'x')",
        "f'{1}'",
        'col("a") > 1; x',
        "x := 1",
        "{1: 2}",
        "b'x' == 1",
    ],
)
def test_filter_rejects_everything_else(expr):
    with pytest.raises(ValueError, match=r"not allowed|not a valid expression"):
        parse_filter(expr)


def test_filter_unknown_column_is_a_clear_error():
    with pytest.raises(KeyError, match="no column 'zz'"):
        run_filter('col("zz") > 1')


# --------------------------------------------------------------------------------------------
# Transformations
# --------------------------------------------------------------------------------------------


def test_keep_drop_take_skip():
    df = apply_transforms(FRAME, read_with("keep_columns: [b, a]", "skip: 1", "take: 2"), "/x")
    # the table's column order is kept, not the listed one (as mltable does)
    assert df.columns.tolist() == ["a", "b"] and df["a"].tolist() == [2, 3]
    df = apply_transforms(FRAME, read_with("drop_columns: c"), "/x")
    assert df.columns.tolist() == ["a", "b"]
    df = apply_transforms(FRAME, read_with("keep_columns: {pattern: '[ab]'}"), "/x")
    assert df.columns.tolist() == ["a", "b"]
    df = apply_transforms(FRAME, read_with("drop_columns: {pattern: 'A', ignore_case: true}"), "/x")
    assert df.columns.tolist() == ["b", "c"]
    with pytest.raises(KeyError, match=r"keep_columns on /x: no column\(s\) \['q'\]"):
        apply_transforms(FRAME, read_with("keep_columns: [q]"), "/x")


def test_convert_column_types():
    df = pd.DataFrame(
        {
            "i": ["1", "2", "3"],
            "j": ["1", "", "3"],
            "f": ["1.5", "x", "2"],
            "s": [1, 2, 3],
            "t": ["yes", "no", "maybe"],
            "d": ["2024-01-02", "03/01/2024", "bad"],
        }
    )
    read = read_with(
        "convert_column_types:\n"
        "      - {columns: [i, j], column_type: int}\n"
        "      - {columns: f, column_type: float}\n"
        "      - {columns: s, column_type: string}\n"
        "      - {columns: t, column_type: {boolean: {mismatch_as: 'false'}}}\n"
        "      - {columns: d, column_type: {datetime: {formats: ['%Y-%m-%d', '%d/%m/%Y']}}}\n"
    )
    out = apply_transforms(df, read, "/x")
    assert out["i"].dtype == "int64" and out["i"].tolist() == [1, 2, 3]
    assert out["j"].dtype == "float64" and out["j"].isna().tolist() == [False, True, False]
    assert out["f"].isna().tolist() == [False, True, False]
    assert out["s"].tolist() == ["1", "2", "3"]
    assert out["t"].tolist() == [True, False, False]
    assert out["d"].tolist()[:2] == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]
    assert pd.isna(out["d"].iloc[2])


def test_infer_column_type_overrides_become_a_conversion():
    spec = parse(
        "paths: [{file: a.csv}]\ntransformations:\n"
        "  - read_delimited:\n"
        "      infer_column_types:\n"
        "        sample_size: 10\n"
        "        column_type_overrides: [{columns: a, column_type: float}]\n"
    )
    assert spec.read.transforms[0].name == "convert_column_types"


def test_path_column_and_partition_columns():
    read = read_with(
        "extract_columns_from_partition_format: "
        "{partition_format: '/{Store}/{Brand}/{file_name}.csv'}",
        include_path_column=True,
    )
    out = apply_transforms(FRAME.head(2), read, "/data/t/S1/B2/f.csv")
    assert out.columns.tolist() == ["Path", "a", "b", "c", "Store", "Brand", "file_name"]
    assert out["Store"].tolist() == ["S1", "S1"] and out["file_name"].tolist() == ["f", "f"]
    assert out["Path"].tolist() == ["/data/t/S1/B2/f.csv"] * 2
    miss = apply_transforms(FRAME.head(1), read, "/elsewhere.txt")
    assert miss["Store"].isna().all()


def test_partition_format_matching():
    fmt = "{Store}/*/{file_name}.csv"
    assert partition_columns(fmt) == ("Store", "file_name")
    # matched against the end of the path, as mltable does
    assert match_partition_format(fmt, "s3://b/root/S1/x/f.csv") == {
        "Store": "S1",
        "file_name": "f",
    }
    assert match_partition_format(fmt, "/r/f.csv") is None
    dated = "{Store}/{day:yyyy/MM/dd}/{f}.csv"
    assert match_partition_format(dated, "/x/S/2024/01/31/a.csv") == {
        "Store": "S",
        "day": "2024/01/31",
        "f": "a",
    }
    out = apply_transforms(
        FRAME.head(1),
        read_with(f"extract_columns_from_partition_format: '{dated}'"),
        "/x/S/2024/01/31/a.csv",
    )
    assert out["day"].iloc[0] == pd.Timestamp("2024-01-31")


def test_take_random_sample_is_deterministic_per_seed_and_piece():
    df = pd.DataFrame({"a": range(2000)})
    read = read_with("take_random_sample: {probability: 0.25, seed: 7}")
    one = apply_transforms(df, read, "/x", salt="/x:0")
    assert one["a"].tolist() == apply_transforms(df, read, "/x", salt="/x:0")["a"].tolist()
    assert one["a"].tolist() != apply_transforms(df, read, "/x", salt="/x:99")["a"].tolist()
    assert 400 < len(one) < 600


def test_iso_dates_inferred_like_mltable():
    from daskprs.inputs.mltable import infer_dates

    df = pd.DataFrame(
        {"d": ["2024-01-02", None, "2024-01-03 10:00:00"], "s": ["2024-01-02", "x", None]}
    )
    out = infer_dates(df)
    assert out["d"].dtype == "datetime64[ns]" and pd.isna(out["d"].iloc[1])
    assert out["s"].tolist()[:2] == ["2024-01-02", "x"]


@pytest.mark.parametrize(
    ("values", "converted"),
    [
        (["2024-01-02", "2024-01-03T04:05:06.5", None], True),
        (["2024-01-02", "2024-01-03", "2024-1-04"], False),  # one value is no ISO date
        (["2024-01-02", 20240103, "2024-01-04"], False),  # a value that is no string
        (["2024-01-02", "2024-01-03 noon"], False),
        # digits of another script are not ISO
        (["\u0662\u0660\u0662\u0664-\u0660\u0661-\u0660\u0662"], False),
    ],
)
def test_a_column_becomes_dates_only_when_every_value_is_an_iso_date(values, converted):
    from daskprs.inputs.mltable import infer_dates

    out = infer_dates(pd.DataFrame({"d": pd.Series(values, dtype=object)}))
    assert (out["d"].dtype == "datetime64[ns]") is converted
