"""The GPUs a process sees, for the per-process ``CUDA_VISIBLE_DEVICES`` Azure sets.

On an Azure GPU node each entry-script process sees one device, round-robin over the node's
devices, and ``max_concurrency_per_instance`` defaults to the device count. daskprs does the
same per Dask worker: the devices come from ``DASKPRS_GPU_DEVICES`` (a list to use instead of
discovery: tests, or to pin), else ``CUDA_VISIBLE_DEVICES`` as the worker sees it, else
``nvidia-smi -L``; none of them means no GPU. Both lists are read as
:func:`daskprs.settings.parse_gpu_devices` reads them.

Unlike the other ``DASKPRS_*`` variables, which the driver reads once
(:class:`daskprs.settings.EnvSettings`) and passes down, these are read here from the
environment of the process that asks, a worker: they describe the worker's own host.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from daskprs.job.model import ParallelStep
from daskprs.settings import parse_gpu_devices

__all__ = ["device_for", "processes_per_instance", "visible_gpus"]


@functools.cache
def _nvidia_smi() -> tuple[str, ...]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    lines = [line for line in out.stdout.splitlines() if line.startswith("GPU ")]
    return tuple(str(i) for i in range(len(lines)))


def visible_gpus(env: Mapping[str, str] | None = None) -> list[str]:
    """The devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries (indices or UUIDs).

    Parameters
    ----------
    env : mapping, optional
        The environment to read (default: ``os.environ``, the worker's own).

    Returns
    -------
    list of str
        ``DASKPRS_GPU_DEVICES``, else ``CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi -L``
        lists (``["0", "1", ...]``); empty without GPUs.
    """
    env = os.environ if env is None else env
    for name in ("DASKPRS_GPU_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if name in env:
            return list(parse_gpu_devices(env[name]))
    return list(_nvidia_smi())


# ``CUDA_VISIBLE_DEVICES`` of a process that may use no GPU
NO_GPU = "-1"


def device_for(index: int, devices: list[str], env: Mapping[str, str] | None = None) -> str | None:
    """The device of a node's ``index``-th entry-script process: round-robin over ``devices``.

    With no device: :data:`NO_GPU` when ``DASKPRS_GPU_DEVICES`` (in ``env``, default
    ``os.environ``: the worker's) says none, so that the process does not see the GPUs of a
    ``CUDA_VISIBLE_DEVICES`` it would inherit; else None (the process inherits the
    variable as it is)."""
    if devices:
        return devices[index % len(devices)]
    env = os.environ if env is None else env
    return NO_GPU if "DASKPRS_GPU_DEVICES" in env else None


def processes_per_instance(step: ParallelStep, gpus: Sequence[str] | None = None) -> int:
    """Entry-script processes per node: ``max_concurrency_per_instance``, or when it is not
    given the GPUs this machine sees (``gpus``, default :func:`visible_gpus`; as on an Azure
    GPU node), else its cores. Asked by the driver, where it sizes the embedded cluster."""
    if step.max_concurrency_per_instance:
        return step.max_concurrency_per_instance
    return len(visible_gpus() if gpus is None else gpus) or os.cpu_count() or 1
