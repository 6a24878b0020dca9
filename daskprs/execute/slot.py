"""A worker slot: one child process that runs the entry script, and the deadlines on it.

Dask cannot stop a running task; killing the process that runs it can (DESIGN decision 3).
A slot lives in a Dask worker process and owns one child (``python -m daskprs.execute.child``). It
sends a task, waits for the child's answer under the deadline of the phase the child is in
(``task_overhead_timeout`` while loading data, ``timeout`` while ``run()`` runs) and kills
the child with SIGKILL when a deadline passes or the child's memory goes over its limit. The
next task starts a new child, which runs ``init()`` again.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from daskprs.execute.child import ChildConfig
from daskprs.execute.wire import ChannelClosed, read_message, write_message

__all__ = ["Deadlines", "Slot"]

# How often a waiting slot wakes to check the child's memory. A deadline is never overslept:
# the wait is cut to end at it.
_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Deadlines:
    """Per-phase time limits of one try, in seconds (None: no limit)."""

    load: float | None = 30.0
    run: float | None = 60.0


def _package_root() -> str:
    import daskprs

    return os.path.dirname(os.path.dirname(os.path.abspath(daskprs.__file__)))


class Slot:
    """One child process running an entry script, replaced when it dies or is killed.

    Parameters
    ----------
    config : ChildConfig
        Passed to every child this slot starts.
    memory_limit : int, optional
        Resident memory in bytes above which the child is killed (None: no limit).
    """

    def __init__(self, config: ChildConfig, memory_limit: int | None = None):
        self.config = config
        self.memory_limit = memory_limit
        self.proc: subprocess.Popen | None = None
        self._to_child = -1
        self._from_child = -1
        self._phases = -1
        self._phase_buffer = b""
        self._psutil_proc: Any = None
        self.started = 0
        self.monitor: Any = None

    # -- life cycle --------------------------------------------------------------------------
    def _log_file(self, kind: str) -> Any:
        cfg = self.config
        if not cfg.logs_dir:
            return subprocess.DEVNULL
        folder = os.path.join(cfg.logs_dir, "user", kind, cfg.node)
        os.makedirs(folder, exist_ok=True)
        return open(os.path.join(folder, f"{cfg.process}.{kind}.txt"), "ab")

    def start(self) -> None:
        """Start a new child process and send it its configuration."""
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        ph_r, ph_w = os.pipe()
        os.set_blocking(ph_r, False)
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        out, err = self._log_file("stdout"), self._log_file("stderr")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daskprs.execute.child", str(p2c_r), str(c2p_w), str(ph_w)],
                pass_fds=(p2c_r, c2p_w, ph_w),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                close_fds=True,
            )
        finally:
            os.close(p2c_r)
            os.close(c2p_w)
            os.close(ph_w)
            for f in (out, err):
                if f is not subprocess.DEVNULL:
                    f.close()
        self._to_child, self._from_child, self._phases = p2c_w, c2p_r, ph_r
        self._phase_buffer = b""
        self._psutil_proc = None
        self.started += 1
        write_message(self._to_child, ("setup", self.config))

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _close_pipes(self) -> None:
        for fd in (self._to_child, self._from_child, self._phases):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._to_child = self._from_child = self._phases = -1

    def kill(self) -> None:
        """Kill the child at once (SIGKILL) and reap it."""
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
        self._close_pipes()
        self.proc = None

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the child to run ``shutdown()`` and exit; kill it if it takes too long."""
        if self.alive:
            try:
                write_message(self._to_child, ("stop", None))
                self.proc.wait(timeout)  # type: ignore[union-attr]
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    # -- one try -----------------------------------------------------------------------------
    def _rss(self) -> int:
        import psutil

        try:
            if self._psutil_proc is None:
                self._psutil_proc = psutil.Process(self.proc.pid)  # type: ignore[union-attr]
            return self._psutil_proc.memory_info().rss
        except psutil.Error:
            return 0

    def _death_message(self) -> str:
        assert self.proc is not None
        code = self.proc.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the process running the entry script was killed by {name}"
        return f"the process running the entry script exited with code {code} inside run()"

    def run(self, task: dict[str, Any], deadlines: Deadlines) -> dict[str, Any]:
        """Run one task in the child and return its record (a dict of TryRecord fields).

        Never raises for anything the entry script does: a timeout, a crash or a memory kill
        come back as records, and the child is replaced on the next call.
        """
        if not self.alive:
            self.kill()
            self.start()
        batch = task["batch"]
        base = {"mb": batch.index, "try_no": task["try_no"], "total": batch.n_items}
        try:
            write_message(self._to_child, ("task", task))
        except OSError:
            return self._died(base, "")
        phase, deadline = "init", None
        while True:
            wait = _POLL_SECONDS
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            ready, _, _ = select.select([self._from_child], [], [], wait)
            for phase, started in self._read_phases():
                limit = {"load": deadlines.load, "run": deadlines.run}.get(phase)
                deadline = None if limit is None else started + limit
            if ready:
                try:
                    kind, payload = read_message(self._from_child)
                except (ChannelClosed, OSError):
                    return self._died(base, phase)
                if kind == "done":
                    if payload["status"] == "INIT_FAILED":
                        self.kill()
                    return payload
                continue
            if deadline is not None and time.monotonic() >= deadline:
                self.kill()
                if phase == "load":
                    status, what = "LOAD_TIMEOUT", "reading the mini-batch's data"
                    limit = deadlines.load
                else:
                    status, what = "RUN_TIMEOUT", "run()"
                    limit = deadlines.run
                return {
                    **base,
                    "status": status,
                    "failed": base["total"] or 0,
                    "error": f"{what} took longer than the timeout of {limit:g} s; its process "
                    "was killed and replaced",
                }
            if self.memory_limit and self._rss() > self.memory_limit:
                self.kill()
                return {
                    **base,
                    "status": "PROCESS_DIED",
                    "failed": base["total"] or 0,
                    "error": f"the process running the entry script used more than its memory "
                    f"limit of {self.memory_limit / 2**20:.0f} MiB and was killed",
                }

    def _read_phases(self) -> list[tuple[str, float]]:
        """The phases the child entered since the last call, with their start times."""
        try:
            while chunk := os.read(self._phases, 4096):
                self._phase_buffer += chunk
        except BlockingIOError:
            pass
        *lines, self._phase_buffer = self._phase_buffer.split(b"\n")
        out = []
        for line in lines:
            name, _, started = line.decode().partition(" ")
            out.append((name, float(started)))
        return out

    def _died(self, base: dict[str, Any], phase: str) -> dict[str, Any]:
        message = self._death_message() if self.proc is not None else "the process is gone"
        self.kill()
        if phase == "init":
            message = message.replace("inside run()", "while loading the script or in init()")
            return {**base, "status": "INIT_FAILED", "error": message}
        if phase == "load":
            message = message.replace("inside run()", "while reading the mini-batch")
        return {**base, "status": "PROCESS_DIED", "failed": base["total"] or 0, "error": message}
