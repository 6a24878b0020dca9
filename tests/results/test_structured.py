"""Structured parts (map_batches): rows kept as data, read back; the result object."""

from __future__ import annotations

import io
import json
import threading

import pandas as pd
import pytest

from daskprs.errors import JobFailed, UserInputError
from daskprs.job.files import read_step_settings
from daskprs.results.formatting import (
    PART_FORMAT,
    format_rows,
    structured_part_options,
    write_rows,
)
from daskprs.results.mapresult import FailedPartition, MapResult
from daskprs.results.structured import PartFormatError, read_part, write_structured


def roundtrip(value, tmp_path):
    path = tmp_path / "p.part"
    with open(path, "wb") as f:
        write_rows(value, f, structured_part_options())
    return path, read_part(str(path))


def test_a_dataframe_part_is_parquet_with_index_and_dtypes(tmp_path):
    df = pd.DataFrame(
        {"a": [1, 2], "b": ["x", "y"], "t": pd.to_datetime(["2024-01-01", "2024-01-02"])},
        index=pd.Index([10, 11], name="row"),
    )
    path, back = roundtrip(df, tmp_path)
    assert path.read_bytes()[:4] == b"PAR1"
    pd.testing.assert_frame_equal(back, df)


def test_a_dataframe_pyarrow_cannot_store_is_pickled(tmp_path):
    df = pd.DataFrame({"mixed": [1, "two", 3.0]})
    path, back = roundtrip(df, tmp_path)
    assert path.read_bytes()[:4] != b"PAR1"
    pd.testing.assert_frame_equal(back, df)


def test_lists_and_tuples_come_back_as_lists(tmp_path):
    assert roundtrip([1, {"a": 2}, None], tmp_path)[1] == [1, {"a": 2}, None]
    assert roundtrip(("x", "y"), tmp_path)[1] == ["x", "y"]
    assert roundtrip([lambda: 3], tmp_path)[1][0]() == 3  # cloudpickle stores what pickle cannot


def test_values_that_cannot_be_stored_say_so():
    with pytest.raises(PartFormatError, match="cannot be pickled"):
        write_structured([threading.Lock()], io.BytesIO())


def test_text_parts_are_unchanged_without_the_reserved_option():
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert format_rows(df) == b"1 x\n2 y\n"
    assert format_rows(["a", 1]) == b"a\n1\n"


def test_a_settings_file_cannot_ask_for_structured_parts(tmp_path):
    (tmp_path / "parallel_run_step.settings.json").write_text(
        json.dumps({"append_row": {"pandas.DataFrame.to_csv": {PART_FORMAT: "structured"}}})
    )
    with pytest.raises(ValueError, match=f"has no option {PART_FORMAT!r}"):
        read_step_settings(str(tmp_path))


def result(**kw) -> MapResult:
    summary = {"total": 3, "done": 2, "failed": 1, "cancelled": 0}
    summary |= {"succeeded_items": 20, "failed_items": 10}
    return MapResult(run_dir="/runs/r<1>", summary=summary, **{"failure": None, **kw})


def test_status_and_raise_for_status():
    failed = [FailedPartition(1, "RUN_EXCEPTION", 3, "ValueError: <b>bad</b> & worse")]
    assert result().status == "succeeded" and result().ok
    assert result(failed=failed).status == "succeeded with failures"
    bad = result(failure="2 mini-batches failed, over mini_batch_error_threshold (1)")
    assert bad.status == "failed" and not bad.ok
    with pytest.raises(JobFailed, match="mini_batch_error_threshold"):
        bad.raise_for_status()
    result(failed=failed).raise_for_status()


def test_the_html_view_is_a_table_with_escaped_errors():
    failed = [FailedPartition(1, "RUN_EXCEPTION", 3, "ValueError: <b>bad</b> & worse")]
    bad = result(failed=failed, failure="over <budget>")
    assert repr(bad).startswith("MapResult(failed: 2 of 3 partitions done, 1 failed")
    html = bad._repr_html_()
    assert "<table>" in html and "failed" in html
    assert "ValueError: &lt;b&gt;bad&lt;/b&gt; &amp; worse" in html
    assert "over &lt;budget&gt;" in html and "/runs/r&lt;1&gt;" in html
    assert "<b>bad</b>" not in html
    many = [FailedPartition(i, "RUN_TIMEOUT", 1, "slow") for i in range(25)]
    assert "... and 5 more" in result(failed=many)._repr_html_()


def test_no_output_when_nothing_succeeded():
    with pytest.raises(UserInputError, match="no partition produced output"):
        _ = result().output


def test_run_returning_different_kinds_is_named_on_compute(tmp_path):
    parts = {}
    for mb, value in enumerate([pd.DataFrame({"a": [1]}), ["x"]]):
        path = tmp_path / f"{mb}.part"
        with open(path, "wb") as f:
            write_structured(value, f)
        parts[mb] = str(path)
    out = result(parts=parts).output
    with pytest.raises(TypeError, match="returned a list for partition 1 but a DataFrame"):
        out.compute(scheduler="sync")


def test_raise_for_status_can_refuse_any_failed_partition():
    failed = [FailedPartition(1, "RUN_EXCEPTION", 3, "ValueError: bad row")]
    with pytest.raises(JobFailed, match=r"1 partition failed: 1 \(RUN_EXCEPTION: ValueError"):
        result(failed=failed).raise_for_status(allow_failed=False)
    result().raise_for_status(allow_failed=False)
