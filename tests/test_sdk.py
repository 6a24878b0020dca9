"""Jobs built with Azure's Python SDK v2 (``azure-ai-ml``) as its notebooks build them, and the
YAML it writes (README "A pipeline built with the Python SDK"). Nothing here calls Azure: the
SDK builds and writes pipelines offline. Tests that build with the SDK skip when it is not
installed; those of the YAML it writes run without it."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from daskprs.api import resume_job, run_job
from daskprs.cli import cli
from daskprs.errors import JobSpecError
from daskprs.job.load import load_job

# azure-ai-ml's schemas use marshmallow features marshmallow 4 drops: its warnings, not ours
pytestmark = pytest.mark.filterwarnings("ignore::Warning:marshmallow", "ignore::Warning:azure")

ROOT = Path(__file__).resolve().parent.parent
IRIS = ROOT / "examples" / "iris"
PREPARE = ROOT / "examples" / "many-models" / "prepare"
NO_ENV = {"HOME": "/nonexistent-home"}


def _sdk():
    return pytest.importorskip(
        "azure.ai.ml", reason="azure-ai-ml is not installed (pip install 'daskprs[azure]')"
    )


def _quiet(_: str) -> None:
    pass


# --------------------------------------------------------------------------- the YAML it writes


SDK_YAML = """
display_name: scored
type: pipeline
inputs:
  data: {type: uri_folder, path: "azureml:./data"}
  up: {type: uri_folder, path: "azureml:../up"}
  abs: {type: uri_folder, path: "azureml:%(abs)s"}
jobs:
  score:
    type: parallel
    inputs:
      data: {path: "${{parent.inputs.data}}"}
      up: {path: "${{parent.inputs.up}}"}
      abs: {path: "${{parent.inputs.abs}}"}
    input_data: ${{inputs.data}}
    component:
      name: score
      type: parallel
      is_deterministic: true
      inputs:
        data: {type: uri_folder}
        up: {type: uri_folder}
        abs: {type: uri_folder}
      input_data: ${{inputs.data}}
      task:
        type: run_function
        code: %(code)s
        entry_script: score.py
        environment:
          name: CliV2AnonymousEnvironment
          version: 02ae0f1d84a2
          image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04
          conda_file:
            name: prs-env
            dependencies: [python=3.11, pandas]
