"""Entry scripts in another Python interpreter (``daskprs.yaml`` ``environments:``), and
missing imports named before the first mini-batch."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_files, output_of, write_job

from daskprs.api import run_job
from daskprs.cli import cli
from daskprs.errors import UserInputError
from daskprs.execute import preflight
from daskprs.execute.preflight import check_entry_script, script_imports

pytestmark = pytest.mark.slow

SCRIPT = """
import os
import sys
import clashpkg

def run(mini_batch):
    return [f"{os.path.basename(p)} {clashpkg.WHERE} {sys.prefix}" for p in mini_batch]
"""


def _venv(folder: Path, system_site_packages: bool) -> Path:
    """A venv made in the test (no pip, no network); returns its python."""
    args = [sys.executable, "-m", "venv", "--without-pip", str(folder)]
    if system_site_packages:
        args.insert(4, "--system-site-packages")
    subprocess.run(args, check=True)
    return folder / "bin" / "python"


def _site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.check_output([str(python), "-c", code], text=True).strip())


def _job(tmp_path: Path, env: str = "azureml:clash-env:1") -> Path:
    make_files(tmp_path / "data", 3)
    job = write_job(tmp_path, SCRIPT, input_yaml="type: uri_folder\npath: ./data")
    with job.open("a") as f:
        f.write(f"      environment: {env}\n")
    return job


def _this_pythons_site_dirs() -> list[str]:
    """The site-packages folders of the running interpreter: a venv's own when pytest runs in
    one (``--system-site-packages`` would give its base interpreter's instead)."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    dirs += [sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE and site.getusersitepackages() in sys.path:
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(d for d in dirs if os.path.isdir(d)))


@pytest.fixture(scope="module")
def clash_env(tmp_path_factory):
    """A second interpreter with a package this one does not have (and what this one has,
    inside a venv or outside one: a .pth file adds this interpreter's site-packages, processing
    their own .pth files)."""
    folder = tmp_path_factory.mktemp("envs")
    python = _venv(folder / "clash", system_site_packages=False)
    lines = [f"import site; site.addsitedir({d!r})\n" for d in _this_pythons_site_dirs()]
    (_site_packages(python) / "zz_this_python.pth").write_text("".join(lines))
    package = _site_packages(python) / "clashpkg"
    package.mkdir()
    (package / "__init__.py").write_text('WHERE = "from-the-other-env"\n')
    assert _site_packages(python) != Path(sysconfig.get_paths()["purelib"])
    return python


def test_the_script_runs_in_the_interpreter_its_environment_maps_to(tmp_path, clash_env):
    job = _job(tmp_path)
    (tmp_path / "daskprs.yaml").write_text(f"environments:\n  clash-env: {clash_env}\n")
    lines = []
    result = run_job(job, run_dir=tmp_path / "run", workers=2, echo=lines.append)
    assert result.ok, result.failure
    prefix = str(clash_env.parent.parent)
    assert output_of(tmp_path / "run").read_text().splitlines() == [
        f"f{i:03d}.txt from-the-other-env {prefix}" for i in range(3)
    ]
    assert any(f"entry scripts run in {clash_env}" in line for line in lines)


def test_a_missing_import_is_named_with_the_line_to_add_before_anything_runs(tmp_path):
    job = _job(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(job), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "imports clashpkg (line 4)" in result.output
    assert "environments:\n    clash-env: /path/to/env/bin/python" in result.output
    assert not (tmp_path / "run/steps/score/ledger.jsonl").exists()  # no mini-batch ran


def test_an_interpreter_without_pandas_is_refused_saying_what_to_install(tmp_path):
    bare = _venv(tmp_path / "bare", system_site_packages=False)
    job = _job(tmp_path)
    (tmp_path / "daskprs.yaml").write_text(f"environments:\n  clash-env: {bare}\n")
    result = CliRunner().invoke(cli, ["run", str(job), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "lacks pandas, pyarrow" in result.output
    assert f"{bare} -m pip install pandas pyarrow" in result.output


def test_a_mapping_to_no_interpreter_fails_validation(tmp_path):
    job = _job(tmp_path)
    (tmp_path / "daskprs.yaml").write_text("environments:\n  clash-env: ./no/such/python\n")
    result = CliRunner().invoke(cli, ["validate", str(job)])
    assert result.exit_code == 2
    assert "is not an executable Python interpreter" in result.output


def test_only_unconditional_top_level_imports_are_checked(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "import os, numpy.linalg\nfrom pandas import DataFrame\nfrom . import sibling\n"
        "try:\n    import optional_thing\nexcept ImportError:\n    pass\n"
        "def run(mb):\n    import lazy_thing\n"
    )
    assert script_imports(str(script)) == {"os": 1, "numpy": 1, "pandas": 2}


def test_a_script_of_the_standard_library_alone_starts_no_probe(tmp_path, monkeypatch):
    """This interpreter has its own standard library: the check asks no other Python about
    it; a package outside it is still asked about, and named when missing."""
    probes: list[list[str]] = []
    probe = preflight._probe

    def counted(python, code_dir, names, env):
        probes.append(names)
        return probe(python, code_dir, names, env)

    monkeypatch.setattr(preflight, "_probe", counted)
    (tmp_path / "stdlib.py").write_text("import os, json\nfrom collections import deque\n")
    (tmp_path / "other.py").write_text("import os\nimport no_such_package_xyz\n")
    check_entry_script("score", str(tmp_path), "stdlib.py", None, None)
    assert probes == []
    with pytest.raises(UserInputError, match="imports no_such_package_xyz \\(line 2\\)"):
        check_entry_script("score", str(tmp_path), "other.py", None, None)
    assert probes == [["no_such_package_xyz"]]


def test_a_module_left_out_of_this_pythons_standard_library_is_named(tmp_path, monkeypatch):
    """A standard-library module this build lacks (tkinter without Tk) is asked about and
    named, as a missing package is."""
    names = frozenset({*sys.stdlib_module_names, "stdlib_part_not_built_xyz"})
    monkeypatch.setattr(sys, "stdlib_module_names", names)
    (tmp_path / "gui.py").write_text("import os\nimport stdlib_part_not_built_xyz\n")
    with pytest.raises(UserInputError, match="imports stdlib_part_not_built_xyz \\(line 2\\)"):
        check_entry_script("score", str(tmp_path), "gui.py", None, None)
