"""The run directory's layout: every path daskprs writes, its run record and its lock.

One frozen, picklable value owns the layout (the run directory is the truth:
docs/design.md#the-run-directory-is-the-truth), so no other module spells a path inside it::

    run = RunDir("/runs/pipeline-20261202-051900")
    run.record                      # run.json
    run.logs.job_result             # logs/job_result.txt
    run.step("score").ledger        # steps/score/ledger.jsonl

The standard library and :mod:`daskprs.errors` only: worker and entry-script processes
import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from daskprs.errors import RunLocked, RunRecordUnreadable

__all__ = [
    "LogsDir",
    "RunDir",
    "StepDir",
    "default_run_dir",
    "pid_alive",
    "replace_file",
    "replacing",
    "write_json",
]


@dataclass(frozen=True)
class LogsDir:
    """``<run>/logs``: Azure-style logs (docs/run-directory.md#logs)."""

    root: str

    @property
    def job_result(self) -> str:
        return os.path.join(self.root, "job_result.txt")

    @property
    def job_error(self) -> str:
        return os.path.join(self.root, "job_error.txt")

    @property
    def driver(self) -> str:
        """daskprs's own log of the run (the ``daskprs.*`` loggers)."""
        return os.path.join(self.root, "sys", "daskprs.log")

    @property
    def processed_report(self) -> str:
        """One row a try."""
        return os.path.join(self.root, "sys", "job_report", "processed_mini-batches.csv")

    @property
    def processed_mark(self) -> str:
        """The sizes of the try report and of every ledger when the driver last had both
        written (:mod:`daskprs.observe.processed`)."""
        return os.path.join(self.root, "sys", "processed_report.json")

    def progress_overview(self, now: float | None = None) -> str:
        stamp = time.strftime("%Y%m%d%H", time.gmtime(now if now is not None else time.time()))
        return os.path.join(self.root, f"job_progress_overview.{stamp}.txt")

    def user_output(self, kind: str, node: str, process: str) -> str:
        """The entry script's ``stdout`` or ``stderr`` in one process."""
        return os.path.join(self.root, "user", kind, node, f"{process}.{kind}.txt")

    def user_error(self, node: str, process: str) -> str:
        """Errors of the entry script in one process, with tracebacks."""
        return os.path.join(self.root, "user", "error", node, f"{process}.txt")

    def perf(self, node: str, process: str) -> str:
        """The resource monitor's samples of one process."""
        return os.path.join(self.root, "perf", node, f"{process}.csv")

    def profile(self, node: str, process: str) -> str:
        """``--profiling_module cProfile`` statistics of one process."""
        return os.path.join(self.root, "sys", "node", node, f"{process}.profile")

    def command(self, step: str) -> str:
        """The folder of a command step's ``stdout.txt`` and ``stderr.txt``."""
        return os.path.join(self.root, "steps", step)


@dataclass(frozen=True)
class StepDir:
    """``<run>/steps/<step>``: the plan, the ledger, claims and committed parts of a step."""

    root: str

    @property
    def plan(self) -> str:
        return os.path.join(self.root, "plan.json")

    @property
    def ledger(self) -> str:
        return os.path.join(self.root, "ledger.jsonl")

    @property
    def parts(self) -> str:
        return os.path.join(self.root, "parts")

    @property
    def claims(self) -> str:
        return os.path.join(self.root, "claims")

    @property
    def staged_logs(self) -> str:
        """How far the driver read each log staged by workers (``--staging``)."""
        return os.path.join(self.root, "staged-logs.json")

    @property
    def reuse_record(self) -> str:
        """The step succeeded in this run, with this reuse key (see ``results.reuse``)."""
        return os.path.join(self.root, "reuse.json")

    @property
    def output_record(self) -> str:
        """The ``append_row_to`` output as the step last wrote it: its size, modification time
        and the parts it holds (a later session with nothing to run keeps it as it is)."""
        return os.path.join(self.root, "output.json")

    @property
    def reused(self) -> str:
        """This run reused the step from an earlier run (which one, and its outcome)."""
        return os.path.join(self.root, "reused.json")

    @property
    def done(self) -> str:
        """The marker of a command step that succeeded."""
        return os.path.join(self.root, "done")

    @property
    def command(self) -> str:
        """A command step's last start: its process group and the mark its processes carry
        (an earlier session's command still running is ended before it runs again)."""
        return os.path.join(self.root, "command.json")

    def part(self, mb: int, try_key: str) -> str:
        return os.path.join(self.parts, f"{mb:05d}.{try_key}.part")

    def pack(self, mb: int, try_key: str) -> str:
        """The file the tries of one Dask task append their rows to, named by its first try
        (:mod:`daskprs.results.packs`)."""
        return os.path.join(self.parts, f"{mb:05d}.{try_key}.pack")

    def claim(self, mb: int, try_key: str) -> str:
        return os.path.join(self.claims, f"{mb:05d}.{try_key}")


@dataclass(frozen=True)
class RunDir:
    """One run's folder (an absolute local path or a shared mount)."""

    root: str

    @property
    def record(self) -> str:
        """``run.json``: the job, the mode, fingerprints of code and inputs."""
        return os.path.join(self.root, "run.json")

    @property
    def resolved_job(self) -> str:
        """``job.json``: the job as daskprs resolved it (bindings, settings, paths)."""
        return os.path.join(self.root, "job.json")

    @property
    def lock_file(self) -> str:
        return os.path.join(self.root, "run.lock")

    @property
    def logs(self) -> LogsDir:
        return LogsDir(os.path.join(self.root, "logs"))

    @property
    def failed_mini_batches(self) -> str:
        return os.path.join(self.root, "failed_mini_batches.jsonl")

    @property
    def map_record(self) -> str:
        """``map_batches`` runs: the collection's kind and number of partitions."""
        return os.path.join(self.root, "map_batches.json")

    @property
    def staged(self) -> str:
        """``map_batches`` runs: the collection's partitions staged to files."""
        return os.path.join(self.root, "staged")

    @property
    def generated_code(self) -> str:
        """``map_batches`` runs: the pickled functions and their generated entry script."""
        return os.path.join(self.root, "code")

    def output(self, step: str, name: str) -> str:
        """Where an output without a ``path`` goes."""
        return os.path.join(self.root, "outputs", step, name)

    @property
    def steps_root(self) -> str:
        return os.path.join(self.root, "steps")

    def step(self, name: str) -> StepDir:
        return StepDir(os.path.join(self.steps_root, name))

    # -- the run record ----------------------------------------------------------------------
    def read_record(self) -> dict[str, Any] | None:
        """The run record, or None when there is none (not a run directory).

        Raises
        ------
        RunRecordUnreadable
            ``run.json`` is there but holds no record (empty, cut short, not JSON).
        """
        try:
            with open(self.record, encoding="utf-8") as f:
                record = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError as err:  # (not JSON, or not UTF-8)
            raise RunRecordUnreadable(self.record, str(err)) from None
        if not isinstance(record, dict):
            raise RunRecordUnreadable(self.record, "it is no JSON object")
        return record

    def write_record(self, record: dict[str, Any]) -> None:
        """Replace the run record atomically, and durably: a resume needs it whole."""
        write_json(self.record, record, sync=True)

    # -- the lock ----------------------------------------------------------------------------
    def lock(self) -> str:
        """Take the run's lock, so two drivers never run the same run at once.

        The lock is ``flock`` on ``run.lock``, held open for the life of the run: the kernel
        lets one process hold it and releases it when that process ends, however it ends, so a
        lock left by a driver that was killed is simply taken. The holder's pid is written in
        the file for ``status`` (:meth:`lock_owner`).

        Raises
        ------
        RunLocked
            Another process holds the lock (it is running this run now).
        OSError
            ``run.lock`` cannot be made or written (a read-only or full disk).
        """
        path = self.lock_file
        if path in _HELD:  # this process runs the run already: a second driver here
            raise RunLocked(self.root, os.getpid())
        give_up = time.monotonic() + _LOCK_PATIENCE
        refused = 0
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                refused += 1
                pid = _lock_owner(path)
                # a `status` may hold the lock for an instant, and a new holder may not have
                # written its pid yet (the file names the killed driver): ask again for a
                # moment before saying a driver runs the run
                if (refused > 1 and pid and pid_alive(pid)) or time.monotonic() > give_up:
                    raise RunLocked(self.root, pid) from None
                time.sleep(0.05)
                continue
            if not _same_file(fd, path):  # its holder removed it as we opened it: again
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            except OSError:  # (a full disk: the caller says so)
                os.close(fd)
                raise
            _HELD[path] = fd
            _forget_locks_in_forks()
            return path

    def lock_owner(self) -> int | None:
        """The pid of the process holding the run's lock (a driver running the run now), or
        None when no process holds it (no lock file, or one left by a driver that ended)."""
        path = self.lock_file
        if path in _HELD:
            return os.getpid()
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            try:
                # a shared lock is refused only while a driver holds the exclusive one
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _lock_owner(path) or None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def unlock(self) -> None:
        """Release the lock this process holds (nothing when it holds none), removing
        ``run.lock``."""
        path = self.lock_file
        fd = _HELD.pop(path, None)
        if fd is None:
            return
        try:
            # removed while still held: whoever opened it meanwhile sees it is not the file
            # at the path any more and opens again (see `_same_file`)
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


# The longest job file stem a default run directory's name keeps (in bytes): with the time
# stamp it stays within the 255 bytes a file name may have.
_STEM_BYTES = 200


def default_run_dir(stem: str, now: float | None = None) -> str:
    """``./daskprs-runs/<stem>-<UTC yyyymmdd-hhmmss>``: where a run goes when no run
    directory is given (``stem``: the job file's, or ``map_batches``; a long one cut short)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now if now is not None else time.time()))
    raw = stem.encode("utf-8", "surrogateescape")
    if len(raw) > _STEM_BYTES:
        stem = raw[:_STEM_BYTES].decode("utf-8", "ignore")
    return os.path.abspath(os.path.join("daskprs-runs", f"{stem}-{stamp}"))


def replace_file(path: str, text: str, sync: bool = False) -> None:
    """Replace the file ``path`` with ``text`` atomically (a temporary file beside it, then a
    rename; with ``sync``, the bytes on disk before the rename). A write that fails (a full
    disk, an interrupt) leaves no temporary file behind."""
    with replacing(path) as f:
        f.write(text)
        if sync:
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def replacing(path: str, mode: str = "w") -> Iterator[Any]:
    """A file open for writing beside ``path`` (``mode``: ``"w"`` text in UTF-8, ``"wb"``
    bytes), renamed over ``path`` when the block ends; a block that fails (a full disk, an
    interrupt) leaves no temporary file behind, and a write's error names ``path``."""
    tmp = f"{path}.tmp"
    try:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.filename is None:
            err.filename = path  # a write's error names no file: the message names this one
        raise


def write_json(path: str, data: Any, sync: bool = False) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`replace_file`)."""
    replace_file(path, json.dumps(data, indent=2, default=str), sync=sync)


def _lock_owner(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


# The run locks this process holds: the path of each ``run.lock``, and the descriptor whose
# open file carries the ``flock`` (closing it releases the lock).
_HELD: dict[str, int] = {}

# Seconds ``lock`` asks again (every 50 ms) while the lock is held by a process not known
# alive: a driver that has not written its pid yet, or a ``status`` probing the lock. A
# driver that is alive is refused at the second ask.
_LOCK_PATIENCE = 2.0

_fork_hook: list[bool] = []


def _same_file(fd: int, path: str) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a holder that unlocked removed it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _forget_locks_in_forks() -> None:
    """A forked child shares the lock's open file: close it there, so a child that outlives
    a killed driver does not keep the run locked (the parent's lock is not affected)."""
    if not _fork_hook:
        _fork_hook.append(True)
        os.register_at_fork(after_in_child=_close_held)


def _close_held() -> None:
    for fd in _HELD.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except (FileNotFoundError, IndexError):
        return True
