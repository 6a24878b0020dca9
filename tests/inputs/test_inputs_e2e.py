"""Inputs end to end: partition keys, parquet, and bad data failing only its mini-batch."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import output_of, write_job

from daskprs.api import run_job

pytestmark = pytest.mark.slow

BY_KEY = """
def run(mini_batch, context):
    keys = context.partition_key_value
    total = mini_batch["sales"].sum()
    return [f"{keys['Store']}/{keys['Brand']} {len(mini_batch)} {total}"]
"""


def test_partition_keys_one_mini_batch_per_key_sorted(tmp_path, client):
    root = tmp_path / "sales"
    rows = {("s2", "b1"): [5, 6], ("s1", "b2"): [1], ("s1", "b1"): [2, 3, 4]}
    for (store, brand), values in rows.items():
        folder = root / store / brand
        folder.mkdir(parents=True)
        pd.DataFrame({"sales": values}).to_csv(folder / "data.csv", index=False)
    (root / "MLTable").write_text(
        "paths:\n  - pattern: ./**/*.csv\ntransformations:\n"
        "  - read_delimited: {delimiter: ','}\n"
        "  - extract_columns_from_partition_format: '{Store}/{Brand}/{file_name}.csv'\n"
    )
    job = write_job(
        tmp_path,
        BY_KEY,
        input_yaml="type: mltable\npath: ./sales",
        mini_batch_size='"0"',
        extra="partition_keys: [Store, Brand]",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        "s1/b1 3 9",
        "s1/b2 1 1",
        "s2/b1 2 11",
    ]


PARQUET = """
def run(mini_batch):
    return mini_batch[["id"]]
"""


def test_parquet_by_row_groups(tmp_path, client):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "pq"
    root.mkdir()
    for k in range(3):
        table = pa.table({"id": list(range(k * 100, (k + 1) * 100))})
        pq.write_table(table, root / f"part-{k}.parquet", row_group_size=25)
    (root / "MLTable").write_text(
        "paths:\n  - pattern: ./*.parquet\ntransformations:\n  - read_parquet: {}\n"
    )
    job = write_job(
        tmp_path, PARQUET, input_yaml="type: mltable\npath: ./pq", mini_batch_size='"50rows"'
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok, result.failure
    assert result.steps[0].summary["total"] == 6
    assert output_of(tmp_path / "run").read_text().splitlines() == [str(i) for i in range(300)]


ECHO = """
def run(mini_batch):
    return mini_batch[["a"]]
"""


def test_bad_rows_fail_their_mini_batch_naming_file_and_range(tmp_path, client):
    root = tmp_path / "t"
    root.mkdir()
    good = "".join(f"{i},{i}\n" for i in range(200))
    (root / "a.csv").write_text("a,b\n" + good)
    bad = "".join(f"{i},{i}\n" for i in range(100)) + "1,2,3,4,5\n" + good[:50]
    (root / "b.csv").write_text("a,b\n" + bad)
    (root / "MLTable").write_text(
        "paths:\n  - pattern: ./*.csv\ntransformations:\n  - read_delimited: {delimiter: ','}\n"
    )
    job = write_job(
        tmp_path,
        ECHO,
        input_yaml="type: mltable\npath: ./t",
        mini_batch_size='"100000"',
        extra="retry_settings:\n  max_retries: 1",
    )
    result = run_job(job, run_dir=tmp_path / "run", client=client, echo=lambda s: None)
    assert result.ok  # no budget: the job goes on without the unreadable mini-batch
    [failed] = [json.loads(x) for x in (tmp_path / "run/failed_mini_batches.jsonl").open()]
    assert failed["id"] == 1 and failed["status"] == "LOAD_ERROR" and failed["tries"] == 2
    assert failed["inputs"]["file"].endswith("b.csv")
    assert "b.csv" in failed["error"] and "bytes [" in failed["error"]
    assert output_of(tmp_path / "run").read_text().splitlines() == [str(i) for i in range(200)]