"""


@pytest.fixture
def sdk_folder(tmp_path: Path) -> Path:
    """``job/`` with a job file as the SDK writes it, its data beside and above it."""
    job = tmp_path / "job"
    for folder in (job / "data", job / "code", tmp_path / "up", tmp_path / "abs"):
        folder.mkdir(parents=True)
        (folder / "a.txt").write_text("a\n")
    (job / "code" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    text = SDK_YAML % {"abs": tmp_path / "abs", "code": job / "code"}
    (job / "pipeline.yml").write_text(textwrap.dedent(text).lstrip())
    return job


def test_sdk_local_paths_and_an_inline_conda_file_are_read(sdk_folder):
    config = {"environments": {"prs-env": sys.executable}}
    job = load_job(sdk_folder / "pipeline.yml", run_dir=str(sdk_folder / "r"), config=config)
    [step] = job.steps
    assert step.inputs["data"].path == str(sdk_folder / "data")  # azureml:./data
    assert step.inputs["up"].path == str(sdk_folder.parent / "up")  # azureml:../up
    assert step.inputs["abs"].path == str(sdk_folder.parent / "abs")  # azureml:/...
    assert step.python == sys.executable  # conda_file: {name: prs-env, ...}


@pytest.mark.parametrize("asset", ["azureml:iris-data:1", "azureml:iris-data@latest"])
def test_a_registered_asset_is_refused_once_without_a_knock_on_binding_error(sdk_folder, asset):
    job_file = sdk_folder / "pipeline.yml"
    job_file.write_text(job_file.read_text().replace('"azureml:./data"', f'"{asset}"'))
    with pytest.raises(JobSpecError) as info:
        load_job(job_file, run_dir=str(sdk_folder / "r"), env=NO_ENV)
    [problem] = info.value.problems  # not also "unknown binding ${{parent.inputs.data}}"
    assert problem.place == "inputs.data"
    assert f"{asset} names an Azure asset, which cannot be resolved locally" in problem.message


def test_a_node_file_is_a_pipeline_of_that_node_named_as_its_component(sdk_folder):
    """A parallel_run_function node, dumped alone: `type: parallel` with its component inline."""
    node = {
        "type": "parallel",
        "inputs": {"data": {"type": "uri_folder", "path": "azureml:./data"}},
        "input_data": "${{inputs.data}}",
        "component": {
            "name": "file_score",
            "type": "parallel",
            "inputs": {"data": {"type": "uri_folder"}},
            "input_data": "${{inputs.data}}",
            "task": {"type": "run_function", "code": "./code", "entry_script": "score.py"},
        },
    }
    (sdk_folder / "node.yml").write_text(json.dumps(node))
    job = load_job(sdk_folder / "node.yml", run_dir=str(sdk_folder / "r"), env=NO_ENV)
    assert [s.name for s in job.steps] == ["file_score"]
    # the SDK writes mini_batch_size 0 when none is given: the default size, as on Azure
    node["mini_batch_size"] = "0"
    (sdk_folder / "node.yml").write_text(json.dumps(node))
    job = load_job(sdk_folder / "node.yml", run_dir=str(sdk_folder / "r"), env=NO_ENV)
    assert job.steps[0].mini_batch_size is None
    assert "jobs.file_score.mini_batch_size: 0 means the default size" in " ".join(job.notes)


def test_run_job_takes_a_mapping_with_a_base_folder_and_resumes_it(sdk_folder, tmp_path, client):
    import yaml

    doc = yaml.safe_load((sdk_folder / "pipeline.yml").read_text())
    doc["jobs"]["score"]["mini_batch_size"] = "1"  # a plain mapping, edited in Python
    run = tmp_path / "run"
    result = run_job(doc, run_dir=run, base=sdk_folder, client=client, echo=_quiet)
    assert result.ok, result.failure
    record = json.loads((run / "run.json").read_text())
    assert record["job_file"] == str(run / "job.yml") and record["base"] == str(sdk_folder)
    assert resume_job(run, client=client, echo=_quiet).ok  # rebuilt from job.yml and base
    shutil.rmtree(sdk_folder / "data")  # a problem found as it is rebuilt: named as given
    with pytest.raises(JobSpecError) as info:
        resume_job(run, client=client, echo=_quiet)
    message = str(info.value)
    assert message.startswith(f"the job given to run_job (kept as {run / 'job.yml'}): 1 "), message
    [problem] = info.value.problems
    assert f"relative to base=, here {sdk_folder}, which is by default" in problem.hint


BAD_PATHS = {
    "type": "parallel",
    "name": "x",
    "inputs": {"data": {"type": "uri_folder", "path": "./nope"}},
    "outputs": {"out": {"type": "uri_folder"}},
    "input_data": "${{inputs.data}}",
    "mini_batch_size": "1",
    "task": {"type": "run_function", "code": "./src", "entry_script": "s.py"},
}


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("before", "run_dir"),
    [
        ([], None),  # ./daskprs-runs/x-<time>, and daskprs-runs itself, made by the call
        (["daskprs-runs/earlier"], None),  # daskprs-runs was there: it stays, as it was
        (["daskprs-runs"], None),  # (empty, but there before the call)
        (["given"], "given"),  # an empty run directory given: it stays
        ([], "new/deeper/run"),  # every folder of a run directory given
    ],
)
def test_a_mapping_with_wrong_paths_names_the_call_and_base_and_leaves_nothing_behind(
    tmp_path, monkeypatch, before, run_dir
):
    """The job.yml run_job writes for a mapping is no file of the user's: the error names the
    job as given, its hints say relative paths start at base= (the current directory), and
    nothing the refused call made is left (only what was there before it)."""
    monkeypatch.chdir(tmp_path)
    for folder in before:
        (tmp_path / folder).mkdir(parents=True)
    kept = _tree(tmp_path)
    with pytest.raises(JobSpecError) as info:
        run_job(BAD_PATHS, run_dir=run_dir, echo=_quiet)
    message = str(info.value)
    assert message.startswith("the job given to run_job: 2 problem(s):\n"), message
    assert "job.yml" not in message and "YAML file" not in message
    here = f"relative to base=, here {tmp_path}, which is by default the current directory"
    assert [p.hint for p in info.value.problems] == [f"check the path; it is {here}"] * 2
    assert _tree(tmp_path) == kept


def test_a_mapping_run_with_base_says_so_and_a_v1_mapping_reads_its_code_there(
    tmp_path, monkeypatch
):
    """base= is where a mapping's paths start: named in the hints, and a v1
    ParallelRunConfig's source_directory is found there (it was looked for in the run
    directory run_job wrote the mapping to, and named it)."""
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "built"
    base.mkdir()
    with pytest.raises(JobSpecError) as info:
        run_job(BAD_PATHS, base=base, run_dir=tmp_path / "run", echo=_quiet)
    here = f"relative to base=, here {base}, which is by default the current directory"
    assert [p.hint for p in info.value.problems] == [f"check the path; it is {here}"] * 2
    v1 = {"entry_script": "s.py", "source_directory": "./src", "mini_batch_size": "1"}
    with pytest.raises(JobSpecError) as info:  # no ./src in base yet
        run_job(v1, base=base, input_path=base, run_dir=tmp_path / "run", echo=_quiet)
    [problem] = info.value.problems
    assert problem.message == f"{base / 'src'} is not a folder", problem
    assert here in problem.hint
    assert _tree(tmp_path) == ["built"]


def _checksum_node(append: bool = True):
    """The SDK's ``checksum`` parallel node over ``./files`` (its code in ``./src``), its
    sums appended to its output when ``append``."""
    _sdk()
    from azure.ai.ml import Input, Output
    from azure.ai.ml.parallel import RunFunction, parallel_run_function

    checksum = parallel_run_function(
        name="checksum",
        inputs=dict(files=Input(type="uri_folder")),
        outputs=dict(sums=Output(type="uri_file")),
        input_data="${{inputs.files}}",
        task=RunFunction(
            code="./src",
            entry_script="checksum.py",
            **({"append_row_to": "${{outputs.sums}}"} if append else {}),
        ),
    )
    return checksum(files=Input(type="uri_folder", path="./files"))


def test_an_sdk_object_with_wrong_paths_is_named_by_its_class_and_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    node = _checksum_node(append=False)
    with pytest.raises(JobSpecError) as info:
        run_job(node, echo=_quiet)
    message = str(info.value)
    assert message.startswith(f"the {type(node).__name__} checksum given to run_job: 2 problem")
    here = f"relative to base=, here {tmp_path}, which is by default the current directory"
    assert [p.hint for p in info.value.problems] == [f"check the path; it is {here}"] * 2
    assert _tree(tmp_path) == []


# --------------------------------------------------------------------------- built with the SDK


def _iris_pipeline(environment: object = None):
    """The iris scoring pipeline, built as Azure's SDK notebooks build theirs."""
    _sdk()
    from azure.ai.ml import Input, Output, dsl
    from azure.ai.ml.constants import AssetTypes, InputOutputModes
    from azure.ai.ml.parallel import RunFunction, parallel_run_function

    batch_prediction = parallel_run_function(
        name="batch_prediction",
        inputs=dict(
            input_data=Input(type=AssetTypes.MLTABLE),
            score_model=Input(type=AssetTypes.URI_FOLDER),
        ),
        outputs=dict(job_output_file=Output(type=AssetTypes.URI_FILE)),
        input_data="${{inputs.input_data}}",
        instance_count=1,
        max_concurrency_per_instance=2,
        mini_batch_size="2kb",
        mini_batch_error_threshold=5,
        logging_level="DEBUG",
        retry_settings=dict(max_retries=2, timeout=60),
        environment_variables={"IRIS_LABEL_PREFIX": "pred:"},
        task=RunFunction(
            code="./script",
            entry_script="iris_prediction.py",
            environment=environment,
            program_arguments="--model ${{inputs.score_model}} --error_threshold 5 "
            "--allowed_failed_percent 30",
            append_row_to="${{outputs.job_output_file}}",
        ),
    )

    @dsl.pipeline(default_compute="cpu-cluster")
    def iris_batch_prediction(data, model):
        step = batch_prediction(input_data=data, score_model=model)
        step.inputs.input_data.mode = InputOutputModes.DIRECT
        return {"scores": step.outputs.job_output_file}

    return iris_batch_prediction(
        data=Input(type=AssetTypes.MLTABLE, path="./data/iris-mltable"),
        model=Input(type=AssetTypes.URI_FOLDER, path="./model", mode=InputOutputModes.DOWNLOAD),
    )


