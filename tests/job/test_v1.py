"""A v1 ``ParallelRunConfig`` YAML loaded into the same model as a v2 file (README "v1
ParallelRunConfig"): every field's mapping, ``--input``/``--output``, and the errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from daskprs.errors import JobSpecError
from daskprs.job.load import load_job, validate_file
from daskprs.job.model import DataInput, MiniBatchSize
from daskprs.job.v1 import V1Options

NO_ENV = {"HOME": "/nonexistent-home"}

FULL = """
parallel_run_config:
  mini_batch_size: '5'
  error_threshold: 7
  output_action: append_row
  logging_level: DEBUG
  compute_target_name: cpu-cluster
  node_count: 2
  process_count_per_node: 3
  entry_script: score.py
  source_directory: src
  description: scoring
  run_invocation_timeout: 45
  run_max_try: 4
  append_row_file_name: results.txt
  allowed_failed_count: 9
  allowed_failed_percent: 12.5
  environment:
    name: prs-env
    python: {user_managed_dependencies: false}
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config(folder: Path, text: str, name: str = "prc.yml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load(path: Path, sets=(), **kwargs):
    """``kwargs``: the V1Options (input_path, output_path, arguments, side_inputs)."""
    v1 = V1Options(**kwargs)
    return load_job(path, sets, run_dir=str(path.parent / "run"), env=NO_ENV, v1=v1)


def problems_of(path: Path, sets=(), **kwargs) -> list[tuple[str, str]]:
    with pytest.raises(JobSpecError) as info:
        load(path, sets, **kwargs)
    return [(p.place, f"{p.message} {p.hint}") for p in info.value.problems]


def test_every_v1_field_maps_onto_the_model(folder):
    job = load(config(folder, FULL), input_path="data", output_path="out")
    assert job.kind == "v1"
    [step] = job.steps
    assert step.name == "prc"
    assert step.input_data == DataInput("input_data", "uri_folder", str(folder / "data"))
    assert step.code_dir == str(folder / "src") and step.entry_script == "score.py"
    assert step.mini_batch_size == MiniBatchSize(5, "count", "5")
    assert step.instance_count == 2 and step.max_concurrency_per_instance == 3
    s = step.settings
    assert (s.error_threshold, s.mini_batch_error_threshold) == (7, 9)
    assert (s.max_retries, s.timeout) == (3, 45)  # run_max_try 4 = 4 tries in all
    assert (s.allowed_failed_percent, s.logging_level) == (12.5, "DEBUG")
    assert step.outputs["output"].path == str(folder / "out")
    assert step.append_row_to == str(folder / "out" / "results.txt")
    assert step.output_dir == str(folder / "out")
    assert any("parallel_run_config.environment: not applied" in n for n in job.notes)
    assert any("azureml:cpu-cluster is not applied" in n for n in job.notes)


def test_flat_form_defaults_summary_only_and_input_kinds(folder):
    (folder / "table").mkdir()
    (folder / "table" / "MLTable").write_text(
        "paths:\n  - file: ./t.csv\ntransformations:\n  - read_delimited: {delimiter: ','}\n"
    )
    (folder / "table" / "t.csv").write_text("a\n1\n")
    flat = config(folder, "entry_script: score.py\nsource_directory: src\nmini_batch_size: 1KB\n")
    job = load(flat, input_path=str(folder / "table"))
    [step] = job.steps
    assert step.input_data.type == "mltable" and step.input_data.path == str(folder / "table")
    assert step.mini_batch_size == MiniBatchSize(1024, "bytes", "1KB")
    # v1 defaults: append_row to parallel_run_step.txt in the run's output folder
    assert step.append_row_to == str(folder / "run/outputs/prc/output/parallel_run_step.txt")
    assert (step.settings.max_retries, step.settings.timeout) == (2, 60)
    summary = config(
        folder, "entry_script: score.py\nsource_directory: src\noutput_action: summary_only\n"
    )
    [step] = load(summary, input_path="data/a.txt").steps
    assert step.input_data == DataInput("input_data", "uri_file", str(folder / "data" / "a.txt"))
    assert step.append_row_to is None
    assert step.output_dir == str(folder / "run/outputs/prc/output")
    [step] = load(summary, ["run_max_try=1", "mini_batch_size=3"], input_path="data").steps
    assert step.settings.max_retries == 0 and step.mini_batch_size.value == 3


def test_v1_problems_name_the_v1_place(folder):
    bad = config(
        folder,
        """
        parallel_run_config:
          entry_script: missing.py
          source_directory: src
          output_action: append_rows
          run_max_try: 0
          mini_batch_size: 1.5mb
          allowed_failed_percent: 150
          node_cont: 2
        """,
    )
    found = dict(problems_of(bad, input_path="nowhere"))
    assert "is not in" in found["parallel_run_config.entry_script"]
    assert "allowed: append_row, summary_only" in found["parallel_run_config.output_action"]
    assert "must be >= 1" in found["parallel_run_config.run_max_try"]
    assert "parallel_run_config.mini_batch_size" in found
    assert "must be <= 100" in found["parallel_run_config.allowed_failed_percent"]
    assert "did you mean `node_count`" in found["parallel_run_config.node_cont"]
    assert "nowhere: no such file or folder" in found["--input"]


def test_input_is_required_and_only_for_v1_files(folder):
    v1 = config(folder, "entry_script: score.py\nsource_directory: src\nnode_count: 1\n")
    [(place, text)] = problems_of(v1)
    assert place == "--input" and "give it with --input PATH" in text
    _, problems, _ = validate_file(v1, [], "data")
    assert problems == []
    v2 = config(
        folder,
        """
        type: parallel
        inputs:
          data: {type: uri_folder, path: ./data}
        input_data: ${{inputs.data}}
        task:
          type: run_function
          code: ./src
          entry_script: score.py
        """,
        "v2.yml",
    )
    [(place, text)] = problems_of(v2, input_path="data")
    assert place == "--input" and "--set inputs.<name>=PATH" in text
    bad_set = problems_of(v1, ["jobs.x.mini_batch_size=3"], input_path="data")
    assert bad_set[0][0] == "--set" and "v1 field" in bad_set[0][1]


def test_arguments_side_inputs_and_partition_keys_of_a_parallel_run_step(folder):
    """ParallelRunStep's `arguments` (beside the config, or with --arguments) and side inputs
    (--side-input NAME=PATH, bound as ${{inputs.NAME}}); `partition_keys` in the config."""
    (folder / "labels").mkdir()
    wrapped = config(
        folder,
        """
        parallel_run_config:
          entry_script: score.py
          source_directory: src
          partition_keys: [Store, Brand]
          allowed_failed_percent: 10
        arguments: [--model_name, mnist, --labels_dir, "${{inputs.labels}}"]
        """,
    )
    [step] = load(wrapped, input_path="data", side_inputs=("labels=labels",)).steps
    labels = str(folder / "labels")
    assert step.program_arguments[:4] == ("--model_name", "mnist", "--labels_dir", labels)
    assert step.settings.allowed_failed_percent == 10
    assert step.partition_keys == ("Store", "Brand")
    assert step.inputs["labels"] == DataInput("labels", "uri_folder", labels)
    # --arguments replaces the file's; the flat form takes `arguments` among the fields
    given = load(wrapped, input_path="data", arguments="--model_name lenet")
    assert given.steps[0].program_arguments[:2] == ("--model_name", "lenet")
    flat = config(
        folder, "entry_script: score.py\nsource_directory: src\narguments: --k 1\n", "f.yml"
    )
    assert load(flat, input_path="data").steps[0].program_arguments == ("--k", "1")
    named, missing = problems_of(
        flat, input_path="data", side_inputs=("input_data=labels", "x=nowhere")
    )
    assert named[0] == "--side-input" and "a word other than input_data" in named[1]
    assert missing[0] == "--side-input" and "nowhere: no such file or folder" in missing[1]
