"""Tests of daskprs.job.load: reading, validating and binding job files (docs/job-files.md)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from daskprs.errors import JobSpecError
from daskprs.job import load as job_load
from daskprs.job.load import NOT_YET_APPLIED, load_job, parse_mini_batch_size, validate_file
from daskprs.job.model import CommandStep, DataInput, MiniBatchSize, ParallelStep

SEED = Path(__file__).parent / "data" / "spec" / "seed_pipeline.yml"
RUN_SCRIPT = "def init():\n    pass\n\n\ndef run(mini_batch):\n    return mini_batch\n"
NO_ENV = {"HOME": "/nonexistent-home"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A job folder with a code folder holding an entry script, and a data folder."""
    write(tmp_path / "src" / "score.py", RUN_SCRIPT)
    write(tmp_path / "data" / "a.txt", "a\n")
    return tmp_path


def load(path: Path, sets=(), **kwargs):
    kwargs.setdefault("run_dir", str(path.parent / "runs" / "r1"))
    kwargs.setdefault("env", NO_ENV)
    return load_job(path, sets, **kwargs)


def problems_of(path: Path, sets=(), **kwargs):
    with pytest.raises(JobSpecError) as info:
        load(path, sets, **kwargs)
    return info.value.problems


def places(problems) -> list[str]:
    return [p.place for p in problems]


def pipeline(folder: Path, node: str, extra: str = "") -> Path:
    """A pipeline with one inline parallel node ``score``; ``node`` lines are added to it."""
    body = textwrap.indent(textwrap.dedent(node).strip("\n"), "    ")
    text = (
        "type: pipeline\n"
        + textwrap.dedent(extra)
        + "jobs:\n  score:\n"
        + "    type: parallel\n"
        + "    inputs:\n      data: {type: uri_folder, path: ./data}\n"
        + "    input_data: ${{inputs.data}}\n"
        + "    task:\n      type: run_function\n      code: ./src\n      entry_script: score.py\n"
        + body
        + "\n"
    )
    return write(folder / "job.yml", text)


def only_step(job) -> ParallelStep:
    (step,) = job.steps
    assert isinstance(step, ParallelStep)
    return step


# --------------------------------------------------------------------------- the seed


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    job = tmp_path / "pipeline.yml"
    job.write_text(SEED.read_text())
    write(tmp_path / "script" / "iris_prediction.py", RUN_SCRIPT)
    write(tmp_path / "neural-iris-mltable" / "MLTable", "paths:\n  - file: ./iris.csv\n")
    write(tmp_path / "neural-iris-mltable" / "iris.csv", "a,b\n1,2\n")
    (tmp_path / "iris-model").mkdir()
    return job


def test_seed_example_binds_everything(seed: Path):
    run_dir = seed.parent / "runs" / "iris-20240101"
    job = load(seed, run_dir=str(run_dir))
    step = only_step(job)
    assert job.kind == "pipeline" and job.name == "iris-20240101" and job.run_dir == str(run_dir)
    assert step.input_data == DataInput(
        "input_data", "mltable", str(seed.parent / "neural-iris-mltable"), "direct"
    )
    assert step.inputs["score_model"] == DataInput(
        "score_model", "uri_folder", str(seed.parent / "iris-model"), "download"
    )
    assert step.code_dir == str(seed.parent / "script")
    assert step.entry_script == "iris_prediction.py"
    assert step.mini_batch_size == MiniBatchSize(10240, "bytes", "10kb")
    assert (step.instance_count, step.max_concurrency_per_instance) == (2, 2)
    assert step.program_arguments[:2] == ("--model", str(seed.parent / "iris-model"))
    assert step.program_arguments[-2:] == ("--resource_monitor_interva", "20")
    out = run_dir / "outputs" / "batch_prediction" / "job_output_file"
    assert step.outputs["job_output_file"].path == str(out)
    assert not step.outputs["job_output_file"].explicit
    assert step.append_row_to == str(out / "parallel_run_step.txt")
    assert step.output_dir == str(out)
    assert step.compute is None
    s = step.settings
    assert (s.logging_level, s.max_retries, s.timeout) == ("DEBUG", 2, 60)
    assert (s.error_threshold, s.mini_batch_error_threshold) == (5, 5)
    assert (s.allowed_failed_percent, s.task_overhead_timeout) == (30, 1200)
    assert (s.progress_update_timeout, s.first_task_creation_timeout) == (600, 600)
    assert s.resource_monitor_interval == 600  # the misspelt argument is not read
    notes = "\n".join(job.notes)
    assert (
        "jobs.batch_prediction.compute: azureml:cpu-cluster is not applied: no mapping in "
        "daskprs.yaml `computes:`; the job runs on --scheduler or the embedded cluster"
    ) in job.notes
    assert notes.count("azureml:cpu-cluster") == 1  # default_compute is the same cluster
    assert "environment.image: mcr.microsoft.com/azureml/openmpi4.1.0" in notes
    assert "environment.conda_file" in notes
    assert "--copy_logs_to_parent accepted; logs stay with the run" in notes
    (warning,) = job.warnings
    assert "--resource_monitor_interva" in warning and "--resource_monitor_interval?" in warning


def test_seed_validates_with_default_run_dir(seed: Path, monkeypatch):
    monkeypatch.chdir(seed.parent)
    job, problems, messages = validate_file(seed)
    assert problems == [] and job is not None
    assert job.run_dir == str(seed.parent / "daskprs-runs" / "pipeline")
    assert job.name == "pipeline"
    assert any("resource_monitor_interva " in m for m in messages)
    assert any("not applied" in m for m in messages)


