"""The resource monitor (``--resource_monitor_interval``): CPU, memory and disk over time.

Each worker slot samples its node and the process running the entry script every interval
seconds into ``logs/perf/<node>/<process>.csv``. Formatting a sample is pure; the thread only
samples and appends.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["PERF_HEADER", "ResourceMonitor", "format_sample", "sample"]

PERF_HEADER = (
    "Time,Node CPU Percent,Node Memory Percent,Node Memory Used MB,Disk Used Percent,"
    "Process Id,Process CPU Percent,Process RSS MB"
)


def sample(pid: int | None, disk_path: str, proc_cache: dict[int, Any]) -> dict[str, Any]:
    """One sample of the node and of process ``pid`` (when it is alive)."""
    import psutil

    mem = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(disk_path).percent
    except OSError:
        disk = float("nan")
    out: dict[str, Any] = {
        "time": time.time(),
        "node_cpu": psutil.cpu_percent(interval=None),
        "node_mem": mem.percent,
        "node_used_mb": (mem.total - mem.available) / 2**20,
        "disk": disk,
        "pid": pid,
        "proc_cpu": None,
        "proc_rss_mb": None,
    }
    if pid is not None:
        try:
            proc = proc_cache.get(pid) or proc_cache.setdefault(pid, psutil.Process(pid))
            out["proc_cpu"] = proc.cpu_percent(interval=None)
            out["proc_rss_mb"] = proc.memory_info().rss / 2**20
        except psutil.Error:
            pass
    return out


def format_sample(s: Mapping[str, Any]) -> str:
    """A CSV line of ``logs/perf`` for one sample."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s["time"]))

    def num(v: Any) -> str:
        return "" if v is None else f"{v:.1f}"

    return ",".join(
        [
            stamp,
            num(s["node_cpu"]),
            num(s["node_mem"]),
            num(s["node_used_mb"]),
            num(s["disk"]),
            "" if s["pid"] is None else str(s["pid"]),
            num(s["proc_cpu"]),
            num(s["proc_rss_mb"]),
        ]
    )


class ResourceMonitor:
    """Samples every ``interval`` seconds in a daemon thread until :meth:`stop`.

    Parameters
    ----------
    path : str
        The CSV file (created with its header).
    interval : float
        Seconds between samples (> 0). A sample is also taken at start.
    pid : callable
        Returns the pid of the process to sample, or None.
    """

    def __init__(self, path: str, interval: float, pid: Callable[[], int | None]):
        self.path = path
        self.interval = interval
        self.pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="daskprs-monitor", daemon=True)
        self._procs: dict[int, Any] = {}

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        if not os.path.exists(self.path):
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(PERF_HEADER + "\n")
        self._thread.start()

    def _loop(self) -> None:
        disk = os.path.dirname(self.path)
        while True:
            line = format_sample(sample(self.pid(), disk, self._procs))
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