@pytest.mark.slow
def test_an_sdk_pipeline_and_its_dump_score_iris_as_the_cli_example(tmp_path, client, monkeypatch):
    cli_run = run_job(IRIS / "pipeline.yml", run_dir=tmp_path / "cli", client=client, echo=_quiet)
    expected = Path(cli_run.outputs["batch_prediction.job_output_file"]).read_bytes()
    monkeypatch.chdir(IRIS)  # paths in the SDK are relative to where the notebook runs
    pipeline = _iris_pipeline()
    result = run_job(pipeline, run_dir=tmp_path / "sdk", client=client, echo=_quiet)
    assert result.ok, result.failure
    assert Path(result.outputs["batch_prediction.job_output_file"]).read_bytes() == expected
    # its dump(), unchanged, is a job file: `azureml:./data/iris-mltable` is a local path
    folder = tmp_path / "iris"
    shutil.copytree(IRIS, folder)
    pipeline.dump(folder / "dumped.yml")
    assert "azureml:./data/iris-mltable" in (folder / "dumped.yml").read_text()
    validated = CliRunner().invoke(cli, ["validate", str(folder / "dumped.yml")])
    assert validated.exit_code == 0, validated.output
    assert "valid (batch_prediction (parallel))" in validated.output
    dumped = run_job(folder / "dumped.yml", run_dir=tmp_path / "d", client=client, echo=_quiet)
    assert Path(dumped.outputs["batch_prediction.job_output_file"]).read_bytes() == expected


