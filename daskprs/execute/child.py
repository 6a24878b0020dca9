"""The process that runs the user's entry script (one per worker slot).

Started by :class:`daskprs.execute.slot.Slot` as
``python -m daskprs.execute.child IN_FD OUT_FD PHASE_FD``.
It reads a setup message, loads the entry script and calls ``init()`` at once (before its
first task arrives, so a model loads while the driver is still submitting), then reads tasks,
one at a time, from ``IN_FD``; for each it loads the mini-batch's data, calls ``run()``,
writes the rows to the task's part file and answers with a small record on
``OUT_FD``. Entering each phase it writes a line ``<phase> <monotonic time>`` to ``PHASE_FD``,
from which the slot computes the phase's deadline; the slot reads those lines when it wakes,
so a phase change costs it no wake-up of its own. Failures come back as records; a failed
``init()`` ends this process (the slot starts a new one).

Imports stay light (the standard library; pandas only for a step that reads tables) so an
entry script can run in another interpreter, and a process starts in tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import signal
import sys
import sysconfig
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from daskprs.execute.wire import (
    ChannelClosed,
    Done,
    RunTask,
    Setup,
    StopChild,
    Stopped,
    read_message,
    write_message,
)
from daskprs.paths import redact
from daskprs.results.outcome import Status, TryRecord, short_return
from daskprs.results.packs import pack_ref
from daskprs.results.storage import storage_error, storage_problem
from daskprs.rundir import LogsDir
from daskprs.settings import parse_gpu_devices

__all__ = [
    "PROCESS_MARK",
    "ChildConfig",
    "MiniBatchContext",
    "carries_mark",
    "end_marked",
    "main",
    "marked",
]

# The environment variable the slot sets to a new token in each entry-script process (and the
# driver in each command step's, :mod:`daskprs.execute.commandguard`): every process it starts
# inherits it, also one that leaves the process's session (``setsid``, a double fork), so
# that those end with it (:func:`end_marked`). Lower case, not a setting: daskprs sets it and
# reads none of it.
PROCESS_MARK = "daskprs_process"

# Times :func:`end_marked` looks again for marked processes (one forked while it killed).
_SWEEPS = 10

_TRACEBACK_LINES = 20
# Characters kept of an error line and of a traceback: an exception carrying megabytes of
# text must not travel into the ledger, the report and every log as it is.
_ERROR_CHARS = 2000
_TRACEBACK_CHARS = 8000


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]} ... [{len(text) - limit} characters cut] ... {text[-half:]}"


@dataclass(frozen=True)
class ChildConfig:
    """Everything a child needs to run an entry script (picklable)."""

    code_dir: str
    entry_script: str
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    node: str = "node000"
    process: str = "process000"
    # The run's logs folder (None: no logs, as in tests of the child alone)
    logs: LogsDir | None = None
    output_dir: str = ""
    logging_level: str = "INFO"
    cache_dir: str = ""
    to_csv: dict[str, Any] = field(default_factory=dict)
    profiling_module: str | None = None
    # The interpreter to run in (None: the worker's own)
    python: str | None = None
    # The step reads tables: import pandas and the table reader when the process starts, not
    # inside the first try's load deadline (a file-list step never needs them)
    tables: bool = True
    # Bytes kept of the process's stdout, stderr and EntryScript().logger file each
    # (DASKPRS_USER_LOG_LIMIT; None: no limit)
    log_limit: int | None = 64 * 2**20


class MiniBatchContext:
    """The second argument of ``run(mini_batch, mini_batch_context)``."""

    def __init__(
        self,
        minibatch_index: int,
        partition_key_value: dict[str, str] | None = None,
        global_row_index_lower_bound: int | None = None,
    ):
        self.minibatch_index = minibatch_index
        self.partition_key_value = partition_key_value or {}
        self.global_row_index_lower_bound = global_row_index_lower_bound

    def __repr__(self) -> str:
        return (
            f"MiniBatchContext(minibatch_index={self.minibatch_index}, "
            f"partition_key_value={self.partition_key_value!r}, "
            f"global_row_index_lower_bound={self.global_row_index_lower_bound!r})"
        )


# The folder of the daskprs package: frames there are daskprs's own, not the user's.
_OWN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where installed libraries and the standard library live: not the user's code either.
_LIBRARIES = tuple(
    os.path.abspath(p)
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
)


def azureml_variables(cfg: ChildConfig, env: Mapping[str, str]) -> dict[str, str]:
    """The variables Azure's parallel run sets that entry scripts read: the output folder
    (``AZUREML_BI_OUTPUT_PATH``, as ``EntryScript().output_dir``) and the GPUs this process
    sees (``AZ_BATCHAI_GPU_COUNT_FOUND``: the devices of its ``CUDA_VISIBLE_DEVICES``, none
    for ``-1``)."""
    devices = parse_gpu_devices(env.get("CUDA_VISIBLE_DEVICES", ""))
    out = {"AZ_BATCHAI_GPU_COUNT_FOUND": str(len(devices))}
    if cfg.output_dir:
        out["AZUREML_BI_OUTPUT_PATH"] = cfg.output_dir
    return out


def _log_root_to_stdout(level: str) -> None:
    """Python's root logger to the process's stdout log at the step's ``logging_level`` (INFO
    by default), as on Azure: ``logging.info(...)`` in a script is kept, not dropped."""
    import logging

    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)


def _users(filename: str) -> bool:
    path = os.path.abspath(filename)
    return not path.startswith((_OWN + os.sep, *(lib + os.sep for lib in _LIBRARIES)))


def _format_error(exc: BaseException, script_path: str) -> tuple[str, str]:
    """The exception line with where in the user's code it was raised, and the last lines of
    its traceback from the user's first frame (daskprs's own frames, the process calling
    ``init()`` or ``run()``, left out)."""
    line = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    frames = list(report.stack)
    first = next((i for i, f in enumerate(frames) if not f.filename.startswith(_OWN + os.sep)), 0)
    report.stack = traceback.StackSummary.from_list(frames[first:])
    # where: the entry script's last frame, else the last frame of the user's own code (a
    # function given to map_batches, a module of the code folder)
    mine = [f for f in frames if f.filename == script_path] or [
        f for f in frames if _users(f.filename) and not f.filename.startswith("<")
    ]
    where = f" (at {os.path.basename(mine[-1].filename)}:{mine[-1].lineno})" if mine else ""
    text = "".join(report.format())
    tail = "\n".join(text.rstrip().splitlines()[-_TRACEBACK_LINES:])
    return _clip(line, _ERROR_CHARS) + where, _clip(tail, _TRACEBACK_CHARS)


def _failed(
    base: TryRecord, status: Status, total: int, seconds: float, error: str, tb: str = ""
) -> TryRecord:
    """A try of ``total`` items that failed with ``status`` after ``seconds`` in ``run()``."""
    return base.with_(
        status=status, total=total, failed=total, run_seconds=seconds, error=error, traceback=tb
    )


class _Runner:
    """State of one child: the loaded script and whether ``init()`` ran."""

    def __init__(self, cfg: ChildConfig, out_fd: int, phase_fd: int):
        self.cfg = cfg
        self.out_fd = out_fd
        self.phase_fd = phase_fd
        self.module: Any = None
        # the pack this process appends its tries' rows to (daskprs.results.packs)
        self._packed: Any = None
        # the last run() seen and whether it takes a context (see `do_task`)
        self._run_seen: Any = None
        self._run_wants = False
        # the error and traceback of an init() that failed (see `start`)
        self.init_failure: tuple[str, str] | None = None
        self.script_path = os.path.join(cfg.code_dir, cfg.entry_script)
        self.profiler: Any = None
        if cfg.profiling_module == "cProfile":
            import cProfile

            self.profiler = cProfile.Profile()
        self.error_log = cfg.logs.user_error(cfg.node, cfg.process) if cfg.logs else None

    def send(self, message: Done | Stopped) -> None:
        write_message(self.out_fd, message)

    def phase(self, name: str, items: int | None = None, seq: int | None = None) -> None:
        """Say the phase the process enters (and, entering ``run``, how many rows or items
        it was given: a try killed in run() then counts them as failed), for try ``seq``."""
        if seq is not None:
            extra = f" {items if items is not None else '-'} {seq}"
        else:
            extra = f" {items}" if items is not None else ""
        os.write(self.phase_fd, f"{name} {time.monotonic():.6f}{extra}\n".encode())

    def log_error(self, header: str, tb: str) -> None:
        if self.error_log is None:
            return
        try:
            os.makedirs(os.path.dirname(self.error_log), exist_ok=True)
            # a lone surrogate in an error (a file name that is not UTF-8) is escaped
            with open(self.error_log, "a", encoding="utf-8", errors="backslashreplace") as f:
                f.write(redact(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n{tb}\n\n"))
        except OSError as err:
            if not storage_error(err):
                raise
            # a full or read-only disk: the error still goes to the ledger with its try,
            # and the driver's own next write to that disk stops the run, saying so

    def setup_process(self) -> None:
        cfg = self.cfg
        os.environ.update(cfg.env)
        for name, value in azureml_variables(cfg, os.environ).items():
            os.environ.setdefault(name, value)
        _log_root_to_stdout(cfg.logging_level)
        os.chdir(work_folder(cfg))
        if cfg.code_dir not in sys.path:
            sys.path.insert(0, cfg.code_dir)
        sys.argv = [self.script_path, *cfg.argv]
        from azureml_user.parallel_run import _configure

        _configure(
            logs_dir=cfg.logs.root if cfg.logs else "",
            output_dir=cfg.output_dir,
            node=cfg.node,
            process=cfg.process,
            logging_level=cfg.logging_level,
        )

    def init(self) -> None:
        name = "daskprs_entry_" + os.path.splitext(os.path.basename(self.script_path))[0]
        spec = importlib.util.spec_from_file_location(name, self.script_path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load entry script {self.script_path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        if not callable(getattr(module, "run", None)):
            raise AttributeError(
                f"entry script {self.script_path} defines no run(mini_batch) function"
            )
        init = getattr(module, "init", None)
        if callable(init):
            self._profiled(init)
        self.module = module

    def _profiled(self, fn: Any, *args: Any) -> Any:
        if self.profiler is None:
            return fn(*args)
        self.profiler.enable()
        try:
            return fn(*args)
        finally:
            self.profiler.disable()
            if self.cfg.logs is not None:
                path = self.cfg.logs.profile(self.cfg.node, self.cfg.process)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                self.profiler.dump_stats(path)

    def shutdown(self) -> None:
        fn = getattr(self.module, "shutdown", None) if self.module is not None else None
        if callable(fn):
            try:
                fn()
            except BaseException as exc:  # sys.exit() too: the child still says it stopped
                self.log_error("shutdown() raised", _format_error(exc, self.script_path)[1])

    def start(self) -> None:
        """Load the entry script and run its ``init()``, as the process starts (before its
        first try arrives, as Azure's processes do); a failure is kept for the first try's
        record."""
        self.phase("init")
        try:
            self.init()
        except BaseException as exc:
            error, tb = _format_error(exc, self.script_path)
            self.log_error(f"init() failed: {error}", tb)
            self.init_failure = (error, tb)

    def do_task(self, task: RunTask) -> TryRecord:
        batch = task.batch
        base = TryRecord(mb=batch.index, try_no=task.try_no, status=Status.RUN_DONE)
        if self.init_failure is not None:
            error, tb = self.init_failure
            return base.with_(status=Status.INIT_FAILED, error=error, traceback=tb)
        self.phase("load", seq=task.seq)
        try:
            from daskprs.inputs.readers import load_batch

            data = load_batch(batch, cache_dir=self.cfg.cache_dir)
        except Exception as exc:
            error, tb = _format_error(exc, self.script_path)
            self.log_error(f"loading mini-batch {batch.index} failed: {error}", tb)
            return base.with_(
                status=Status.LOAD_ERROR,
                total=batch.n_items,
                failed=batch.n_items or 0,
                error=f"reading {batch!r}: {error}",
                traceback=tb,
            )
        total = len(data)
        if total == 0:
            return base.with_(status=Status.EMPTY, total=0)
        self.phase("run", total, task.seq)
        run = self.module.run
        saved = _ProcessState.save()
        started = time.perf_counter()
        try:
            if run is not self._run_seen:  # a signature read once per function, not per try
                self._run_seen, self._run_wants = run, _wants_context(run)
            if self._run_wants:
                context = MiniBatchContext(
                    batch.index,
                    dict(batch.keys) if batch.keys is not None else None,
                    getattr(batch, "row_lower_bound", None),
                )
                result = self._profiled(run, data, context)
            else:
                result = self._profiled(run, data)
        except BaseException as exc:
            seconds = time.perf_counter() - started
            error, tb = _format_error(exc, self.script_path)
            self.log_error(f"run() raised on mini-batch {batch.index}: {error}", tb)
            return _failed(base, Status.RUN_EXCEPTION, total, seconds, error, tb)
        finally:
            saved.restore()
        seconds = time.perf_counter() - started
        return self.finish(base, result, total, seconds, task.part, task.pack)

    def _pack(self, path: str) -> Any:
        """The pack at ``path``, open to append (the one open before is closed)."""
        if self._packed is not None and self._packed.name == path:
            return self._packed
        self.close_pack()
        self._packed = open(path, "ab")
        return self._packed

    def close_pack(self) -> None:
        """Close the pack this process appends to, if one is open: done after the last try
        of a task, so that a pack the worker uploads and removes then (a staged run's) does
        not keep its disk space while this process lives."""
        if self._packed is not None:
            self._packed.close()
            self._packed = None

    def finish(
        self,
        base: TryRecord,
        result: Any,
        total: int,
        seconds: float,
        part: str | None,
        pack: bool = False,
    ) -> TryRecord:
        from daskprs.results.formatting import result_length

        n = result_length(result)
        if n is None:
            error = (
                f"run() returned {type(result).__name__}"
                + (" (None: did run() forget to return?)" if result is None else "")
                + "; it must return a list, a tuple or a pandas DataFrame"
            )
            self.log_error(f"mini-batch {base.mb}: {error}", "")
            return _failed(base, Status.WRONG_RETURN, total, seconds, error)
        warning = ""
        if n > total:
            warning = (
                f"run() returned {n} items for a mini-batch of {total}; all are written and "
                f"{n} is counted as the item count"
            )
            total = n
        elif n < total:
            what = "items" if isinstance(result, list | tuple) else "rows"
            warning = short_return(n, total, what)
        try:
            written = self._write_part(result, part, pack)
        except OSError as err:
            if storage_error(err):  # the part's disk, not the rows: the step stops
                problem, fix = storage_problem(err, part or "")
                self.log_error(f"mini-batch {base.mb}: {problem}", "")
                cfg = self.cfg
                return base.with_(
                    status=Status.STORAGE_ERROR,
                    total=total,
                    run_seconds=seconds,
                    error=f"{problem} while entry-script process {cfg.node}/{cfg.process} "
                    f"wrote the rows of mini-batch {base.mb}\n{fix}",
                )
            error, tb = self._unwritable(err, result)
        except Exception as exc:  # an item's str(), its encoding, a to_csv option
            error, tb = self._unwritable(exc, result)
        else:
            return base.with_(
                status=Status.RUN_DONE,
                total=total,
                succeeded=n,
                failed=total - n,
                run_seconds=seconds,
                part=written,
                warning=warning,
            )
        self.log_error(f"mini-batch {base.mb}: {error}", tb)
        return _failed(base, Status.WRONG_RETURN, total, seconds, error, tb)

    def _write_part(self, result: Any, part: str | None, pack: bool) -> str | None:
        """Write the rows of ``result`` to the try's part; the part its record names.

        A write that raises leaves nothing of this try: the pack is cut back to where the try
        began (the next try appends there), a part of its own is removed.
        """
        from daskprs.results.formatting import write_rows

        if part is None:
            return None
        if pack:
            # appended to its task's pack: a range, flushed before the record goes out
            f = self._pack(part)
            offset = f.tell()
            try:
                write_rows(result, f, self.cfg.to_csv)
                f.flush()
            except BaseException:
                self._cut_pack(offset)
                raise
            return pack_ref(part, offset, f.tell() - offset)
        # written in place: a part counts only once the ledger records its try DONE, which
        # comes after this, so a part cut short is never read
        try:
            with open(part, "wb") as f:
                write_rows(result, f, self.cfg.to_csv)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(part)
            raise
        return part

    def _cut_pack(self, offset: int) -> None:
        """Cut the open pack back to ``offset``, dropping what a failed write left in its
        buffer and on disk; when it cannot be cut (its disk failed), close it: the next try
        opens it again at its end, and the bytes past ``offset`` stay unread."""
        f = self._packed
        try:
            f.seek(offset)  # drops what the buffer holds
            f.truncate(offset)
        except OSError:
            self._packed = None
            with contextlib.suppress(OSError):
                f.close()

    def _unwritable(self, exc: BaseException, result: Any) -> tuple[str, str]:
        """The error of a try whose rows cannot be written, naming the item or row, and its
        traceback."""
        from daskprs.results.formatting import PART_FORMAT, first_unwritable

        error, tb = _format_error(exc, self.script_path)
        at = first_unwritable(result, self.cfg.to_csv)
        if isinstance(result, list | tuple):
            which = f"item {at}" if at is not None else "items"
            how = (
                "each item is written as str(item) in UTF-8: return items whose str() works "
                "and holds no lone surrogate (such as '\\udcff' from a file name that is not "
                "UTF-8)"
            )
        else:
            which = f"row {at} (index {result.index[at]!r})" if at is not None else "rows"
            options = {k: v for k, v in self.cfg.to_csv.items() if k != PART_FORMAT}
            how = (
                f"rows are written with to_csv options {options} from "
                "parallel_run_step.settings.json: fix the values or the options"
                if options
                else "fix the values"
            )
        kind = type(result).__name__
        return (
            f"run() returned a {kind} whose {which} cannot be written to the output: {error}; "
            f"{how}",
            tb,
        )


@dataclass
class _ProcessState:
    """What a ``run()`` may change in its process and the next mini-batch must not inherit:
    the environment, ``sys.path``, ``sys.argv`` and the working directory.

    The environment is kept as ``os.environ`` keeps it (its encoded ``_data`` where there is
    one): copying and comparing that takes a microsecond where decoding every variable took
    twenty, twice a try."""

    environ: dict[Any, Any]
    path: list[str]
    argv: list[str]
    cwd: str | None

    @staticmethod
    def _environ() -> dict[Any, Any]:
        return dict(getattr(os.environ, "_data", os.environ))

    @classmethod
    def save(cls) -> _ProcessState:
        try:
            cwd: str | None = os.getcwd()
        except OSError:
            cwd = None
        return cls(cls._environ(), list(sys.path), list(sys.argv), cwd)

    def restore(self) -> None:
        if self._environ() != self.environ:
            os.environ.clear()
            if hasattr(os.environ, "_data"):
                # each variable set again through os.environ, so that the C environment the
                # script's subprocesses inherit is restored too
                env: Any = os.environ
                for key, value in self.environ.items():
                    os.environ[env.decodekey(key)] = env.decodevalue(value)
            else:
                os.environ.update(self.environ)
        sys.path[:] = self.path
        sys.argv[:] = self.argv
        if self.cwd is not None:
            try:
                os.chdir(self.cwd)
            except OSError:  # run() deleted its working directory: the next one gets a new one
                # (beside the one it deleted: in the slot's cache folder, removed with it)
                beside = os.path.dirname(self.cwd)
                parent = beside if os.path.isdir(beside) else None
                os.chdir(tempfile.mkdtemp(prefix="daskprs-", dir=parent))


def work_folder(cfg: ChildConfig) -> str:
    """A new private working folder for the entry script, inside the slot's cache folder when
    it has one: the slot removes that folder when it ends, however its processes ended
    (killed on a timeout too), so that the files a script leaves in its working folder do not
    pile up in the temporary folder run after run."""
    parent = None
    if cfg.cache_dir:
        try:
            os.makedirs(cfg.cache_dir, exist_ok=True)
            parent = cfg.cache_dir
        except OSError:  # the temporary folder's own then (removed by no one, as before)
            parent = None
    return tempfile.mkdtemp(prefix=f"daskprs-{cfg.node}-{cfg.process}-", dir=parent)


def _wants_context(run: Any) -> bool:
    try:
        params = inspect.signature(run).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) or p.kind == p.VAR_POSITIONAL
    ]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in positional)


def end_marked(token: str, spare: frozenset[int] = frozenset()) -> int:
    """SIGKILL every process of this user whose environment carries ``PROCESS_MARK=token``
    (the processes one entry-script process started, wherever they went), but ``spare``.

    Linux only (it reads ``/proc/<pid>/environ``); elsewhere it finds nothing. A process that
    started with an environment of its own (``env -i``), or as another user, is not found.

    Returns
    -------
    int
        The processes killed.
    """
    killed: set[int] = set()
    for _ in range(_SWEEPS):
        found = [pid for pid in marked(token) if pid not in killed and pid not in spare]
        if not found:
            break
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        killed.update(found)  # a process killed forks no more: the next look finds only new
    return len(killed)


def marked(token: str) -> list[int]:
    """The pids of this user's processes whose environment carries ``PROCESS_MARK=token``
    (none but on Linux; a process that has ended, a zombie too, carries nothing)."""
    try:
        names = os.listdir("/proc")
    except OSError:  # no /proc: not Linux
        return []
    return [int(name) for name in names if name.isdigit() and carries_mark(int(name), token)]


def carries_mark(pid: int, token: str) -> bool:
    """Whether the environment of process ``pid`` holds ``PROCESS_MARK=token``: it is one
    of the processes marked with ``token``, not another that got its pid since."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:  # gone, or another user's
        return False
    return f"\0{PROCESS_MARK}={token}\0".encode() in b"\0" + environ


def _watch_parent(parent: int, token: str) -> None:
    """Exit when the worker process that started us is gone (killed with SIGKILL), taking
    down the processes the entry script started: in our session, and those that left it
    (marked with ``token``)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            if token:
                end_marked(token, spare=frozenset({os.getpid()}))
            if os.getpgid(0) == os.getpid():  # our own group (the slot made it): all of it
                os.killpg(os.getpid(), signal.SIGKILL)
            os._exit(1)


def main(argv: list[str] | None = None) -> int:
    """Serve tasks from the pipe until told to stop or the pipe closes."""
    args = sys.argv[1:] if argv is None else argv
    in_fd, out_fd, phase_fd = int(args[0]), int(args[1]), int(args[2])
    # read before a script can change the environment (its mark, for its processes)
    token = os.environ.get(PROCESS_MARK, "")
    threading.Thread(target=_watch_parent, args=(os.getppid(), token), daemon=True).start()
    try:
        return _serve(in_fd, out_fd, phase_fd)
    finally:
        # however it ends (told to stop, or the pipe closed by a worker killed with SIGKILL):
        # the processes the script started end with this one, daemons too
        if token:
            end_marked(token, spare=frozenset({os.getpid()}))


def _serve(in_fd: int, out_fd: int, phase_fd: int) -> int:
    try:
        setup = read_message(in_fd)
    except ChannelClosed:
        return 0
    assert isinstance(setup, Setup), setup
    runner = _Runner(setup.config, out_fd, phase_fd)
    runner.setup_process()
    if runner.cfg.tables:
        try:  # import the table reader (pandas) now, before the first task arrives
            import daskprs.inputs.tableread  # noqa: F401
        except Exception:  # the first load will report it, against its mini-batch
            pass
    runner.start()
    while True:
        try:
            message = read_message(in_fd)
        except ChannelClosed:
            break
        if isinstance(message, StopChild):
            break
        record = runner.do_task(message)
        if message.last:
            runner.close_pack()
        runner.send(Done(record))
        if record.status == Status.INIT_FAILED:
            return 3
    runner.shutdown()
    try:
        runner.send(Stopped())
    except OSError:
        pass
    return 0


def exit_now(code: int) -> None:
    """End this process as an interpreter's exit would, without its finalization.

    The ``atexit`` handlers run (``logging``'s flush, ``weakref.finalize``, the script's
    own) and every open file is flushed, then the process ends: tearing down the modules of a
    scientific stack took 0.24 s a process at the end of every step (scikit-learn and SciPy,
    ``python -m benchmarks images``), where a process pool's workers end with ``os._exit``.
    A script that left a thread running (not a daemon) gets the usual exit, which waits for
    it.
    """
    import atexit

    main = threading.main_thread()
    if any(t is not main and t.is_alive() and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for obj in _open_streams():
        try:
            if not obj.closed:
                obj.flush()
        except Exception:  # a stream that cannot flush now would not at exit either
            pass
    os._exit(code)


def _open_streams() -> list[Any]:
    """Every file object alive in this process (what finalization would flush).

    Found by their classes, ``io``'s C base among their ancestors: ``isinstance`` against the
    abstract ``io.IOBase`` asked of each of a scientific stack's objects took 0.1 s."""
    import gc
    import io
    import itertools

    objects = gc.get_objects()
    base = io.IOBase.__mro__[1]  # _io._IOBase: every file class derives from it
    kinds = {k for k in set(map(type, objects)) if type.__subclasscheck__(base, k)}
    return list(itertools.compress(objects, map(kinds.__contains__, map(type, objects))))


if __name__ == "__main__":
    exit_now(main())
