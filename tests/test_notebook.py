"""The example notebook, executed by nbclient with a real ipykernel."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples/notebook/daskprs_in_a_notebook.ipynb"


def _has_azure_ai_ml() -> bool:
    try:
        import azure.ai.ml  # noqa: F401
    except ImportError:
        return False
    return True


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
    # a pipeline built with Azure's Python SDK, run by run_job: only where azure-ai-ml is
    if _has_azure_ai_ml():
        assert "SDK pipeline: 600 rows scored, same as the YAML job: True" in printed
    else:
        assert "azure-ai-ml is not installed (pip install 'daskprs[azure]')" in printed
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
