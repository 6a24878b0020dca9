"""GPU discovery and the per-process device (a fake device list; no GPU needed)."""

from __future__ import annotations

import pytest

from daskprs.execute import devices
from daskprs.execute.devices import device_for, processes_per_instance, visible_gpus
from daskprs.job.model import DataInput, ParallelStep


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CUDA_VISIBLE_DEVICES": "0,1,2"}, ["0", "1", "2"]),
        ({"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}, ["GPU-aa", "GPU-bb"]),
        ({"CUDA_VISIBLE_DEVICES": ""}, []),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, []),
        # the override wins over what CUDA_VISIBLE_DEVICES says
        ({"DASKPRS_GPU_DEVICES": "4,5", "CUDA_VISIBLE_DEVICES": "0"}, ["4", "5"]),
    ],
)
def test_visible_gpus_reads_the_environment(env, expected):
    assert visible_gpus(env) == expected


def test_without_variables_nvidia_smi_decides(monkeypatch):
    monkeypatch.setattr(devices, "_nvidia_smi", lambda: ("0", "1"))
    assert visible_gpus({}) == ["0", "1"]
    monkeypatch.setattr(devices, "_nvidia_smi", lambda: ())
    assert visible_gpus({}) == []


def test_devices_go_round_robin_over_a_nodes_processes():
    assert [device_for(i, ["3", "5"]) for i in range(5)] == ["3", "5", "3", "5", "3"]
    assert device_for(0, [], {}) is None  # (the process inherits what there is)
    # DASKPRS_GPU_DEVICES says none: the process sees none, whatever it would inherit
    for none in ("-1", ""):
        env = {"DASKPRS_GPU_DEVICES": none, "CUDA_VISIBLE_DEVICES": "3"}
        assert device_for(0, visible_gpus(env), env) == "-1"


def step(concurrency: int | None) -> ParallelStep:
    data = DataInput(name="data", type="uri_folder", path="/d")
    return ParallelStep(
        name="s",
        code_dir="/c",
        entry_script="e.py",
        input_data=data,
        max_concurrency_per_instance=concurrency,
    )


def test_concurrency_defaults_to_the_device_count_on_a_gpu_machine(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    assert processes_per_instance(step(None)) == 3
    assert processes_per_instance(step(5)) == 5  # as written wins
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr("os.cpu_count", lambda: 7)
    assert processes_per_instance(step(None)) == 7
