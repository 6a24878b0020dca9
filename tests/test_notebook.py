"""The example notebook, executed by nbclient with a real ipykernel."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples/notebook/daskprs_in_a_notebook.ipynb"


def test_example_notebook_runs():
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    printed = "".join(out.get("text", "") for out in outputs)
    assert "600 rows scored, accuracy" in printed
    assert "8 mini-batches, 600 rows" in printed
    # map_batches over a DataFrame built in the notebook, run() failing on two partitions
    assert "150 of 200 rows calibrated in 6 partitions; status: succeeded with failures" in printed
    for mb, rows in ((6, "150-174"), (7, "175-199")):
        error = f"ValueError: corrupt readings in rows {rows}"
        assert f"partition {mb} failed after 2 tries: {error}" in printed
    htmls = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    [shown] = [h for h in htmls if "daskprs.map_batches" in h]  # the result's _repr_html_
    assert "succeeded with failures" in shown
    assert any("<b>100%</b>" in h for h in htmls)  # run_job's live display ended at 100%
    assert "8: 6 done, 2 failed, 0 cancelled" in shown
    assert "corrupt readings in rows 150-174" in shown and "Failed partitions" in shown