def test_validate_file_returns_problems_without_raising(seed: Path):
    seed.write_text(seed.read_text().replace("retry_settings:", "retry_setings:"))
    job, problems, _ = validate_file(seed)
    assert job is None
    assert places(problems) == ["jobs.batch_prediction.retry_setings"]


def test_public_api():
    assert set(job_load.__all__) == {
        "NOT_YET_APPLIED",
        "load_job",
        "parse_mini_batch_size",
        "validate_file",
    }
    assert isinstance(NOT_YET_APPLIED, frozenset)
    assert NOT_YET_APPLIED == frozenset()  # every parsed field is applied now


# --------------------------------------------------------------------------- file kinds


def test_component_file_node_with_paths_relative_to_the_component(folder: Path):
    write(folder / "components" / "src" / "score.py", RUN_SCRIPT)
    write(
        folder / "components" / "score.yml",
        """
        $schema: https://azuremlschemas.azureedge.net/latest/parallelComponent.schema.json
        type: parallel
        name: batch_score
        version: 1
        inputs:
          data: {type: uri_folder, description: the files}
          batch: {type: string, default: "4"}
          threshold: {type: integer, default: 3}
        outputs:
          scores: {type: uri_folder}
        input_data: ${{inputs.data}}
        mini_batch_size: "10"
        error_threshold: ${{inputs.threshold}}
        environment_variables: {K: 1}
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          program_arguments: --batch ${{inputs.batch}} --out ${{outputs.scores}}
        """,
    )
    job_file = write(
        folder / "job.yml",
        """
        type: pipeline
        inputs:
          files: {type: uri_folder, path: ./data}
        jobs:
          score:
            component: ./components/score.yml
            inputs:
              data: ${{parent.inputs.files}}
            mini_batch_size: "2"
        """,
    )
    job = load(job_file)
    step = only_step(job)
    assert step.code_dir == str(folder / "components" / "src")
    assert step.input_data == DataInput("data", "uri_folder", str(folder / "data"), "")
    assert step.mini_batch_size == MiniBatchSize(2, "count", "2")  # the node wins
    assert step.settings.error_threshold == 3  # bound to a component default
    assert step.inputs["batch"] == "4"
    assert step.environment_variables == {"K": "1"}
    out = str(folder / "runs" / "r1" / "outputs" / "score" / "scores")
    assert step.program_arguments == ("--batch", "4", "--out", out)


def test_component_file_problems_name_the_component_file(folder: Path):
    write(
        folder / "comp.yml",
        """
        type: parallel
        name: c
        version: 1
        inputs: {data: {type: uri_folder}}
        input_data: ${{inputs.data}}
        retry_settings: {timout: 5}
        task: {type: run_function, code: ./src, entry_script: score.py}
        """,
    )
    job_file = write(
        folder / "job.yml",
        """
        type: pipeline
        jobs:
          score:
            component: ./comp.yml
            inputs: {data: {type: uri_folder, path: ./data}, extra: 1}
        """,
    )
    problems = problems_of(job_file)
    assert places(problems) == ["comp.yml: retry_settings.timout", "jobs.score.inputs.extra"]
    assert "`timeout`" in problems[0].hint


def test_bare_component_file_binds_inputs_from_set(folder: Path, monkeypatch):
    comp = write(
        folder / "comp.yml",
        """
        type: parallel
        name: batch_score
        version: 1
        inputs:
          data: {type: uri_folder}
          size: {type: string, default: "3"}
          note: {type: string, optional: true}
        input_data: ${{inputs.data}}
        mini_batch_size: ${{inputs.size}}
        task: {type: run_function, code: ./src, entry_script: score.py}
        """,
    )
    monkeypatch.chdir(folder / "data")
    job = load(comp, ["inputs.data=."])
    step = only_step(job)
    assert job.kind == "component" and step.name == "batch_score"
    assert step.input_data.path == str(folder / "data")
    assert step.mini_batch_size == MiniBatchSize(3, "count", "3")
    assert "note" not in step.inputs
    problems = problems_of(comp)
    assert places(problems) == ["inputs.data"]
    assert "--set inputs.data=" in problems[0].hint


def test_bare_parallel_file_is_named_after_its_file(folder: Path):
    bare = write(
        folder / "prs.yml",
        """
        type: parallel
        inputs: {data: {type: uri_folder, path: ./data}}
        input_data: ${{inputs.data}}
        task: {type: run_function, code: ./src, entry_script: score.py}
        """,
    )
    job = load(bare, ["mini_batch_size=5", "jobs.prs.retry_settings.max_retries=0"])
    step = only_step(job)
    assert job.kind == "parallel" and step.name == "prs"
    assert step.mini_batch_size == MiniBatchSize(5, "count", "5")
    assert step.settings.max_retries == 0
    assert step.mini_batch_size is not None and step.code_dir == str(folder / "src")


# --------------------------------------------------------------------------- problems


def test_unknown_key_names_its_place_and_the_closest_key(folder: Path):
    job_file = pipeline(folder, "retry_settings: {timout: 5}\nmini_bach_size: '1'\n")
    problems = problems_of(job_file)
    assert places(problems) == [
        "jobs.score.retry_settings.timout",
        "jobs.score.mini_bach_size",
    ]
    assert problems[0].hint == "did you mean `timeout`?"
    assert problems[1].hint == "did you mean `mini_batch_size`?"


