"""The fast part writer gives pandas' bytes, or steps aside."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskprs.results import fastcsv
from daskprs.results.fastcsv import csv_chunks
from daskprs.results.formatting import write_rows

DEFAULT = {"sep": " ", "header": False, "index": False, "lineterminator": "\n"}


def pandas_bytes(frame: pd.DataFrame, options: dict) -> bytes:
    buf = io.StringIO()
    frame.to_csv(buf, **options)
    return buf.getvalue().encode("utf-8")


def written(frame: pd.DataFrame, options: dict) -> bytes:
    buf = io.BytesIO()
    write_rows(frame, buf, options)
    return buf.getvalue()


def fast_bytes(frame: pd.DataFrame, options: dict) -> bytes | None:
    chunks = csv_chunks(frame, options)
    return None if chunks is None else "".join(chunks).encode("utf-8")


def test_a_plain_frame_takes_the_fast_path_and_gets_pandas_bytes():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "id": np.arange(1000, dtype=np.int64),
            "score": rng.normal(size=1000) * 10.0 ** rng.integers(-30, 30, 1000),
            "ok": rng.random(1000) > 0.5,
            "small": rng.integers(-100, 100, 1000).astype(np.int8),
            "big": rng.integers(0, 2**63, 1000, dtype=np.uint64),
            "cat": [f"cat{i % 7}" for i in range(1000)],
        }
    )
    frame.loc[::17, "score"] = np.nan
    frame.loc[3, "score"] = np.inf
    frame.loc[4, "score"] = -0.0
    frame.loc[5, "score"] = 5e-324
    assert fast_bytes(frame, DEFAULT) == pandas_bytes(frame, DEFAULT)
    assert written(frame, DEFAULT) == pandas_bytes(frame, DEFAULT)


@pytest.mark.parametrize(
    "options",
    [
        {"sep": ",", "header": False, "index": False},
        {**DEFAULT, "lineterminator": "\r\n"},
        {**DEFAULT, "sep": "\t", "na_rep": "NA"},
        {**DEFAULT, "na_rep": "nan"},
    ],
)
def test_supported_options_give_pandas_bytes(options):
    frame = pd.DataFrame({"x": [1.5, np.nan, 1e16, 1e-5], "s": ["a", "b", "c", "d"]})
    assert fast_bytes(frame, options) == pandas_bytes(frame, options)


@pytest.mark.parametrize(
    ("frame", "options"),
    [
        (pd.DataFrame({"s": ["a b", "c"]}), DEFAULT),  # the separator: quoted by pandas
        (pd.DataFrame({"s": ['say "hi"', "c"]}), DEFAULT),
        (pd.DataFrame({"s": ["two\nlines", "c"]}), DEFAULT),
        (pd.DataFrame({"s": ["", "c"]}), DEFAULT),
        (pd.DataFrame({"s": ["a", None]}, dtype=object), DEFAULT),
        (pd.DataFrame({"s": ["a", 1]}, dtype=object), DEFAULT),
        (pd.DataFrame({"x": np.array([0.1, 0.2], dtype=np.float32)}), DEFAULT),
        (pd.DataFrame({"x": [1.0, np.nan]}), DEFAULT),  # one empty field: written as ""
        (pd.DataFrame({"x": pd.array([1, None], dtype="Int64")}), DEFAULT),
        (pd.DataFrame({"t": pd.to_datetime(["2024-01-01", "2024-01-02"])}), DEFAULT),
        (pd.DataFrame({"x": [1, 2]}), {**DEFAULT, "header": True}),
        (pd.DataFrame({"x": [1, 2]}), {**DEFAULT, "index": True}),
        (pd.DataFrame({"x": [1.0, 2.0]}), {**DEFAULT, "float_format": "%.3f"}),
        (pd.DataFrame({"x": [1, 2]}), {**DEFAULT, "sep": "."}),
        (pd.DataFrame({"x": [1.0, np.nan], "y": [1, 2]}), {**DEFAULT, "na_rep": "a b"}),
        (pd.DataFrame(index=[0, 1]), DEFAULT),
    ],
)
def test_other_frames_and_options_are_left_to_pandas(frame, options):
    assert csv_chunks(frame, options) is None
    assert written(frame, options) == pandas_bytes(frame, options)


def test_chunks_join_to_the_same_text(monkeypatch):
    monkeypatch.setattr(fastcsv, "CHUNK_ROWS", 7)
    frame = pd.DataFrame({"i": range(50), "f": [i / 3 for i in range(50)]})
    frame.loc[[6, 7, 13, 49], "f"] = np.nan
    chunks = list(csv_chunks(frame, DEFAULT))
    assert len(chunks) == 8
    assert "".join(chunks).encode() == pandas_bytes(frame, DEFAULT)


_texts = st.text(alphabet=st.sampled_from([*"ab Z,\t;|\"'\n\r.-é", "\u2028", "\x00"]), max_size=6)
_columns = st.one_of(
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=30).map(
        lambda v: np.array(v, dtype=np.float64)
    ),
    st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=30).map(
        lambda v: np.array(v, dtype=np.int64)
    ),
    st.lists(st.booleans(), min_size=1, max_size=30).map(np.array),
    st.lists(_texts, min_size=1, max_size=30),
    st.lists(st.one_of(_texts, st.none(), st.integers()), min_size=1, max_size=30),
)
_options = st.fixed_dictionaries(
    {
        "sep": st.sampled_from([" ", ",", "\t", ";", "|", "."]),
        "header": st.sampled_from([False, False, True]),
        "index": st.just(False),
        "lineterminator": st.sampled_from(["\n", "\r\n"]),
        "na_rep": st.sampled_from(["", "", "NA", "nan", "a b", '"']),
    }
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.lists(_columns, min_size=1, max_size=4), _options, st.data())
def test_any_frame_is_written_as_pandas_writes_it(columns, options, data):
    n = min(len(c) for c in columns)
    frame = pd.DataFrame(
        {f"c{j}": list(c[:n]) if isinstance(c, list) else c[:n] for j, c in enumerate(columns)}
    )
    assert written(frame, options) == pandas_bytes(frame, options)
    fast = fast_bytes(frame, options)
    if fast is not None:
        assert fast == pandas_bytes(frame, options)