CHECKSUM = """
import os
import zlib

def run(mini_batch):
    out = []
    for path in mini_batch:
        if os.path.basename(path).startswith("bad") and not os.path.exists(
            os.path.join(os.path.dirname(__file__), "FIXED")
        ):
            raise ValueError(f"cannot read {os.path.basename(path)}")
        data = open(path, "rb").read()
        out.append(f"{os.path.basename(path)} {zlib.crc32(data)}")
    return out
"""

PER_KEY = """
def run(mini_batch, mini_batch_context):
    keys = mini_batch_context.partition_key_value
    return [f"{keys['Store']} {keys['Brand']} {len(mini_batch)}"]
"""

PREPARE_COMPONENT = f"""
$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json
type: command
name: prepare_sales
inputs:
  stores: {{type: integer}}
outputs:
  sales: {{type: mltable}}
code: {PREPARE}
command: >-
  python prepare.py --stores ${{{{inputs.stores}}}} --brands 2 --weeks 10
  --out ${{{{outputs.sales}}}}
environment:
  image: mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu20.04
"""


def _notebook_pipeline(folder: Path):
    """As the SDK notebooks build theirs: a command component loaded from YAML prepares
    partitioned data for a parallel step with ``partition_keys`` (tabular), and a file-list
    parallel step reads a local folder."""
    _sdk()
    from azure.ai.ml import Input, Output, dsl, load_component
    from azure.ai.ml.constants import AssetTypes, InputOutputModes
    from azure.ai.ml.parallel import RunFunction, parallel_run_function

    prepare = load_component(source=str(folder / "src" / "prepare.yml"))
    per_key = parallel_run_function(
        name="per_key",
        inputs=dict(sales=Input(type=AssetTypes.MLTABLE, mode=InputOutputModes.DIRECT)),
        outputs=dict(counts=Output(type=AssetTypes.URI_FILE)),
        input_data="${{inputs.sales}}",
        partition_keys=["Store", "Brand"],
        max_concurrency_per_instance=2,
        task=RunFunction(
            code="./src", entry_script="per_key.py", append_row_to="${{outputs.counts}}"
        ),
    )
    checksum = parallel_run_function(
        name="checksum",
        inputs=dict(files=Input(type=AssetTypes.URI_FOLDER)),
        outputs=dict(sums=Output(type=AssetTypes.URI_FILE)),
        input_data="${{inputs.files}}",
        mini_batch_size="1",
        retry_settings=dict(max_retries=0, timeout=60),
        task=RunFunction(
            code="./src", entry_script="checksum.py", append_row_to="${{outputs.sums}}"
        ),
    )

    @dsl.pipeline()
    def sales_and_files(stores, files):
        prepared = prepare(stores=stores)
        per_key(sales=prepared.outputs.sales)
        checksum(files=files)

    return sales_and_files(stores=2, files=Input(type=AssetTypes.URI_FOLDER, path="./files"))