def test_all_problems_are_reported_together(folder: Path):
    job_file = pipeline(
        folder,
        """
        mini_batch_size: 1.5mb
        logging_level: LOUD
        resources: {instance_count: 0}
        retry_settings: {timeout: 300000, max_retries: -1}
        max_concurrency_per_instance: many
        error_threshold: -2
        """,
        extra="settings: {continue_on_step_failur: true}\n",
    )
    problems = problems_of(job_file)
    assert sorted(places(problems)) == sorted(
        [
            "settings.continue_on_step_failur",
            "jobs.score.mini_batch_size",
            "jobs.score.logging_level",
            "jobs.score.resources.instance_count",
            "jobs.score.retry_settings.timeout",
            "jobs.score.retry_settings.max_retries",
            "jobs.score.max_concurrency_per_instance",
            "jobs.score.error_threshold",
        ]
    )
    by_place = {p.place: p for p in problems}
    assert "DEBUG, INFO, WARNING" in by_place["jobs.score.logging_level"].hint
    assert "259200" in by_place["jobs.score.retry_settings.timeout"].hint
    message = str(JobSpecError("job.yml", problems))
    assert "8 problem(s)" in message


def test_unsupported_values_are_problems(folder: Path):
    job_file = write(
        folder / "job.yml",
        """
        type: pipeline
        jobs:
          score:
            type: parallel
            inputs:
              data: {type: uri_folder, path: memory://bucket/x, mode: rw_mount}
              other: {type: uri_flder, path: ./data}
            outputs:
              out: {type: uri_folder, mode: ro_mount}
            input_data: ${{inputs.data}}
            task: {type: function, code: ./src, entry_script: score.py}
          sweep:
            type: sweep
        """,
    )
    problems = problems_of(job_file)
    assert sorted(places(problems)) == sorted(
        [
            "jobs.sweep.type",
            "jobs.score.outputs.out.mode",
            "jobs.score.inputs.data",
            "jobs.score.inputs.data.mode",
            "jobs.score.inputs.other.type",
            "jobs.score.task.type",
        ]
    )
    assert any("memory://" in p.message for p in problems)


def test_invalid_yaml_is_a_problem(tmp_path: Path):
    bad = write(tmp_path / "bad.yml", "type: pipeline\njobs: [a\n")
    (problem,) = problems_of(bad)
    assert "not valid YAML at line" in problem.message
    (missing,) = problems_of(tmp_path / "none.yml")
    assert "cannot read" in missing.message


# --------------------------------------------------------------------------- mini_batch_size


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10", MiniBatchSize(10, "count", "10")),
        ("10kb", MiniBatchSize(10 * 1024, "bytes", "10kb")),
        ("1MB", MiniBatchSize(1024**2, "bytes", "1MB")),
        ("2Gb", MiniBatchSize(2 * 1024**3, "bytes", "2Gb")),
        ("5000rows", MiniBatchSize(5000, "rows", "5000rows")),
        (7, MiniBatchSize(7, "count", "7")),
        # with a space, as Azure's reference page writes it (docs/job-files.md#mini-batch-size)
        ("100 kb", MiniBatchSize(102400, "bytes", "100 kb")),
        ("2  MB", MiniBatchSize(2 * 1024**2, "bytes", "2  MB")),
    ],
)
def test_mini_batch_size_forms(value, expected):
    assert parse_mini_batch_size(value) == expected


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        ("1.5mb", '"1536kb"'),
        ("1 0kb", '"10kb"'),
        ("10tb", '"10240gb"'),
        ("10k", '"10kb"'),
        ("-3", '"10kb"'),
        (2.5, "whole numbers"),
        (True, '"10kb"'),
        ("ten", '"5000rows"'),
    ],
)
def test_bad_mini_batch_sizes_give_the_right_form(value, hint):
    with pytest.raises(ValueError, match="not a valid mini_batch_size") as info:
        parse_mini_batch_size(value)
    assert hint in str(info.value)


@pytest.mark.parametrize(
    ("size", "input_type", "needle"),
    [
        ("1.5mb", "uri_folder", '"1536kb"'),
        ("1 0kb", "mltable", '"10kb"'),
        ("10tb", "mltable", '"10240gb"'),
        ("1mb", "uri_folder", "list of files"),
        ("5000rows", "uri_file", "list of files"),
    ],
)
def test_bad_mini_batch_size_in_a_job(folder: Path, size, input_type, needle):
    write(folder / "data.csv", "a\n1\n")
    path = "./data.csv" if input_type == "uri_file" else "./data"
    job_file = pipeline(folder, f"mini_batch_size: '{size}'")
    job_file.write_text(
        job_file.read_text().replace(
            "{type: uri_folder, path: ./data}", f"{{type: {input_type}, path: {path}}}"
        )
    )
    (problem,) = problems_of(job_file)
    assert problem.place == "jobs.score.mini_batch_size"
    assert needle in f"{problem.message} {problem.hint}"


def test_mini_batch_size_units_on_mltable_and_default(folder: Path):
    job = load(pipeline(folder, ""))
    assert only_step(job).mini_batch_size is None
    job_file = pipeline(folder, "mini_batch_size: 1mb")
    job_file.write_text(job_file.read_text().replace("type: uri_folder", "type: mltable"))
    assert only_step(load(job_file)).mini_batch_size == MiniBatchSize(1024**2, "bytes", "1mb")


