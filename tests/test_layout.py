"""The package layout: layers along the data's way, imported only downwards, with no cycles.

A module may import from its own layer and from the layers below it; the top (the CLI, the
API, the pipeline step runner, the test kit) may import anything. Every import counts,
including those inside functions.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import daskprs

PACKAGE = Path(daskprs.__file__).parent

# Lowest first. The root package (``daskprs/__init__.py``, lazy), ``errors``, ``paths``,
# ``settings`` (the DASKPRS_* variables) and ``rundir`` (the run directory's layout) are the
# ground every layer stands on.
GROUND = ["daskprs", "daskprs.errors", "daskprs.paths", "daskprs.settings", "daskprs.rundir"]
LAYERS = [*GROUND, "job", "inputs", "results", "observe", "execute"]
TOP = len(LAYERS)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int:
    if module in GROUND:
        return LAYERS.index(module)
    sub = module.split(".")[1]
    return LAYERS.index(sub) if sub in LAYERS else TOP


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "daskprs"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "daskprs":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
    return found


GRAPH = {m: {t for t in _imports(p) if t != m} for m, p in MODULES.items()}


def test_every_import_names_a_module_that_exists():
    missing = {(m, t) for m, targets in GRAPH.items() for t in targets if t not in MODULES}
    assert not missing


def test_no_module_imports_from_a_layer_above_it():
    upward = sorted(
        f"{m} imports {t}" for m, ts in GRAPH.items() for t in ts if _layer(t) > _layer(m)
    )
    assert not upward, "\n".join(upward)


def test_the_modules_import_each_other_in_no_cycle():
    state: dict[str, str] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == "open":
                cycles.append([*path[path.index(t) :], t])
            elif t not in state:
                visit(t, [*path, t])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [m])
    assert not cycles


@pytest.mark.parametrize("sub", ["job", "inputs", "results", "observe", "execute"])
def test_each_layer_says_what_it_owns_and_may_import(sub):
    doc = importlib.import_module(f"daskprs.{sub}").__doc__ or ""
    assert "May import" in doc


def test_the_entry_script_process_imports_no_dask():
    """The child runs entry scripts, maybe in another interpreter: it stays light
    (docs/design.md#layers)."""
    import subprocess
    import sys

    code = (
        "import sys, daskprs.execute.child, daskprs.inputs.readers, daskprs.results.formatting;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_file_list_job_runs_without_pandas_in_the_driver(tmp_path):
    """Planning, digesting and running a file list needs no pandas in the driver (its import
    took 0.3 s of the time before the first run(), and 65 MB; issue 23)."""
    import subprocess
    import sys

    from daskprs.testing import write_job

    (tmp_path / "data").mkdir()
    for i in range(3):
        (tmp_path / "data" / f"f{i}.txt").write_text(f"{i}\n")
    job = write_job(
        tmp_path,
        "def run(mini_batch):\n    return mini_batch\n",
        input_yaml=f"type: uri_folder\npath: {tmp_path / 'data'}",
    )
    code = (
        "import sys, daskprs\n"
        "if __name__ == '__main__':\n"
        f"    r = daskprs.run_job({str(job)!r}, run_dir={str(tmp_path / 'run')!r}, workers=1,"
        " echo=lambda line: None)\n"
        "    assert r.ok, r.failure\n"
        "    print(sorted(m for m in ('pandas', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_users_import_the_public_names_where_they_always_did():
    from azureml_user.parallel_run import EntryScript

    assert EntryScript.__module__ == "azureml_user.parallel_run"
    for name in daskprs.__all__:
        assert getattr(daskprs, name) is not None


@pytest.mark.parametrize(
    ("base", "parts", "joined"),
    [
        ("/data", ("a", "b.csv"), "/data/a/b.csv"),
        ("/data/x", ("../y",), "/data/y"),
        ("/data", ("/abs/f",), "/abs/f"),
        ("s3://bucket/data", ("../other", "x.csv"), "s3://bucket/other/x.csv"),
        ("s3://bucket/data/", ("s3://b2/k",), "s3://b2/k"),
        ("/local", ("s3://b/k",), "s3://b/k"),
        ("s3://bucket/", (), "s3://bucket"),
    ],
)
def test_one_join_path_for_local_paths_and_urls(base, parts, joined):
    from daskprs.paths import join_path

    assert join_path(base, *parts) == joined


@pytest.mark.parametrize("sub", ["job", "inputs", "results", "observe", "execute", "mapping"])
def test_each_layer_names_every_module_it_owns(sub):
    doc = importlib.import_module(f"daskprs.{sub}").__doc__ or ""
    modules = sorted(p.stem for p in (PACKAGE / sub).glob("*.py") if p.stem != "__init__")
    assert [m for m in modules if f"``{m}``" not in doc] == []


# The public entry points may take more keyword-only options; every other function takes 8
# parameters at most (self and cls not counted): more means a value object is missing.
_ENTRY_POINTS = {
    "daskprs.api": {"run_job", "resume_job"},
    "daskprs.job.load": {"load_job"},
    "daskprs.mapping.run": {"map_batches"},
    "daskprs.cli": "*",
    "daskprs.testing": "*",
}
_MOST_PARAMETERS = 8


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = node.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [x.arg for x in (a.vararg, a.kwarg) if x is not None]
    return [n for n in names if n not in ("self", "cls")]


def test_no_internal_function_takes_more_than_eight_parameters():
    too_many = []
    for module, path in MODULES.items():
        exempt = _ENTRY_POINTS.get(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if exempt == "*" or node.name in exempt:
                continue
            n = len(_parameters(node))
            if n > _MOST_PARAMETERS:
                too_many.append(f"{module}.{node.name}: {n}")
    assert not too_many, too_many


def test_map_batches_runs_its_step_as_the_pipeline_does_without_the_pipeline():
    """One function runs a parallel step for both; map_batches does not borrow from the
    pipeline's job-level code."""
    imported = set()
    for node in ast.walk(ast.parse(MODULES["daskprs.mapping.run"].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert "daskprs.pipeline" not in imported
    assert "daskprs.execute.step" in imported
    pipeline = ast.parse(MODULES["daskprs.pipeline"].read_text())
    calls = {
        n.func.id for n in ast.walk(pipeline) if isinstance(n, ast.Call) and hasattr(n.func, "id")
    }
    assert "run_parallel_step" in calls
