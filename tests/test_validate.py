"""``daskprs validate`` finds in seconds, without running anything, what ``run`` would find
within seconds of starting: the MLTable file, a pattern that matches no file, a
mini_batch_size that does not fit the input, the entry script's imports, the outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import make_files, write_job

from daskprs.cli import cli

ECHO = "def run(mini_batch):\n    return mini_batch\n"


def validate(job: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["validate", str(job)])
    return result.exit_code, result.output


def table(folder: Path, mltable: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.csv").write_text("a,b\n1,2\n3,4\n")
    (folder / "MLTable").write_text(mltable)


READ = "paths:\n  - file: ./x.csv\ntransformations:\n  - read_delimited: {delimiter: ','}\n"


@pytest.mark.parametrize(
    ("mltable", "input_yaml", "size", "needle"),
    [
        (None, "type: mltable\npath: ./t", '"1kb"', "MLTable"),
        ("paths:\n  - pattern: ./*.parquet\n", "type: mltable\npath: ./t", '"2"', "no file"),
        ("paths: [1, 2\n", "type: mltable\npath: ./t", '"2"', "MLTable"),
        (READ, "type: mltable\npath: ./t\nmode: eval_mount", '"1mb"', "mode eval_mount"),
    ],
)
def test_validate_finds_what_run_would_find_first(tmp_path, mltable, input_yaml, size, needle):
    if mltable is None:
        (tmp_path / "t").mkdir()  # no MLTable file at all
    else:
        table(tmp_path / "t", mltable)
    job = write_job(tmp_path, ECHO, input_yaml=input_yaml, mini_batch_size=size)
    code, out = validate(job)
    assert code == 2, out
    assert needle in out and "valid (" not in out


def test_the_mode_that_turns_a_table_into_files_is_named_as_the_likely_mistake(tmp_path):
    table(tmp_path / "t", READ)
    job = write_job(
        tmp_path,
        ECHO,
        input_yaml="type: mltable\npath: ./t\nmode: eval_mount",
        mini_batch_size='"1mb"',
    )
    code, out = validate(job)
    assert code == 2
    assert "read as a file list because mode eval_mount was given" in out
    assert "Omit the mode (or use mode: direct)" in out


def test_validate_checks_the_entry_scripts_imports(tmp_path):
    make_files(tmp_path / "data", 2)
    script = "import surely_not_installed_anywhere\n\n" + ECHO
    job = write_job(tmp_path, script, input_yaml="type: uri_folder\npath: ./data")
    code, out = validate(job)
    assert code == 2
    assert "surely_not_installed_anywhere (line 1)" in out


def test_a_step_whose_input_an_earlier_step_makes_is_planned_when_it_runs():
    repo = Path(__file__).resolve().parent.parent
    code, out = validate(repo / "examples" / "many-models" / "pipeline.yml")
    assert code == 0, out
    assert "its input is made by step prepare; it is planned when it runs" in out
