"""``daskprs.yaml`` ``computes:``: a scheduler address, or a Dask cluster class to start."""

from __future__ import annotations

from pathlib import Path

import pytest

from daskprs.errors import JobSpecError
from daskprs.job.load import load_job
from daskprs.job.model import ClusterSpec, ParallelStep
from daskprs.testing import write_job

SCRIPT = "def init():\n    pass\n\n\ndef run(mini_batch):\n    return mini_batch\n"


def job_file(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a\n")
    return write_job(
        tmp_path,
        SCRIPT,
        input_yaml="type: uri_folder\npath: ./data",
        extra="compute: azureml:gpu-cluster",
    )


def step_of(path: Path, config: dict) -> ParallelStep:
    job = load_job(path, (), config=config, env={}, run_dir=str(path.parent / "runs" / "r"))
    (step,) = job.steps
    assert isinstance(step, ParallelStep)
    return step


def problems(path: Path, config: dict) -> list[str]:
    with pytest.raises(JobSpecError) as info:
        step_of(path, config)
    return [f"{p.place}: {p.message} ({p.hint})" for p in info.value.problems]


def test_a_cluster_class_maps_the_compute(tmp_path):
    path = job_file(tmp_path)
    spec = {
        "class": "dask_jobqueue.SLURMCluster",
        "kwargs": {"cores": 8, "memory": "32GB", "queue": "gpu"},
        "adapt": {"minimum": 1, "maximum": 10},
    }
    step = step_of(path, {"computes": {"gpu-cluster": spec}})
    assert step.compute == ClusterSpec(
        name="gpu-cluster",
        cls="dask_jobqueue.SLURMCluster",
        kwargs={"cores": 8, "memory": "32GB", "queue": "gpu"},
        adapt={"minimum": 1, "maximum": 10},
    )
    # an address still maps as before; scale instead of adapt
    assert step_of(path, {"computes": {"gpu-cluster": "tcp://h:8786"}}).compute == "tcp://h:8786"
    scaled = step_of(path, {"computes": {"gpu-cluster": {"class": "a.B", "scale": 3}}}).compute
    assert isinstance(scaled, ClusterSpec) and (scaled.scale, scaled.kwargs) == (3, {})


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"clas": "distributed.LocalCluster"}, "unknown key 'clas' (did you mean `class`?"),
        ({"class": "LocalCluster"}, "`class` must be the dotted name of a Dask cluster class"),
        ({"class": 3}, "`class` must be the dotted name"),
        ({"class": "a.B", "kwargs": [1]}, "`kwargs` must be a mapping"),
        ({"class": "a.B", "adapt": 4}, "`adapt` must be a mapping"),
        ({"class": "a.B", "scale": -1}, "`scale` must be a number of workers, not -1"),
        ({"class": "a.B", "scale": 2, "adapt": {}}, "give `adapt` or `scale`, not both"),
    ],
)
def test_a_bad_cluster_spec_is_named_with_its_fix(tmp_path, spec, needle):
    (found,) = problems(job_file(tmp_path), {"computes": {"gpu-cluster": spec}})
    assert found.startswith("daskprs.yaml: computes: gpu-cluster: ")
    assert needle in found
