"""Names and settings that would lead daskprs to write outside the run directory or the
declared outputs: step and output names such as ``../../etc``, a settings file that names its
own target, remote keys with ``..`` in them. Each is refused with its place, or kept inside."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from daskprs.cli import cli
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


def two_steps(a_outputs: str, b_outputs: str, append: str = "") -> str:
    """A pipeline of two parallel nodes ``a`` and ``b`` with these ``outputs:`` (YAML flow
    mappings); ``append`` names an output of ``a`` for its ``append_row_to``."""
    node = (
        "  {name}:\n"
        "    type: parallel\n"
        "    inputs: {{data: {{type: uri_folder, path: ./data}}}}\n"
        "    outputs: {outputs}\n"
        '    input_data: "${{{{inputs.data}}}}"\n'
        "    task: {{type: run_function, code: ./src, entry_script: score.py{append}}}\n"
    )
    append_row_to = f', append_row_to: "${{{{outputs.{append}}}}}"' if append else ""
    return (
        "type: pipeline\noutputs:\n  final: {type: uri_folder, path: ./shared}\njobs:\n"
        + node.format(name="a", outputs=a_outputs, append=append_row_to)
        + node.format(name="b", outputs=b_outputs, append="")
    )


@pytest.mark.parametrize(
    ("a_outputs", "b_outputs", "places", "path"),
    [
        # one explicit path, written two ways
        (
            "{x: {path: ./out}}",
            "{y: {path: ./other/../out/}}",
            ("a.outputs.x", "b.outputs.y"),
            "out",
        ),
        # one pipeline output bound by two steps
        (
            '{x: "${{parent.outputs.final}}"}',
            '{y: "${{parent.outputs.final}}"}',
            ("a.outputs.x", "b.outputs.y"),
            "shared",
        ),
        # two outputs of one step
        ("{x: {path: ./out}, z: {path: ./out}}", "{y: {}}", ("a.outputs.x", "a.outputs.z"), "out"),
    ],
)
def test_two_outputs_with_one_path_are_refused_naming_both(
    folder, a_outputs, b_outputs, places, path
):
    found = problems(folder, two_steps(a_outputs, b_outputs))
    assert len(found) == 1, found
    (problem,) = found
    first, second = places
    assert f"jobs.{first}" in problem and f"jobs.{second}" in problem, problem
    assert f"writes to {folder / path}," in problem and "overwrite" in problem
    assert "a path of its own" in problem


def test_validate_and_run_refuse_a_clash_with_exit_status_2(folder, monkeypatch):
    monkeypatch.chdir(folder)
    (folder / "job.yml").write_text(two_steps("{x: {path: ./out}}", "{y: {path: ./out}}"))
    runner = CliRunner()
    for args in (["validate", "job.yml"], ["run", "job.yml", "--run-dir", "run"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert f"jobs.b.outputs.y: writes to {folder / 'out'}, as jobs.a.outputs.x" in (
            result.output
        )
    assert not (folder / "run").exists() and not (folder / "out").exists()


def test_urls_compare_as_written_and_a_symlink_as_its_target(folder):
    urls = problems(folder, two_steps("{x: {path: s3://b/p/}}", "{y: {path: s3://b/p}}"))
    assert len(urls) == 1 and "writes to s3://b/p, as jobs.a.outputs.x does" in urls[0], urls
    (folder / "real").mkdir()
    (folder / "link").symlink_to(folder / "real")
    links = problems(folder, two_steps("{x: {path: ./real}}", "{y: {path: ./link}}"))
    assert len(links) == 1 and "jobs.b.outputs.y: writes to" in links[0], links


def test_an_output_that_is_the_append_row_to_file_of_another_is_refused(folder):
    found = problems(
        folder,
        two_steps(
            "{x: {path: ./res}}",
            "{y: {type: uri_file, path: ./res/parallel_run_step.txt}}",
            append="x",
        ),
    )
    assert found == [
        f"jobs.b.outputs.y: writes to {folder / 'res' / 'parallel_run_step.txt'}, the file in "
        "which append_row_to collects the rows of jobs.a.outputs.x: one would overwrite the "
        "other (give each output a path of its own, or leave out `path:`: an output without "
        "one goes to <run dir>/outputs/<step>/<output>)"
    ]


def test_an_output_inside_another_outputs_folder_is_a_warning(folder):
    path = folder / "job.yml"
    path.write_text(
        two_steps(
            "{x: {path: ./res}, v: {path: s3://b/p}}",
            "{y: {path: ./res/sub}, z: {path: s3://b/p/q}, w: {path: ./res2}}",
            append="x",
        )
    )
    job = load_job(path, run_dir=str(folder / "run"), env=NO_ENV)
    assert job.warnings == (
        f"jobs.b.outputs.y ({folder / 'res' / 'sub'}) is inside the folder of jobs.a.outputs.x "
        f"({folder / 'res'}): its files become part of that output, and of what a step reading "
        "that output sees; give it a folder of its own to keep them apart",
        "jobs.b.outputs.z (s3://b/p/q) is inside the folder of jobs.a.outputs.v (s3://b/p): its "
        "files become part of that output, and of what a step reading that output sees; give it "
        "a folder of its own to keep them apart",
    )
