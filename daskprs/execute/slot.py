"""A worker slot: one child process that runs the entry script, and the deadlines on it.

Dask cannot stop a running task; killing the process that runs it can
(docs/design.md#one-child-process-per-slot).
A slot lives in a Dask worker process and owns one child (``python -m daskprs.execute.child``).
It sends a task, waits for the child's answer under the deadline of the phase the child is in
(:mod:`daskprs.execute.deadlines`: ``task_overhead_timeout`` while loading data, ``timeout``
while ``run()`` runs, both together for loading the script and ``init()``) and kills
the child with SIGKILL when a deadline passes or the child's memory goes over its limit. The
next task starts a new child, which runs ``init()`` again.

The child runs in a session of its own, so a kill takes the processes the entry script
started with it (a subprocess left running by ``run()`` ends with the child that started it,
at a kill or at the end of the step). Those that left its session (``setsid``, a daemon's
double fork) are found by the mark each child's environment carries to everything it starts
(:data:`~daskprs.execute.child.PROCESS_MARK`, a new token per child) and killed once the
child is gone (:func:`~daskprs.execute.child.end_marked`). Its stdout and stderr reach their
log files through a pipe that the slot drains, keeping at most ``ChildConfig.log_limit`` bytes
per file and a one-line note where it cut. ``shutdown()`` at the end has its own deadline
(``Deadlines.shutdown``); a process that overruns it is killed, and its error log says so.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from daskprs.execute.child import PROCESS_MARK, ChildConfig, end_marked
from daskprs.execute.deadlines import DeadlineClock, Deadlines, Phase, phase_line_seq
from daskprs.execute.wire import (
    ChannelClosed,
    Done,
    RunTask,
    Setup,
    StopChild,
    encode_message,
    read_message,
    write_bytes,
    write_message,
)
from daskprs.results.outcome import Status, TryRecord

__all__ = ["Deadlines", "Slot", "not_started"]

log = logging.getLogger(__name__)

# How often a waiting slot wakes to check the child's memory. A deadline is never overslept:
# the wait is cut to end at it.
_POLL_SECONDS = 0.25


# The largest try handed over while another runs: a pipe holds 64 KiB, and a write that
# waits for room would keep this side from the running try's deadline.
_AHEAD_BYTES = 16 * 1024
# The tries handed over at most at once: the one running and those waiting behind it.
_AHEAD = 4


@dataclass
class _Queued:
    """A try given to :meth:`Slot.run_many`: handed to the child yet (``sent``), and when."""

    task: RunTask
    sent: bool = False
    at: float = 0.0


def not_started(mb: int, try_no: int, why: str = "") -> TryRecord:
    """The record of a try its worker closed before starting (it runs elsewhere); ``why``
    is added to the error."""
    error = "its worker closed before it started" + why
    return TryRecord(mb=mb, try_no=try_no, status=Status.NOT_STARTED, error=error)


# Seconds to wait for a log pipe's last bytes after its child was reaped (a grandchild that
# left the child's session may hold the pipe open: its output is then no longer copied).
_DRAIN_SECONDS = 5.0

# Where a process that died was, by the phase it was in.
_DIED_IN = {
    Phase.INIT: "while loading the script or in init()",
    Phase.LOAD: "while reading the mini-batch",
    Phase.RUN: "inside run()",
}


# Variables a Dask nanny sets for its worker (``distributed.nanny.pre-spawn-environ``) that an
# entry-script process must not inherit. MALLOC_TRIM_THRESHOLD_=65536 makes glibc hand freed
# memory back at once: a worker's choice, paid by the entry script in page faults (issue 23
# measured about 86 more an image, 8-16 % more CPU, for an image model's script). The step's
# environment_variables may set it (below).
_NANNY_ONLY = ("MALLOC_TRIM_THRESHOLD_",)

# Read by glibc as a process starts, so a step's value is put in the child's environment from
# its start (the child applies the step's other variables itself, too late for these).
_AT_START = ("MALLOC_", "GLIBC_TUNABLES")


def child_environment(worker_env: Mapping[str, str], step_env: Mapping[str, str]) -> dict[str, str]:
    """The environment an entry-script process starts with: the worker's, without what a
    Dask nanny set for the worker alone (:data:`_NANNY_ONLY`), with the step's
    ``environment_variables`` that only work from a process's start (glibc's ``MALLOC_*``,
    ``GLIBC_TUNABLES``)."""
    env = {k: v for k, v in worker_env.items() if k not in _NANNY_ONLY}
    env.update({k: str(v) for k, v in step_env.items() if k.startswith(_AT_START)})
    return env


def wait_exit(proc: subprocess.Popen, timeout: float | None) -> int:
    """``proc.wait(timeout)``, woken by the exit itself where Linux gives a process file
    descriptor: ``Popen.wait`` with a timeout polls, up to 50 ms late at the end of every
    step.

    Raises
    ------
    subprocess.TimeoutExpired
        The process is still running after ``timeout`` seconds.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # not Linux 5.3+, or already reaped
        return proc.wait(timeout)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout or 0.0)
    return proc.wait()


