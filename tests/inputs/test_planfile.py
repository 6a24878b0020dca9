"""A plan written as versioned JSON reads back equal, with no pickle of internal classes."""

from __future__ import annotations

import json
import textwrap

import pandas as pd
import pytest

from daskprs.errors import PlanningError
from daskprs.inputs.plan import plan_input
from daskprs.inputs.planfile import PLAN_FORMAT, read_plan, write_plan
from daskprs.job.model import DataInput, MiniBatchSize


def _table(tmp_path):
    folder = tmp_path / "table"
    for store in ("a", "b"):
        (folder / store).mkdir(parents=True)
        pd.DataFrame({"x": range(50), "y": ["p q"] * 50}).to_csv(
            folder / store / "part.csv", index=False
        )
    (folder / "MLTable").write_text(
        textwrap.dedent(
            """\
            paths:
              - pattern: ./*/part.csv
            transformations:
              - read_delimited: {delimiter: ',', header: all_files_same_headers}
              - filter: 'col("x") >= 3'
              - convert_column_types:
                  - columns: [x]
                    column_type: int
              - keep_columns: [x, y]
              - extract_columns_from_partition_format: '{Store}/part.csv'
            """
        )
    )
    return DataInput("data", "mltable", str(folder), None)


@pytest.mark.parametrize("kind", ["tabular", "files", "keys"])
def test_a_plan_reads_back_equal(tmp_path, kind):
    if kind == "files":
        for i in range(5):
            (tmp_path / "files").mkdir(exist_ok=True)
            (tmp_path / "files" / f"f{i}.txt").write_text("x\n")
        plan = plan_input(
            DataInput("data", "uri_folder", str(tmp_path / "files")), MiniBatchSize(2, "count")
        )
    elif kind == "keys":
        plan = plan_input(_table(tmp_path), None, ("Store",))
    else:
        plan = plan_input(_table(tmp_path), MiniBatchSize(200, "bytes"))
    assert len(plan.batches) > 1
    path = tmp_path / "plan.json"
    write_plan(str(path), plan)
    assert read_plan(str(path)) == plan
    text = path.read_text()
    assert json.loads(text)["format"] == PLAN_FORMAT
    assert "pickle" not in text and "daskprs." not in text  # names classes, not modules


def test_a_plan_of_another_format_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"format": 99, "plan": {}}))
    with pytest.raises(PlanningError, match=r"plan format 99.*run the job anew"):
        read_plan(str(path))
    path.write_text("{broken")
    with pytest.raises(PlanningError, match="not valid JSON"):
        read_plan(str(path))
    path.write_text(json.dumps({"format": PLAN_FORMAT, "plan": {"__type__": "os.system"}}))
    with pytest.raises(PlanningError, match="damaged"):
        read_plan(str(path))