def test_mode_is_empty_when_not_given_and_kept_when_given(folder: Path):
    job_file = pipeline(
        folder,
        """
        inputs:
          data: ${{parent.inputs.table}}
          direct: {type: mltable, path: "${{parent.inputs.table}}", mode: direct}
          mounted: {type: mltable, path: ./data, mode: ro_mount}
        """,
        extra="inputs:\n  table: {type: mltable, path: ./data}\n",
    )
    inputs = only_step(load(job_file)).inputs
    assert inputs["data"] == DataInput("data", "mltable", str(folder / "data"), "")
    assert (inputs["direct"].mode, inputs["mounted"].mode) == ("direct", "ro_mount")


def test_mini_batch_size_bound_to_a_pipeline_input(folder: Path):
    job_file = pipeline(
        folder, "mini_batch_size: ${{parent.inputs.mbs}}", extra="inputs:\n  mbs: 4\n"
    )
    assert only_step(load(job_file)).mini_batch_size == MiniBatchSize(4, "count", "4")


def test_partition_keys_are_kept(folder: Path):
    job_file = pipeline(folder, "partition_keys: [Store, Brand]\nmini_batch_size: '0'")
    job_file.write_text(job_file.read_text().replace("type: uri_folder", "type: mltable"))
    job = load(job_file)
    assert only_step(job).partition_keys == ("Store", "Brand")
    assert not any("partition_keys" in n for n in job.notes)


# --------------------------------------------------------------------------- bindings


def test_unresolved_bindings_are_named(folder: Path):
    job_file = pipeline(
        folder,
        """
        inputs:
          data: {type: uri_folder, path: ./data}
          p: ${{parent.inputs.missing}}
          q: ${{parent.jobs.prep.outputs.out}}
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          program_arguments: --x ${{inputs.dta}} --y ${{outputs.none}}
          append_row_to: ${{inputs.data}}
        """,
        extra="inputs:\n  mbs: 3\n",
    )
    problems = problems_of(job_file)
    messages = [p.message for p in problems]
    assert "unknown binding ${{parent.inputs.missing}}" in messages
    assert "unknown binding ${{parent.jobs.prep.outputs.out}}" in messages
    assert "unknown binding ${{inputs.dta}}" in messages
    assert "unknown binding ${{outputs.none}}" in messages
    by_message = {p.message: p for p in problems}
    assert by_message["unknown binding ${{inputs.dta}}"].hint == "did you mean ${{inputs.data}}?"
    assert any(p.place == "jobs.score.task.append_row_to" for p in problems)


def test_a_failed_input_is_reported_once(folder: Path):
    job_file = pipeline(
        folder,
        """
        inputs:
          data: {type: uri_folder, path: ./nodata}
        outputs:
          out: {type: uri_flder}
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          program_arguments: --in ${{inputs.data}} --out ${{outputs.out}}
        """,
    )
    problems = problems_of(job_file)
    assert places(problems) == ["jobs.score.outputs.out.type", "jobs.score.inputs.data"]


def test_input_data_must_bind_a_data_input(folder: Path):
    job_file = pipeline(folder, "inputs:\n  data: {type: uri_folder, path: ./data}\n  n: 3")
    job_file.write_text(job_file.read_text().replace("${{inputs.data}}", "${{inputs.n}}"))
    (problem,) = problems_of(job_file)
    assert problem.place == "jobs.score.input_data"
    assert "not a data input" in problem.message


def test_program_arguments_split_first_then_bind(folder: Path):
    spaced = folder / "my data"
    spaced.mkdir()
    job_file = pipeline(
        folder,
        """
        inputs:
          data: {type: uri_folder, path: ./data}
          extra: {type: uri_folder, path: ./my data}
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          program_arguments: >-
            --in ${{inputs.extra}} --label "a b" --both=${{inputs.extra}}/x
        """,
    )
    step = only_step(load(job_file))
    assert step.program_arguments == (
        "--in",
        str(spaced),
        "--label",
        "a b",
        f"--both={spaced}/x",
    )


def test_optional_inputs_in_command_blocks(folder: Path):
    job_file = write(
        folder / "job.yml",
        """
        type: pipeline
        jobs:
          prep:
            component:
              type: command
              inputs:
                a: {type: string, optional: true}
                b: {type: string, default: x}
              command: echo $[[--a ${{inputs.a}}]] $[[--b ${{inputs.b}}]]
        """,
    )
    (step,) = load(job_file).steps
    assert isinstance(step, CommandStep)
    assert step.command == "echo  --b x"
    assert step.code_dir == str(folder)


# --------------------------------------------------------------------------- code and script


@pytest.mark.parametrize(
    ("code", "entry", "script", "needle"),
    [
        ("./nosrc", "score.py", None, "task.code folder"),
        ("./src", "nope.py", None, "entry script"),
        ("./src", "score.py", "def init():\n    pass\n", "defines no run(mini_batch)"),
        ("./src", "score.py", "def run(:\n", "syntax error at line 1"),
    ],
)
def test_code_folder_entry_script_and_run(folder: Path, code, entry, script, needle):
    if script is not None:
        (folder / "src" / "score.py").write_text(script)
    job_file = pipeline(folder, "")
    job_file.write_text(
        job_file.read_text()
        .replace("code: ./src", f"code: {code}")
        .replace("entry_script: score.py", f"entry_script: {entry}")
    )
    (problem,) = problems_of(job_file)
    assert problem.place in ("jobs.score.task.code", "jobs.score.task.entry_script")
    assert needle in problem.message