@pytest.mark.slow
def test_an_sdk_notebook_pipeline_runs_and_reruns_its_failed_mini_batch_elsewhere(
    tmp_path, client, monkeypatch
):
    folder = tmp_path / "notebook"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "prepare.yml").write_text(PREPARE_COMPONENT)
    (folder / "src" / "per_key.py").write_text(PER_KEY)
    (folder / "src" / "checksum.py").write_text(CHECKSUM)
    (folder / "files").mkdir()
    for name in ("a.txt", "bad.txt", "c.txt"):
        (folder / "files" / name).write_text(name)
    monkeypatch.chdir(folder)
    pipeline = _notebook_pipeline(folder)
    run = tmp_path / "run"
    result = run_job(pipeline, run_dir=run, client=client, echo=_quiet)
    assert result.ok, result.failure  # within its (default) thresholds
    steps = {s.step: s for s in result.steps}
    assert [f.id for f in steps["checksum"].failed] == [1]
    counts = Path(result.outputs["per_key.counts"]).read_text().splitlines()
    assert counts == [  # one mini-batch per key pair, 10 weeks each
        f"store00{s} brand0{b} 10" for s in (1, 2) for b in (1, 2)
    ]
    record = json.loads((run / "run.json").read_text())
    assert record["job_file"] == str(run / "job.yml") and record["base"] == str(folder)
    # fixed, then rerun from another folder: the job is rebuilt from the run directory
    (folder / "src" / "FIXED").write_text("")
    monkeypatch.chdir(tmp_path)
    again = resume_job(run, rerun_failed=True, client=client, echo=_quiet)
    assert again.ok, again.failure
    sums = Path(again.outputs["checksum.sums"]).read_text().split()[::2]
    assert sums == ["a.txt", "bad.txt", "c.txt"]
    assert resume_job(run, client=client, echo=_quiet).ok  # --resume: nothing left to run


@pytest.mark.slow
def test_a_parallel_node_alone_runs_named_as_its_component(tmp_path, client, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "checksum.py").write_text(CHECKSUM)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.txt").write_text("a")
    monkeypatch.chdir(tmp_path)
    node = _checksum_node()
    result = run_job(node, run_dir=tmp_path / "run", client=client, echo=_quiet)
    assert result.ok, result.failure
    assert Path(result.outputs["checksum.sums"]).read_text().startswith("a.txt ")
