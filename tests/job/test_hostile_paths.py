"""Names and settings that would lead daskprs to write outside the run directory or the
declared outputs: step and output names such as ``../../etc``, a settings file that names its
own target, remote keys with ``..`` in them. Each is refused with its place, or kept inside."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from daskprs.errors import JobSpecError
from daskprs.inputs.readers import _cache_path
from daskprs.job.files import read_step_settings
from daskprs.job.load import load_job, unsafe_folder_name
from daskprs.results.formatting import format_rows

NO_ENV = {"HOME": "/nonexistent-home"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a\n")
    return tmp_path


def problems(folder: Path, text: str) -> list[str]:
    path = folder / "job.yml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(JobSpecError) as info:
        load_job(path, run_dir=str(folder / "run"), env=NO_ENV)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize("name", ["../../etc", "/abs", "a/b", "..", ".", "a\\\\b"])
def test_step_and_output_names_that_leave_the_run_directory_are_refused(folder, name):
    found = problems(
        folder,
        f"""
        type: pipeline
        jobs:
          "{name}":
            type: parallel
            inputs:
              data: {{type: uri_folder, path: ./data}}
            outputs:
              "{name}": {{type: uri_folder}}
              fine: {{type: uri_folder}}
            input_data: ${{{{inputs.data}}}}
            task: {{type: run_function, code: ./src, entry_script: score.py}}
        """,
    )
    shown = name.replace("\\\\", "\\")
    assert any("is not a valid step name" in p and repr(shown) in p for p in found), found
    assert any("is not a valid output name" in p and repr(shown) in p for p in found), found
    assert not any("fine" in p for p in found)
    assert not (folder / "run").exists()


def test_a_component_named_to_escape_is_refused(folder):
    found = problems(
        folder,
        """
        type: parallel
        name: ../../evil
        inputs:
          data: {type: uri_folder, default: ./data}
        input_data: ${{inputs.data}}
        task: {type: run_function, code: ./src, entry_script: score.py}
        """,
    )
    assert found == [
        "name: '../../evil' is not a valid step name (use letters, digits, `_`, `-` and `.`: "
        "it names a folder in the run directory)"
    ]


def test_unsafe_folder_names():
    for name in ("score", "batch_prediction", "my-step.v2", "my step", "ünï"):
        assert not unsafe_folder_name(name)
    for name in ("", ".", "..", "../x", "x/..", "/x", "a\\b", "a\0b"):
        assert unsafe_folder_name(name)


def test_a_settings_file_cannot_choose_where_rows_go(tmp_path):
    target = tmp_path / "elsewhere.txt"
    (tmp_path / "parallel_run_step.settings.json").write_text(
        json.dumps({"append_row": {"pandas.DataFrame.to_csv": {"path_or_buf": str(target)}}})
    )
    with pytest.raises(ValueError, match="path_or_buf cannot be set"):
        read_step_settings(str(tmp_path))
    # and were it passed on anyway, the rows still go to the part, not to the file it names
    df = pd.DataFrame({"a": [1, 2]})
    assert format_rows(df, {"path_or_buf": str(target)}) == b"1\n2\n"
    assert not target.exists()


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/../../../../etc/passwd",
        "s3://bucket/a/../../x",
        "gs://../..",
        "s3://bucket//etc/cron.d/x",
        "https://host/./../../x?y=..",
    ],
)
def test_remote_keys_with_dot_dot_stay_inside_the_download_cache(tmp_path, url):
    cache = tmp_path / "cache"
    local = Path(_cache_path(str(cache), url)).resolve()
    assert local.is_relative_to(cache.resolve())