def test_run_defined_by_import_or_under_if_counts(folder: Path):
    (folder / "src" / "score.py").write_text(
        "import sys\nif sys.version_info >= (3,):\n    def run(mini_batch):\n        return []\n"
    )
    assert only_step(load(pipeline(folder, ""))).entry_script == "score.py"


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize(
    ("output", "append", "output_dir"),
    [
        ("{type: uri_file, path: ./res/preds.csv}", "res/preds.csv", "res"),
        ("{type: uri_folder, path: ./res}", "res/parallel_run_step.txt", "res"),
        (
            "{type: uri_file}",
            "runs/r1/outputs/score/out/parallel_run_step.txt",
            "runs/r1/outputs/score/out",
        ),
        ("", "runs/r1/outputs/score/out/parallel_run_step.txt", "runs/r1/outputs/score/out"),
    ],
)
def test_append_row_to_placement(folder: Path, output, append, output_dir):
    job_file = pipeline(
        folder,
        f"""
        outputs:
          out: {output}
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          append_row_to: ${{{{outputs.out}}}}
        """,
    )
    step = only_step(load(job_file))
    assert step.append_row_to == str(folder / append)
    assert step.output_dir == str(folder / output_dir)


def test_outputs_default_under_run_dir_and_name_binding(folder: Path):
    job_file = pipeline(
        folder,
        """
        outputs:
          a: {type: uri_folder}
          b: {type: uri_folder, path: "azureml://datastores/${{default_datastore}}/paths/${{name}}/b"}
          c: ${{parent.outputs.final}}
        """,
        extra="outputs:\n  final: {type: uri_file, path: ./final/result.txt}\n",
    )
    job = load(job_file, run_dir=str(folder / "runs" / "myrun"), run_name="named")
    outputs = only_step(job).outputs
    assert outputs["a"].path == str(folder / "runs" / "myrun" / "outputs" / "score" / "a")
    assert not outputs["a"].explicit
    expected_b = Path.cwd() / "daskprs-datastores" / "workspaceblobstore" / "named" / "b"
    assert outputs["b"].path == str(expected_b) and outputs["b"].explicit
    assert (outputs["c"].type, outputs["c"].path) == ("uri_file", str(folder / "final/result.txt"))
    assert only_step(job).output_dir == outputs["a"].path
    assert job.name == "named"


# --------------------------------------------------------------------------- --set


def test_set_overrides_node_fields_and_binds_inputs(folder: Path, monkeypatch):
    job_file = pipeline(
        folder,
        "inputs:\n  data: ${{parent.inputs.files}}\n  n: ${{parent.inputs.n}}\n"
        "retry_settings: {timeout: 30}",
        extra="inputs:\n  files: {type: uri_folder, path: ./data}\n  n: 1\n",
    )
    other = folder / "elsewhere" / "files"
    other.mkdir(parents=True)
    monkeypatch.chdir(folder / "elsewhere")
    job = load(
        job_file,
        [
            "inputs.files=files",
            "inputs.n=7",
            "jobs.score.mini_batch_size=3",
            "jobs.score.retry_settings.timeout=5",
            "jobs.score.environment_variables.MODE=fast",
        ],
    )
    step = only_step(job)
    assert step.input_data.path == str(other)
    assert step.settings.timeout == 5
    assert step.inputs["n"] == 7
    assert step.mini_batch_size == MiniBatchSize(3, "count", "3")
    assert step.environment_variables == {"MODE": "fast"}
    # a unit on a folder input is an error, reported at the node's field
    (problem,) = validate_file(job_file, ["jobs.score.mini_batch_size=1mb"])[1]
    assert problem.place == "jobs.score.mini_batch_size"


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("jobs.score.mini_batch_size", "not KEY=VALUE"),
        ("jobs.scor.mini_batch_size=1", "did you mean `score`?"),
        ("jobs.score.retry_settings.timout=5", "did you mean `timeout`?"),
        ("inputs.nope=1", "no input 'nope'"),
        ("=3", "not KEY=VALUE"),
    ],
)
def test_bad_set_is_a_problem(folder: Path, item, needle):
    job_file = pipeline(folder, "")
    (problem,) = problems_of(job_file, [item])
    assert problem.place == "--set"
    assert needle in f"{problem.message} {problem.hint}"


@pytest.mark.parametrize(
    ("item", "message", "hint"),
    [
        (
            "jobs.score=1",
            "'score' is a node: a node cannot be set to a value",
            "jobs.score.<field>=",
        ),
        ("jobs=1", "jobs holds the pipeline's nodes", "jobs.<node>.<field>=VALUE"),
        ("inputs=1", "inputs holds the inputs", "inputs.<name>=VALUE; inputs: files"),
        ("outputs=1", "outputs is a mapping", "--set outputs.<name>=VALUE"),
        ("jobs.score.inputs=1", "inputs is a mapping", "jobs.score.inputs.<name>=VALUE"),
        ("jobs.score.retry_settings=5", "cannot be set to one value", "max_retries, timeout"),
        ("jobs.score.task=x", "task is a mapping", "jobs.score.task.<field>=VALUE"),
    ],
)
def test_a_set_that_gives_a_node_or_a_section_one_value_shows_the_form(
    folder: Path, item, message, hint
):
    job_file = pipeline(folder, "", extra="inputs:\n  files: ./data\n")
    (problem,) = problems_of(job_file, [item])
    assert problem.place == "--set"
    assert message in problem.message and hint in problem.hint, problem
    assert "no node" not in problem.message and "did you mean" not in problem.hint


