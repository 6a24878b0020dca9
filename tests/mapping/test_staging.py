"""Staging a Dask collection to one file per partition, and the manifest a resume reuses."""

from __future__ import annotations

import os

import dask.bag as db
import dask.dataframe as dd
import pandas as pd
import pytest

from daskprs.errors import UserInputError
from daskprs.inputs.readers import load_batch
from daskprs.mapping.staging import _stage_frame, load_staged, stage


def test_frames_pyarrow_cannot_store_are_pickled(tmp_path):
    plain = pd.DataFrame({"a": [1, 2]})
    mixed = pd.DataFrame({"m": [1, "two"]})
    assert _stage_frame(plain, str(tmp_path / "0"))[1:] == ("parquet", 2)
    path, fmt, rows = _stage_frame(mixed, str(tmp_path / "1"))
    assert (fmt, rows, path.endswith(".pkl")) == ("pickle", 2, True)
    assert sorted(os.listdir(tmp_path)) == ["0.parquet", "1.pkl"]  # no temporary files left


def test_partitions_are_staged_in_order_and_listed_for_a_resume(tmp_path, client):
    pdf = pd.DataFrame({"x": range(10)}, index=range(100, 110))
    batches = stage(dd.from_pandas(pdf, npartitions=3), str(tmp_path / "df"), client)
    assert [b.index for b in batches] == [0, 1, 2]
    assert [b.rows for b in batches] == [4, 3, 3]
    assert [b.row_lower_bound for b in batches] == [0, 4, 7]
    got = pd.concat(load_batch(b, cache_dir=str(tmp_path)) for b in batches)
    pd.testing.assert_frame_equal(got, pdf)
    assert load_staged(str(tmp_path / "df")) == batches
    os.remove(batches[1].path)
    assert load_staged(str(tmp_path / "df")) is None  # incomplete: staged again
    assert load_staged(str(tmp_path / "nothing")) is None

    bags = stage(db.from_sequence("abcde", npartitions=2), str(tmp_path / "bag"), client)
    assert [load_batch(b, cache_dir="") for b in bags] == [["a", "b", "c"], ["d", "e"]]
    assert [(b.format, b.row_lower_bound) for b in bags] == [("pickle", None)] * 2


def test_a_collection_that_fails_to_compute_says_so(tmp_path, client):
    broken = db.from_sequence([1, 0], npartitions=2).map(lambda x: 1 / x)
    with pytest.raises(UserInputError, match=r"ZeroDivisionError.*partitions\[0\]\.compute"):
        stage(broken, str(tmp_path / "bag"), client)
    assert load_staged(str(tmp_path / "bag")) is None
