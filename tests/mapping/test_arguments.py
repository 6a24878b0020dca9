"""map_batches refuses bad arguments before it writes or runs anything, saying how to fix them."""

from __future__ import annotations

import threading

import dask.bag as db
import dask.dataframe as dd
import pandas as pd
import pytest

import daskprs
from daskprs.errors import UserInputError


def run(mini_batch):
    return mini_batch


@pytest.fixture
def ddf():
    return dd.from_pandas(pd.DataFrame({"x": range(10)}), npartitions=2)


@pytest.mark.parametrize(
    ("collection", "message"),
    [
        (pd.DataFrame({"x": [1]}), r"a pandas\.DataFrame.*from_pandas"),
        ([1, 2, 3], "builtins.list.*from_sequence"),
        ("data.csv", "neither a Dask DataFrame"),
    ],
)
def test_a_collection_that_is_neither_a_dataframe_nor_a_bag(tmp_path, collection, message):
    with pytest.raises(UserInputError, match=message):
        daskprs.map_batches(collection, run, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_dask_series_is_told_to_become_a_frame(tmp_path, ddf):
    with pytest.raises(UserInputError, match=r"series\.to_frame\(\)"):
        daskprs.map_batches(ddf["x"], run, run_dir=tmp_path / "run")


def test_run_and_entry_script_together_or_neither(tmp_path, ddf):
    script = tmp_path / "score.py"
    script.write_text("def run(b):\n    return b\n")
    with pytest.raises(UserInputError, match=r"either run .* or entry_script"):
        daskprs.map_batches(ddf, run, entry_script=script, run_dir=tmp_path / "run")
    with pytest.raises(UserInputError, match="give run, a function"):
        daskprs.map_batches(ddf, run_dir=tmp_path / "run")
    with pytest.raises(UserInputError, match="init and shutdown go with run"):
        daskprs.map_batches(ddf, entry_script=script, init=run, run_dir=tmp_path / "run")
    with pytest.raises(UserInputError, match="does not exist"):
        daskprs.map_batches(ddf, entry_script=tmp_path / "nope.py", run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_values_that_are_not_functions(tmp_path, ddf):
    with pytest.raises(UserInputError, match="run must be a function, got str"):
        daskprs.map_batches(ddf, "score.py", run_dir=tmp_path / "run")
    with pytest.raises(UserInputError, match="init must be a function, got int"):
        daskprs.map_batches(ddf, run, init=3, run_dir=tmp_path / "run")


def test_a_function_that_cannot_be_pickled(tmp_path, ddf):
    lock = threading.Lock()

    def locked_run(mini_batch):
        with lock:
            return mini_batch

    with pytest.raises(UserInputError, match=r"cannot be pickled .*create those in init\(\)"):
        daskprs.map_batches(ddf, locked_run, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": 0}, "timeout must be a number of seconds > 0"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
        ({"error_threshold": -2}, "error_threshold must be an integer >= 0, or -1"),
        ({"mini_batch_error_threshold": 1.5}, "mini_batch_error_threshold must be"),
    ],
)
def test_bad_settings(tmp_path, ddf, kwargs, message):
    with pytest.raises(UserInputError, match=message):
        daskprs.map_batches(ddf, run, run_dir=tmp_path / "run", **kwargs)


def test_a_run_dir_that_holds_something_else(tmp_path, ddf):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(UserInputError, match="holds no map_batches run"):
        daskprs.map_batches(ddf, run, run_dir=tmp_path / "run")
    with pytest.raises(UserInputError, match="must be a folder"):
        daskprs.map_batches(ddf, run, run_dir="s3://bucket/run")


def test_an_empty_bag_has_no_partitions_to_run(tmp_path):
    with pytest.raises(UserInputError, match="no partitions"):
        daskprs.map_batches(db.from_delayed([]), run, run_dir=tmp_path / "run")