def test_a_set_that_gives_the_step_of_a_single_file_one_value_shows_the_form(folder: Path):
    bare = write(
        folder / "prs.yml",
        """
        type: parallel
        inputs:
          data: {type: uri_folder, path: ./data}
        input_data: ${{inputs.data}}
        task: {type: run_function, code: ./src, entry_script: score.py}
        """,
    )
    by_item = {item: problems_of(bare, [item])[0] for item in ("jobs.prs=1", "jobs=1", "jobs.x=1")}
    assert "'prs' is a node" in by_item["jobs.prs=1"].message
    assert "this file's one step" in by_item["jobs=1"].message
    assert by_item["jobs.x=1"].hint == "write jobs.prs.<field>=VALUE"
    # a string still names an environment
    assert load(bare, ["task.environment=azureml:env:1"]).steps


# --------------------------------------------------------------------------- datastores, computes


def test_azureml_datastore_paths_resolve_through_configuration(folder: Path, monkeypatch):
    (folder / "store" / "in").mkdir(parents=True)
    job_file = pipeline(folder, "compute: azureml:gpu")
    job_file.write_text(
        job_file.read_text().replace("path: ./data", "path: azureml://datastores/ds/paths/in")
    )
    config = {"datastores": {"ds": str(folder / "store")}, "computes": {"gpu": "tcp://h:8786"}}
    step = only_step(load(job_file, config=config))
    assert step.input_data.path == str(folder / "store" / "in")
    assert step.compute == "tcp://h:8786"
    # default root under the current directory
    monkeypatch.chdir(folder)
    (folder / "daskprs-datastores" / "ds" / "in").mkdir(parents=True)
    step = only_step(load(job_file, config={}))
    assert step.input_data.path == str(folder / "daskprs-datastores" / "ds" / "in")
    assert step.compute is None
    # daskprs.yaml next to the job file, relative roots from its folder
    write(folder / "daskprs.yaml", "datastores: {ds: ./store}\n")
    assert only_step(load(job_file)).input_data.path == str(folder / "store" / "in")


def test_user_configuration_honours_xdg_config_home(folder: Path, tmp_path_factory):
    config_home = tmp_path_factory.mktemp("config")
    write(config_home / "daskprs" / "daskprs.yaml", "datastores: {ds: s3://bucket/root}\n")
    job_file = pipeline(folder, "")
    job_file.write_text(
        job_file.read_text().replace("path: ./data", "path: azureml://datastores/ds/paths/in/x")
    )
    step = only_step(load(job_file, env={"XDG_CONFIG_HOME": str(config_home)}))
    assert step.input_data.path == "s3://bucket/root/in/x"


def test_urls_and_file_urls(folder: Path):
    job_file = pipeline(
        folder,
        f"""
        inputs:
          data: {{type: uri_folder, path: "file://{folder}/data"}}
          remote: {{type: uri_folder, path: "s3://bucket/prefix"}}
          asset: {{type: uri_folder, path: "azureml:iris:1"}}
        """,
    )
    problems = problems_of(job_file)
    assert places(problems) == ["jobs.score.inputs.asset"]
    job_file.write_text(job_file.read_text().replace('"azureml:iris:1"', "./data"))
    step = only_step(load(job_file))
    assert step.input_data.path == str(folder / "data")
    assert step.inputs["remote"].path == "s3://bucket/prefix"


# --------------------------------------------------------------------------- runtime arguments


def test_runtime_arguments_both_forms_and_run_max_try(folder: Path):
    job_file = pipeline(
        folder,
        """
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          program_arguments: >-
            --run_invocation_timeout=120 --run_max_try 4 --allowed_failed_count=7
            --logging_level WARNING --progress_update_timeout=900 --resource_monitor_interval 0
            --profiling_module cProfile --mine 1
        """,
    )
    job = load(job_file)
    s = only_step(job).settings
    assert (s.timeout, s.max_retries, s.mini_batch_error_threshold) == (120, 3, 7)
    assert (s.logging_level, s.progress_update_timeout) == ("WARNING", 900)
    assert (s.resource_monitor_interval, s.profiling_module) == (0, "cProfile")
    assert only_step(job).program_arguments[0] == "--run_invocation_timeout=120"
    assert job.warnings == ()
    assert not any("not yet applied" in n for n in job.notes)


def test_unsupported_profiling_module_is_a_problem(folder: Path):
    job_file = pipeline(
        folder,
        """
        inputs:
          data: {type: uri_folder, path: ./data}
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          program_arguments: --profiling_module yappi
        """,
    )
    with pytest.raises(JobSpecError, match="use --profiling_module cProfile"):
        load(job_file)


