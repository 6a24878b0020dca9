"""Hostile job files, property-based: random, mutated and malicious YAML either loads or
raises daskprs' own :class:`JobSpecError` naming the place of each problem. Nothing in a file
is executed, no internal exception escapes, and nothing runs away (deep nesting, aliases
that expand or contain themselves, numbers of thousands of digits)."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daskprs.errors import JobSpecError, Problem
from daskprs.job.files import MAX_DEPTH, MAX_VALUES, yaml_shape_problem
from daskprs.job.load import load_job

NO_ENV = {"HOME": "/nonexistent-home"}

# Bounded and derandomized: the same examples in every CI run, in a few seconds.
BOUNDED = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

VALID = {
    "type": "pipeline",
    "settings": {"default_compute": "azureml:cpu", "continue_on_step_failure": False},
    "inputs": {"n": 3},
    "jobs": {
        "score": {
            "type": "parallel",
            "inputs": {"data": {"type": "uri_folder", "path": "./data", "mode": "ro_mount"}},
            "outputs": {"result": {"type": "uri_file"}},
            "input_data": "${{inputs.data}}",
            "mini_batch_size": "2",
            "max_concurrency_per_instance": 2,
            "error_threshold": -1,
            "logging_level": "INFO",
            "retry_settings": {"max_retries": 2, "timeout": 60},
            "environment_variables": {"A": "1"},
            "tags": {"owner": "me"},
            "resources": {"instance_count": 1},
            "task": {
                "type": "run_function",
                "code": "./src",
                "entry_script": "score.py",
                "program_arguments": "--model m --error_threshold 5",
                "append_row_to": "${{outputs.result}}",
            },
        }
    },
}

KNOWN_KEYS = [
    "type",
    "jobs",
    "inputs",
    "outputs",
    "settings",
    "task",
    "path",
    "mode",
    "code",
    "entry_script",
    "input_data",
    "mini_batch_size",
    "retry_settings",
    "timeout",
    "max_retries",
    "environment_variables",
    "program_arguments",
    "append_row_to",
    "partition_keys",
    "resources",
    "instance_count",
    "component",
    "$schema",
]

# Text a hostile file may hold: tags that would run code with an unsafe loader, aliases,
# runaway nesting, huge numbers, unicode that is not printable, bindings gone wrong.
NASTY = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!binary aGVsbG8=",
    "!!set {{a, b}}",
    "&x [*x]",
    "[" * 300 + "]" * 300,
    "9" * 5000,
    "-" + "9" * 400,
    "1e999",
    ".nan",
    "2001-12-14t21:59:43.10-05:00",
    "\u202e\u200b\U0001f600 ünïcødé",
    "${{inputs.",
    "${{parent.jobs.score.outputs.result}}",
    "../../../../etc/passwd",
    "~",
    "{{}}",
    "'",
    "\t",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**30, max_value=10**60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["parallel", "pipeline", "command", "uri_folder", "mltable", "10kb", "-1"]),
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=12), st.integers())
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=30,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "score.py").write_text("def run(mini_batch):\n    return mini_batch\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a\n")
    return tmp_path


def check(folder: Path, text: str) -> None:
    """The property: loads (and its resolved form can be written), or raises JobSpecError
    with problems that say where and what; nothing else, and nothing in it runs."""
    path = folder / "job.yml"
    path.write_text(text, encoding="utf-8")
    try:
        job = load_job(path, run_dir=str(folder / "runs" / "r"), env=NO_ENV)
    except JobSpecError as err:
        assert err.problems and all(isinstance(p, Problem) for p in err.problems)
        assert all(p.message for p in err.problems)
        assert str(err).startswith(str(path))
    else:
        json.dumps(asdict(job), default=str)  # as the run writes job.json
    assert not (folder / "pwned").exists()


def test_the_valid_document_loads(folder):
    job = load_job_text(folder, yaml.safe_dump(VALID))
    assert [s.name for s in job.steps] == ["score"]


def load_job_text(folder: Path, text: str):
    path = folder / "job.yml"
    path.write_text(text, encoding="utf-8")
    return load_job(path, run_dir=str(folder / "runs" / "r"), env=NO_ENV)


@BOUNDED
@given(doc=documents)
def test_random_documents_load_or_fail_with_their_places(folder, doc):
    check(folder, yaml.safe_dump(doc, allow_unicode=True))


def _paths(doc, prefix=()):
    """Every (path, container) place of a nested document."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