def package_root() -> str:
    import daskprs

    return os.path.dirname(os.path.dirname(os.path.abspath(daskprs.__file__)))


def package_shim() -> str:
    """A folder holding only ``daskprs`` and ``azureml_user`` (links to this installation's),
    for the ``PYTHONPATH`` of an entry-script process in another interpreter: the folder
    this installation lives in may be a whole site-packages whose dask, cloudpickle or
    scikit-learn would shadow the other environment's."""
    import hashlib
    import tempfile

    root = package_root()
    digest = hashlib.sha256(root.encode()).hexdigest()[:12]
    shim = os.path.join(tempfile.gettempdir(), f"daskprs-shim-{os.getuid()}-{digest}")
    for name in ("daskprs", "azureml_user"):
        link = os.path.join(shim, name)
        if not os.path.lexists(link):
            os.makedirs(shim, exist_ok=True)
            tmp = f"{link}.{os.getpid()}"
            os.symlink(os.path.join(root, name), tmp)
            os.replace(tmp, link)
    return shim


class _CappedLog(threading.Thread):
    """Copies one stream of a child (a pipe) to its log file, up to ``limit`` bytes in the
    file; beyond that it writes one note and drains the rest, so the child never blocks."""

    def __init__(self, fd: int, path: str, kind: str, limit: int | None):
        super().__init__(name=f"daskprs-{kind}-{os.path.basename(path)}", daemon=True)
        self.fd, self.path, self.kind, self.limit = fd, path, kind, limit
        # who closes ``fd``: the thread once it runs, or :meth:`abandon` before that
        self._owner = threading.Lock()
        self._running = self._abandoned = False

    def abandon(self) -> None:
        """After a ``start()`` that raised (a Ctrl-C in it): close the pipe unless the
        thread runs already (it then reads to the end of the pipe and closes it); a thread
        that runs later does nothing."""
        with self._owner:
            if not self._running and not self._abandoned:
                self._abandoned = True
                os.close(self.fd)

    def run(self) -> None:
        with self._owner:
            if self._abandoned:
                return
            self._running = True
        try:
            with open(self.path, "ab", buffering=0) as f:
                room = None if self.limit is None else self.limit - f.tell()
                cut = False
                while chunk := os.read(self.fd, 1 << 16):
                    if room is None:
                        f.write(chunk)
                        continue
                    keep = chunk[: max(0, room)]
                    if keep:
                        f.write(keep)
                        room -= len(keep)
                    if len(keep) < len(chunk) and not cut:
                        cut = True
                        f.write(
                            f"\n[daskprs: this log file reached its limit of {self.limit} "
                            f"bytes; the rest of this process's {self.kind} is not kept "
                            "(DASKPRS_USER_LOG_LIMIT changes the limit)]\n".encode()
                        )
        except OSError as err:  # a full or vanished disk: keep draining, or the child blocks
            log.warning("cannot write %s: %s", self.path, err)
            try:
                while os.read(self.fd, 1 << 16):
                    pass
            except OSError:
                pass
        finally:
            os.close(self.fd)


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
        self._psutil_proc: Any = None
        # the mark of the current child's processes (see `kill`)
        self._token = ""
        self._logs: list[_CappedLog] = []
        self.started = 0
        self.monitor: Any = None
        # the deadlines of the last try, whose ``shutdown`` bounds the end of the child
        self.deadlines = Deadlines()
        # tries handed over so far (their phase lines carry the number), the phase lines of
        # tries not yet waited for, a line not yet whole, and when the last try ended
        self._seq = 0
        self._lines: dict[int, list[bytes]] = {}
        self._partial = b""
        self._ended = 0.0
        # when the try :meth:`run_many` last gave a record of began to run (wall time)
        self.began = 0.0
        # set when its worker closes and hands its tries back: no try is started any more
        self.closing = False

    # -- life cycle --------------------------------------------------------------------------
    def _log_pipe(self, kind: str, child_ends: list[int]) -> int:
        """The write end of a pipe to this slot's ``kind`` log (``-1``: no logs), added to
        ``child_ends`` (closed by the caller) as soon as it is made."""
        cfg = self.config
        if cfg.logs is None:
            return -1
        path = cfg.logs.user_output(kind, cfg.node, cfg.process)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        read_end, write_end = os.pipe()
        child_ends.append(write_end)
        reader = _CappedLog(read_end, path, kind, cfg.log_limit)
        try:
            reader.start()
        except BaseException:
            reader.abandon()
            raise
        self._logs.append(reader)
        return write_end

    def start(self) -> None:
        """Start a new child process and send it its configuration.

        Whatever stops it part-way (a Ctrl-C in a notebook, a refused fork) leaves nothing
        open: the child's ends of the pipes are closed here, the slot's own by :meth:`kill`
        (a log's pipe left open kept its copying thread, and the log file, for the rest of
        the process)."""
        p2c_r, p2c_w = os.pipe()
        child_ends = [p2c_r]
        self._to_child = p2c_w
        c2p_r, c2p_w = os.pipe()
        child_ends.append(c2p_w)
        self._from_child = c2p_r
        ph_r, ph_w = os.pipe()
        child_ends.append(ph_w)
        self._phases = ph_r
        try:
            self._start(child_ends, p2c_r, c2p_w, ph_w)
        finally:
            for fd in child_ends:
                os.close(fd)
        self._lines, self._partial = {}, b""  # the last child's phase lines are no one's
        self._psutil_proc = None
        self.started += 1
        write_message(self._to_child, Setup(self.config))

    def _start(self, child_ends: list[int], p2c_r: int, c2p_w: int, ph_w: int) -> None:
        os.set_blocking(self._phases, False)
        env = child_environment(os.environ, self.config.env)
        if self.config.python:
            # another interpreter sees daskprs alone, not the worker's other packages
            env["PYTHONPATH"] = package_shim()
        else:
            root = package_root()
            env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        # in bytes, for EntryScript().logger's file (no dask in the child to parse "64MiB")
        env["DASKPRS_USER_LOG_LIMIT"] = str(self.config.log_limit or 0)
        self._token = uuid.uuid4().hex
        env[PROCESS_MARK] = self._token
        out, err = self._log_pipe("stdout", child_ends), self._log_pipe("stderr", child_ends)
        python = self.config.python or sys.executable
        self.proc = subprocess.Popen(
            [python, "-m", "daskprs.execute.child", str(p2c_r), str(c2p_w), str(ph_w)],
            pass_fds=(p2c_r, c2p_w, ph_w),
            stdin=subprocess.DEVNULL,
            stdout=out if out >= 0 else subprocess.DEVNULL,
            stderr=err if err >= 0 else subprocess.DEVNULL,
            env=env,
            close_fds=True,
            # its own session and process group: a kill takes what the script started
            start_new_session=True,
        )

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

    def _kill_group(self) -> None:
        """SIGKILL the child's process group: the child and whatever it started that is
        still in its session."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """Kill the child and its process group at once (SIGKILL), reap it, kill what it
        started outside its group, and wait for the last bytes of its logs."""
        if self.proc is not None:
            self._kill_group()
            self.proc.wait()
        if self._token:
            # the processes that left the child's session: only the child's, by its mark
            end_marked(self._token)
            self._token = ""
        self._close_pipes()
        self.proc = None
        deadline = time.monotonic() + _DRAIN_SECONDS
        for reader in self._logs:
            reader.join(max(0.0, deadline - time.monotonic()))
        self._logs = [r for r in self._logs if r.is_alive()]

    def kill_child(self) -> None:
        """Kill the child now (an abort), leaving the reaping to the next call."""
        if self.proc is not None and self.proc.returncode is None:
            self._kill_group()

    def watch_resources(self, path: str, interval: float) -> None:
        """Sample the child's CPU and memory to ``path`` every ``interval`` seconds."""
        from daskprs.observe.monitor import ResourceMonitor

        self.monitor = ResourceMonitor(
            path, interval, lambda: self.proc.pid if self.proc is not None else None
        )
        self.monitor.start()

    def close(self, kill: bool = False) -> None:
        """The end of the slot: stop its monitor, then stop (``shutdown()``) or kill the
        child."""
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None
        if kill:
            self.kill()
        else:
            self.stop()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the child to run ``shutdown()`` and exit; kill it if it takes longer than
        ``timeout`` seconds (default: the ``shutdown`` deadline of the last try), noting that
        in the process's error log."""
        limit = self.deadlines.shutdown if timeout is None else timeout
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                write_message(self._to_child, StopChild())
                wait_exit(proc, limit)
            except subprocess.TimeoutExpired:
                message = (
                    f"shutdown() did not finish within {limit:g} s; its process was killed "
                    "(DASKPRS_SHUTDOWN_TIMEOUT sets this limit in seconds)"
                )
                log.warning("%s %s: %s", self.config.node, self.config.process, message)
                self._log_error(message)
            except OSError:
                pass
        self.kill()

    def _log_error(self, message: str) -> None:
        """Append a line to the process's error log, as the child does."""
        cfg = self.config
        if cfg.logs is None:
            return
        path = cfg.logs.user_error(cfg.node, cfg.process)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n\n")
        except OSError as err:
            log.warning("cannot write %s: %s", path, err)

    # -- one try -----------------------------------------------------------------------------
    def _rss(self) -> int:
        import psutil

        if self.proc is None:  # no child: nothing to measure
            return 0
        try:
            if self._psutil_proc is None:
                self._psutil_proc = psutil.Process(self.proc.pid)
            return self._psutil_proc.memory_info().rss
        except psutil.Error:
            return 0

    def _death_message(self, phase: Phase) -> str:
        if self.proc is None:
            return "the process is gone"
        code = self.proc.wait()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"the process running the entry script was killed by {name}"
        return f"the process running the entry script exited with code {code} {_DIED_IN[phase]}"

    def run(self, task: RunTask, deadlines: Deadlines) -> TryRecord:
        """Run one try in the child and return its record.

        Never raises for anything the entry script does: a timeout, a crash or a memory kill
        come back as records, and the child is replaced on the next call.
        """
        (record,) = self.run_many([task], deadlines)
        return record

    def run_many(
        self, items: Iterable[RunTask | TryRecord], deadlines: Deadlines
    ) -> Iterator[TryRecord]:
        """Run tries one after the other in the child, each try's record as it ends; a
        record in ``items`` (a try that needs no run) is passed through as it comes.

        The next tries are handed over while one runs (up to ``_AHEAD``, a few in one
        write), so that the child goes on without waiting for this side to wake: a short
        try costs each side about half the CPU (``python -m benchmarks scale``). Each try
        keeps its own deadlines (its phase lines carry its number). A child that dies, is
        killed on a deadline or its memory limit, or fails ``init()`` takes with it only the
        try it ran: those handed over behind it go to the next child. ``items`` is read a few
        ahead of the try that runs.
        """
        self.deadlines = deadlines
        source = iter(items)
        # tries handed over (or to hand over: "sent" False), oldest first
        queue: list[_Queued] = []
        more = True
        while True:
            if self.closing:  # its worker handed these back: they run elsewhere
                left: list[RunTask | TryRecord] = [q.task for q in queue]
                if more:  # those not taken from ``items`` yet too (``run`` gets its record)
                    left += list(source)
                for unrun in left:
                    yield (
                        unrun
                        if isinstance(unrun, TryRecord)
                        else not_started(unrun.batch.index, unrun.try_no, "; handed back")
                    )
                return
            filling = len(queue) <= _AHEAD // 2
            # topped up once half is done, so that tries go over a few at a time: each
            # write to a process that waits for work costs a wake-up of it
            while more and filling and len(queue) < _AHEAD:
                item = next(source, None)
                if item is None:
                    more = False
                elif isinstance(item, TryRecord):
                    yield item
                else:
                    self._seq += 1
                    queue.append(_Queued(replace(item, seq=self._seq)))
            if not queue:
                return
            if not self.alive:
                self.kill()
                self.start()
                for q in queue:
                    q.sent = False
            head = queue[0]
            out: list[bytes] = []
            going: list[_Queued] = []
            size = 0
            for q in queue:
                if q.sent:
                    continue
                data = encode_message(q.task)
                size += len(data) if q is not head else 0
                if size > _AHEAD_BYTES:
                    break  # would wait for room in the pipe while the head runs
                out.append(data)
                going.append(q)
            if going:
                try:
                    write_bytes(self._to_child, b"".join(out))  # one write, one wake-up
                    now = time.monotonic()
                    for q in going:
                        q.sent, q.at = True, now
                except OSError:  # the child is gone before it took them
                    pass
            self.began = time.time()
            record = self._wait(head, deadlines)
            queue.pop(0)
            # (a child that died or was killed is found at the top of the loop, before the
            # next write: the tries behind go to the next child)
            yield record

    def _wait(self, head: _Queued, deadlines: Deadlines) -> TryRecord:
        """Wait for the record of the oldest try handed over (``head``)."""
        n = head.task.batch.n_items
        base = TryRecord(
            mb=head.task.batch.index, try_no=head.task.try_no, status=Status.RUN_DONE, total=n
        )
        # timed from when it was handed over, or from when the try before it ended
        clock = DeadlineClock(deadlines, since=max(head.at, self._ended))
        clock.feed(b"".join(self._lines.pop(head.task.seq, [])))
        if not head.sent:
            return self._died(base, clock.phase)
        while True:
            wait = clock.wait(time.monotonic(), _POLL_SECONDS)
            ready, _, _ = select.select([self._from_child], [], [], wait)
            self._route_phases(head.task.seq, clock)
            if clock.items is not None and clock.items != n:  # what run() was given: a
                base, n = base.with_(total=clock.items), clock.items  # table's rows counted
            if ready:
                try:
                    message = read_message(self._from_child)
                except (ChannelClosed, OSError):
                    return self._died(base, clock.phase)
                if isinstance(message, Done):
                    self._ended = time.monotonic()
                    if message.record.status == Status.INIT_FAILED:
                        self.kill()
                    return message.record
                continue
            if clock.expired(time.monotonic()):
                self.kill()
                status, error = clock.timeout()
                if status == Status.INIT_FAILED:
                    return base.with_(status=status, error=error)
                return base.with_(status=status, failed=n or 0, error=error)
            if self.memory_limit and self._rss() > self.memory_limit:
                self.kill()
                return base.with_(
                    status=Status.PROCESS_DIED,
                    failed=n or 0,
                    error=f"the process running the entry script used more than its memory "
                    f"limit of {self.memory_limit / 2**20:.0f} MiB and was killed",
                )

    def _route_phases(self, seq: int, clock: DeadlineClock) -> None:
        """Read the phase lines the child wrote: those of try ``seq`` (and the process's own)
        to ``clock``, those of the try handed over behind it kept for its own clock."""
        *lines, self._partial = (self._partial + self._read_phases()).split(b"\n")
        for line in lines:
            of = phase_line_seq(line)
            if of is None or of == seq:
                clock.feed(line + b"\n")
            elif of > seq:
                self._lines.setdefault(of, []).append(line + b"\n")

    def _read_phases(self) -> bytes:
        """The phase lines the child wrote since the last call."""
        data = b""
        try:
            while chunk := os.read(self._phases, 4096):
                data += chunk
                if len(chunk) < 4096:  # all there was (what comes next, the next call reads)
                    break
        except BlockingIOError:
            pass
        return data

    def _died(self, base: TryRecord, phase: Phase) -> TryRecord:
        message = self._death_message(phase)
        self.kill()
        if phase == Phase.INIT:
            return base.with_(status=Status.INIT_FAILED, error=message)
        return base.with_(status=Status.PROCESS_DIED, failed=base.total or 0, error=message)