def test_program_argument_wins_over_node_field_with_a_warning(folder: Path):
    job_file = pipeline(
        folder,
        """
        retry_settings: {timeout: 60, max_retries: 2}
        error_threshold: 4
        inputs:
          data: {type: uri_folder, path: ./data}
          opt: {type: string, optional: true}
        task:
          type: run_function
          code: ./src
          entry_script: score.py
          program_arguments: >-
            --run_invocation_timeout 30 --run_max_try 3 --error_threshold 10
            $[[--opt ${{inputs.opt}}]] $[[--data ${{inputs.data}}]]
        """,
    )
    job = load(job_file)
    s = only_step(job).settings
    assert (s.timeout, s.max_retries, s.error_threshold) == (30, 2, 10)
    assert len(job.warnings) == 2
    assert only_step(job).program_arguments[-2:] == ("--data", str(folder / "data"))
    assert "--opt" not in only_step(job).program_arguments
    assert any(
        w.startswith(
            "jobs.score.retry_settings.timeout is 60 but program_arguments give "
            "--run_invocation_timeout 30; using the program argument (timeout = 30)"
        )
        for w in job.warnings
    )
    assert any("jobs.score.error_threshold is 4" in w for w in job.warnings)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ("--run_invocation_timeout soon", "must be a number"),
        ("--run_invocation_timeout 0", "must be > 0"),
        ("--run_max_try 0", "must be >= 1"),
        ("--logging_level LOUD", "not a logging level"),
        ("--error_threshold", "has no value"),
        ('--x "unbalanced', "cannot be split"),
    ],
)
def test_bad_runtime_arguments_are_problems(folder: Path, args, needle):
    job_file = pipeline(
        folder,
        f"task:\n  type: run_function\n  code: ./src\n  entry_script: score.py\n"
        f"  program_arguments: '{args}'",
    )
    (problem,) = problems_of(job_file)
    assert problem.place.startswith("jobs.score.task.program_arguments")
    assert needle in problem.message


def test_abbreviations_are_not_runtime_arguments(folder: Path):
    job_file = pipeline(
        folder,
        "task:\n  type: run_function\n  code: ./src\n  entry_script: score.py\n"
        "  program_arguments: --error_thresh 3 --run_max_tr 2",
    )
    job = load(job_file)
    assert only_step(job).settings.error_threshold == -1
    assert only_step(job).settings.max_retries == 2
    (warning,) = job.warnings  # only the one within edit distance 2
    assert "did you mean --run_max_try?" in warning


# --------------------------------------------------------------------------- pipelines


def test_command_step_runs_before_the_parallel_step_that_uses_it(folder: Path):
    job_file = write(
        folder / "job.yml",
        """
        type: pipeline
        settings: {continue_on_step_failure: true, default_datastore: azureml:mystore}
        inputs:
          raw: {type: uri_folder, path: ./data}
        jobs:
          score:
            type: parallel
            inputs:
              data: ${{parent.jobs.prep.outputs.clean}}
            input_data: ${{inputs.data}}
            task: {type: run_function, code: ./src, entry_script: score.py}
          prep:
            type: command
            code: ./src
            environment: azureml:AzureML-sklearn:1
            inputs: {raw: "${{parent.inputs.raw}}"}
            outputs: {clean: {type: uri_folder}}
            command: python prep.py --in ${{inputs.raw}} --out ${{outputs.clean}}
            environment_variables: {N: 2}
        """,
    )
    job = load(job_file)
    prep, score = job.steps
    assert isinstance(prep, CommandStep) and isinstance(score, ParallelStep)
    assert (prep.name, score.name) == ("prep", "score")
    assert score.depends_on == ("prep",) and prep.depends_on == ()
    clean = str(folder / "runs" / "r1" / "outputs" / "prep" / "clean")
    assert prep.command == f"python prep.py --in {folder / 'data'} --out {clean}"
    assert prep.code_dir == str(folder / "src") and prep.environment_variables == {"N": "2"}
    assert score.input_data == DataInput("data", "uri_folder", clean, "")
    assert job.continue_on_step_failure is True
    assert any("azureml:AzureML-sklearn:1 is not applied" in n for n in job.notes)


def test_dependency_cycle_is_a_problem(folder: Path):
    job_file = write(
        folder / "job.yml",
        """
        type: pipeline
        jobs:
          a:
            type: command
            inputs: {x: "${{parent.jobs.b.outputs.o}}"}
            outputs: {o: {type: uri_folder}}
            command: echo a
          b:
            type: command
            inputs: {x: "${{parent.jobs.a.outputs.o}}"}
            outputs: {o: {type: uri_folder}}
            command: echo b
        """,
    )
    (problem,) = problems_of(job_file)
    assert problem.place == "jobs"
    assert "a -> b -> a" in problem.message


def test_missing_local_input_path_is_a_problem(folder: Path):
    job_file = pipeline(folder, "")
    job_file.write_text(job_file.read_text().replace("./data", "./nodata"))
    (problem,) = problems_of(job_file)
    assert problem.place == "jobs.score.inputs.data"
    assert str(folder / "nodata") in problem.message


def test_azure_only_keys_are_noted_once(folder: Path):
    job_file = pipeline(
        folder,
        """
        identity: {type: managed}
        resources: {instance_count: 1, instance_type: Standard_D2, shm_size: 2g, docker_args: -x}
        """,
        extra="settings: {default_compute: azureml:c1, force_rerun: true}\n",
    )
    job = load(job_file)
    notes = "\n".join(job.notes)
    for key in ("identity", "instance_type", "shm_size", "docker_args"):
        assert notes.count(f".{key}") + notes.count(f"{key}:") >= 1, key
    assert notes.count("azureml:c1 is not applied") == 1
    assert len(job.notes) == len(set(job.notes)) == 5
    assert job.force_rerun  # applied: no step of this pipeline is reused