@st.composite
def mutated(draw):
    """The valid document with a few values replaced, keys dropped or renamed."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        places = _paths(doc)
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent = doc
        for k in place[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "drop", "rename"]))
        if action == "replace":
            parent[place[-1]] = draw(documents)
        elif action == "drop":
            del parent[place[-1]]
        else:
            parent[draw(keys)] = parent.pop(place[-1])
    return doc


@BOUNDED
@given(doc=mutated())
def test_mutated_jobs_load_or_fail_with_their_places(folder, doc):
    check(folder, yaml.safe_dump(doc, allow_unicode=True))


@BOUNDED
@given(
    position=st.integers(0, 10**6),
    snippet=st.sampled_from(NASTY),
    replace_value=st.booleans(),
)
def test_nasty_text_spliced_into_a_job_file(folder, position, snippet, replace_value):
    text = yaml.safe_dump(VALID, sort_keys=False)
    snippet = snippet.format(marker=folder / "pwned")
    lines = text.splitlines()
    i = position % len(lines)
    if replace_value and ": " in lines[i]:
        head = lines[i].split(": ", 1)[0]
        lines[i] = f"{head}: {snippet}"
    else:
        column = position % (len(lines[i]) + 1)
        lines[i] = lines[i][:column] + snippet + lines[i][column:]
    check(folder, "\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("!!python/object/apply:os.system ['touch {marker}']\n", "not valid YAML"),
        (
            "type: pipeline\njobs: !!python/object/new:os.system ['touch {marker}']\n",
            "could not determine a constructor",
        ),
        ("type: pipeline\njobs:\n  s: " + "[" * 5000 + "]" * 5000 + "\n", "nests too deeply"),
        ("type: pipeline\njobs:\n  s: " + "[" * 100 + "]" * 100 + "\n", f"more than {MAX_DEPTH}"),
        ("type: pipeline\njobs: &a\n  s: *a\n", "an alias refers to a node that contains it"),
        ("type: pipeline\nmini_batch_size: " + "9" * 5000 + "\n", "more than 4300 digits"),
        (
            "type: pipeline\na: &a [x,x,x,x,x,x,x,x,x,x]\n"
            + "".join(
                f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
                for p, c in zip("abcdefgh", "bcdefghi", strict=True)
            ),
            f"expand it to more than {MAX_VALUES} values",
        ),
    ],
)
def test_malicious_files_are_named_problems(folder, text, needle):
    with pytest.raises(JobSpecError) as info:
        load_job_text(folder, text.format(marker=folder / "pwned"))
    assert needle in str(info.value)
    assert "Traceback" not in str(info.value)
    assert not (folder / "pwned").exists()


def test_shape_check_counts_shared_values_once_per_use():
    shared = ["x"] * 10
    assert yaml_shape_problem({"a": [shared] * 10}) is None
    assert "expand" in yaml_shape_problem({"a": [[shared] * 10] * 10}, max_values=500)
    deep: list = []
    for _ in range(5):
        deep = [deep]
    assert yaml_shape_problem(deep, limit=6) is None
    assert "more than 5 levels" in yaml_shape_problem(deep, limit=5)


@BOUNDED
@given(value=st.one_of(st.text(max_size=30), st.sampled_from(NASTY)))
def test_set_values_never_crash_the_loader(folder, value):
    path = folder / "job.yml"
    path.write_text(yaml.safe_dump(VALID), encoding="utf-8")
    for item in (
        f"jobs.score.mini_batch_size={value}",
        f"jobs.score.retry_settings.timeout={value}",
        f"inputs.n={value}",
        f"{value}={value}",
    ):
        try:
            load_job(path, [item], run_dir=str(folder / "runs" / "r"), env=NO_ENV)
        except JobSpecError as err:
            assert err.problems
