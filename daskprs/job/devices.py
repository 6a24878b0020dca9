"""The GPUs a process sees, for the per-process ``CUDA_VISIBLE_DEVICES`` Azure sets.

On an Azure GPU node each entry-script process sees one device, round-robin over the node's
devices, and ``max_concurrency_per_instance`` defaults to the device count. daskprs does the
same per Dask worker: the devices come from ``DASKPRS_GPU_DEVICES`` (a list to use instead of
discovery: tests, or to pin), else ``CUDA_VISIBLE_DEVICES`` as the worker sees it, else
``nvidia-smi -L``; none of them means no GPU.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Mapping

__all__ = ["device_for", "visible_gpus"]


def _split(value: str) -> list[str]:
    devices = [d.strip() for d in value.split(",") if d.strip()]
    # CUDA stops at the first invalid index; "-1" or "NoDevFiles" hide every device
    return [] if not devices or devices[0] in ("-1", "NoDevFiles") else devices


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
        The environment to read (default: ``os.environ``).

    Returns
    -------
    list of str
        ``DASKPRS_GPU_DEVICES``, else ``CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi -L``
        lists (``["0", "1", ...]``); empty without GPUs.
    """
    env = os.environ if env is None else env
    for name in ("DASKPRS_GPU_DEVICES", "CUDA_VISIBLE_DEVICES"):
        if name in env:
            return _split(env[name])
    return list(_nvidia_smi())


def device_for(index: int, devices: list[str]) -> str | None:
    """The device of a node's ``index``-th entry-script process: round-robin over ``devices``."""
    return devices[index % len(devices)] if devices else None