def test_node_environment_variables_are_strings(folder: Path):
    job_file = pipeline(folder, 'environment_variables: {A: 1, B: true, C: "${{inputs.data}}"}')
    step = only_step(load(job_file))
    assert step.environment_variables == {"A": "1", "B": "True", "C": str(folder / "data")}
    assert os.path.isabs(step.environment_variables["C"])


@pytest.mark.parametrize(
    ("instance_type", "given", "expected"),
    [
        ("Standard_NC6s_v3", None, 1),
        ("STANDARD_ND40rs_v2", None, 1),
        ("gpu-cluster-size", None, 1),
        ("Standard_D4s_v3", None, None),
        ("Standard_NC6s_v3", 3, 3),
    ],
)
def test_gpu_instance_types_default_to_one_process_a_node(folder, instance_type, given, expected):
    lines = f"resources:\n  instance_type: {instance_type}\n"
    if given is not None:
        lines += f"max_concurrency_per_instance: {given}\n"
    job = load(pipeline(folder, lines))
    assert only_step(job).max_concurrency_per_instance == expected
    noted = any("max_concurrency_per_instance defaults to 1" in n for n in job.notes)
    assert noted is (expected == 1 and given is None)


def test_a_node_input_given_as_null_takes_the_component_default(folder: Path):
    write(
        folder / "comp.yml",
        """
        type: parallel
        name: c
        version: 1
        inputs:
          data: {type: uri_folder}
          size: {type: string, default: "3"}
        input_data: ${{inputs.data}}
        mini_batch_size: ${{inputs.size}}
        task: {type: run_function, code: ./src, entry_script: score.py}
        """,
    )
    job_file = write(
        folder / "job.yml",
        """
        type: pipeline
        jobs:
          score:
            component: ./comp.yml
            inputs: {data: {type: uri_folder, path: ./data}, size: null}
        """,
    )
    step = only_step(load(job_file))
    assert step.mini_batch_size == MiniBatchSize(3, "count", "3")


def test_a_misspelt_entry_script_is_one_problem_with_its_spelling(folder: Path):
    job = write(
        folder / "job.yml",
        """
        type: pipeline
        jobs:
          score:
            type: parallel
            inputs: {data: {type: uri_folder, path: ./data}}
            input_data: ${{inputs.data}}
            task: {type: run_function, code: ./src, entry_scirpt: score.py}
        """,
    )
    problems = problems_of(job)
    assert places(problems) == ["jobs.score.task.entry_scirpt"]
    assert "`entry_script`" in problems[0].hint


def test_a_path_given_with_set_is_relative_to_the_current_directory(folder: Path, monkeypatch):
    job = pipeline(folder, "")
    (folder / "elsewhere" / "data2").mkdir(parents=True)
    (folder / "elsewhere" / "data2" / "b.txt").write_text("b\n")
    monkeypatch.chdir(folder / "elsewhere")
    step = only_step(load(job, ["jobs.score.inputs.data.path=./data2"]))
    assert step.input_data.path == str(folder / "elsewhere" / "data2")
    [problem] = problems_of(job, ["jobs.score.inputs.data.path=./nope"])
    assert "given with --set, it is relative to the current directory" in problem.hint


def test_a_hint_says_paths_are_relative_to_base_when_given_and_a_component_to_its_file(
    folder: Path,
):
    """With ``base=`` a job's relative paths start there, not at the YAML file, and the hints
    say so; a component file's own paths stay relative to that file, and its hint says so."""
    write(
        folder / "elsewhere" / "comp.yml",
        """
        type: parallel
        inputs: {data: {type: uri_folder}}
        input_data: ${{inputs.data}}
        task: {type: run_function, code: ./nosrc, entry_script: score.py}
        """,
    )
    job = write(
        folder / "elsewhere" / "job.yml",
        """
        type: pipeline
        jobs:
          score:
            inputs: {data: {type: uri_folder, path: ./nodata}}
            component: ./comp.yml
          other:
            component: ./nocomp.yml
        """,
    )
    base = folder / "elsewhere"
    by_file = {p.place: p.hint for p in problems_of(job)}
    assert by_file["jobs.score.inputs.data"].endswith("relative to the YAML file that gives it")
    with pytest.raises(JobSpecError) as info:
        load(job, base=str(base))
    message = str(info.value)
    assert message.startswith(f"{job}: 3 problem(s) in the job file:")
    by_place = {p.place: p for p in info.value.problems}
    here = f"relative to base=, here {base}, not to the YAML file"
    assert by_place["jobs.score.inputs.data"].hint == f"check the path; it is {here}"
    assert by_place["jobs.other.component"].hint == f"the path is {here}"
    # comp.yml's task.code is relative to comp.yml, base= or not
    assert by_place["comp.yml: task.code"].hint == (
        "check the path; it is relative to the YAML file that gives it"
    )
    assert str(base / "nosrc") in by_place["comp.yml: task.code"].message


def test_a_job_given_as_something_else_than_a_file_is_named_so_with_base_in_its_hints(
    folder: Path,
):
    job = pipeline(folder, "")
    job.write_text(job.read_text().replace("./data", "./nodata").replace("./src", "./nosrc"))
    with pytest.raises(JobSpecError) as info:
        load(job, base=str(folder), given_as="the job given to run_job")
    message = str(info.value)
    assert message.startswith("the job given to run_job: 2 problem(s):\n"), message
    assert str(job) not in message
    here = f"relative to base=, here {folder}, which is by default the current directory"
    assert [p.hint for p in info.value.problems] == [f"check the path; it is {here}"] * 2
