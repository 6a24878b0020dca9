"""What runs inside a Dask worker: one try of one mini-batch, through the worker's slot.

``run_try`` is the function the driver submits (one Dask task per try, key
``minibatch-00042-try1``). It claims the try atomically first, so a task that Dask runs a
second time by itself (a retried task of a dead worker, a recomputed result) does nothing
(DESIGN decision 2). Then it hands the mini-batch to the slot of this worker thread, whose
child process runs the entry script, and returns a small :class:`TryRecord`.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from daskprs.execute.child import ChildConfig
from daskprs.execute.deadlines import Deadlines
from daskprs.execute.slot import Slot
from daskprs.execute.wire import RunTask
from daskprs.inputs.batches import MiniBatch
from daskprs.results.outcome import Status, TryRecord
from daskprs.rundir import RunDir, StepDir

__all__ = [
    "CodeFolder",
    "StepContext",
    "check_worker",
    "prestart",
    "run_tries",
    "run_try",
    "stop_slots",
]


@dataclass(frozen=True)
class StepContext:
    """What every try of one step needs on a worker (picklable, small)."""

    token: str
    step: str
    run: RunDir
    code_dir: str
    entry_script: str
    argv: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    output_dir: str = ""
    logging_level: str = "INFO"
    append_row: bool = False
    to_csv: dict[str, Any] = field(default_factory=dict)
    deadlines: Deadlines = field(default_factory=Deadlines)
    memory_limit: int | None = None
    # Processes per emulated node on the embedded cluster (worker i is node i // n); None on
    # an external cluster, where a node is a worker host.
    local_concurrency: int | None = None
    # --resource_monitor_interval (0: off) and --profiling_module
    monitor_interval: float = 0.0
    profiling_module: str | None = None

    @property
    def where(self) -> StepDir:
        """The step's folder in the run directory."""
        return self.run.step(self.step)


# Code folders shipped to this worker, by run token (see CodeFolder).
_CODE_DIRS: dict[str, str] = {}


class CodeFolder(WorkerPlugin):
    """Ships a step's code folder to every worker, present and future, that cannot see it
    (DESIGN decision 7): zipped once here, unpacked into each worker's local directory.

    Parameters
    ----------
    token : str
        The step run's token; the slots of that run use the unpacked copy.
    code_dir : str
        The code folder (``task.code``).
    """

    def __init__(self, token: str, code_dir: str):
        self.token = token
        self.name = f"daskprs-code-{token}"
        self.folder = os.path.basename(os.path.normpath(code_dir))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for root, dirs, files in os.walk(code_dir):
                dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
                for name in files:
                    if not name.endswith(".pyc"):
                        path = os.path.join(root, name)
                        z.write(path, os.path.relpath(path, code_dir))
        self.data = buf.getvalue()

    def setup(self, worker: Any) -> None:
        target = os.path.join(worker.local_directory, self.name, self.folder)
        os.makedirs(target, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(self.data)) as z:
            z.extractall(target)
        _CODE_DIRS[self.token] = target

    def teardown(self, worker: Any) -> None:
        _CODE_DIRS.pop(self.token, None)
        shutil.rmtree(os.path.join(worker.local_directory, self.name), ignore_errors=True)


# Slots of this worker process: in use, by (run token, executor thread), and started ahead
# of the first task (``prestart``), by run token.
_SLOTS: dict[tuple[str, int], Slot] = {}
_SPARE: dict[str, list[Slot]] = {}
_LOCK = threading.Lock()


def _current_worker() -> Any:
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _identity(ctx: StepContext, index: int, worker: Any) -> tuple[str, str]:
    """The node and process names of slot ``index`` of ``worker`` (SPEC section 6)."""
    if worker is None:
        return "node000", f"process{index:03d}"
    name = worker.name
    suffix = f"-{index}" if worker.state.nthreads > 1 else ""
    if ctx.local_concurrency and isinstance(name, int):
        node = f"node{name // ctx.local_concurrency:03d}"
        return node, f"process{name % ctx.local_concurrency:03d}{suffix}"
    host = worker.address.split("://")[-1].rsplit(":", 1)[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name))
    return host, f"process-{safe}{suffix}"


def _new_slot(ctx: StepContext, worker: Any) -> Slot:
    """A slot for run ``ctx.token`` in this process, numbered after those it already has."""
    index = sum(1 for k in _SLOTS if k[0] == ctx.token) + len(_SPARE.get(ctx.token, ()))
    node, process = _identity(ctx, index, worker)
    cache = os.path.join(tempfile.gettempdir(), f"daskprs-cache-{ctx.token}-{process}")
    config = ChildConfig(
        code_dir=_CODE_DIRS.get(ctx.token, ctx.code_dir),
        entry_script=ctx.entry_script,
        argv=ctx.argv,
        env=dict(ctx.env),
        node=node,
        process=process,
        logs=ctx.run.logs,
        output_dir=ctx.output_dir,
        logging_level=ctx.logging_level,
        cache_dir=cache,
        to_csv=dict(ctx.to_csv),
        profiling_module=ctx.profiling_module,
    )
    slot = Slot(config, ctx.memory_limit)
    if ctx.monitor_interval > 0:
        from daskprs.observe.monitor import ResourceMonitor

        path = ctx.run.logs.perf(node, process)
        slot.monitor = ResourceMonitor(
            path, ctx.monitor_interval, lambda s=slot: s.proc.pid if s.proc else None
        )
        slot.monitor.start()
    return slot


def _slot(ctx: StepContext) -> Slot:
    key = (ctx.token, threading.get_ident())
    with _LOCK:
        slot = _SLOTS.get(key)
        if slot is None:
            spare = _SPARE.get(ctx.token)
            slot = spare.pop(0) if spare else _new_slot(ctx, _current_worker())
            _SLOTS[key] = slot
    return slot


def prestart(ctx: StepContext, dask_worker: Any = None) -> int:
    """Start one slot per worker thread now, so that the children start Python and import
    their libraries while the driver is still submitting (``Client.run`` passes
    ``dask_worker``)."""
    worker = dask_worker if dask_worker is not None else _current_worker()
    nthreads = worker.state.nthreads if worker is not None else 1
    with _LOCK:
        for _ in range(nthreads):
            slot = _new_slot(ctx, worker)
            slot.start()
            _SPARE.setdefault(ctx.token, []).append(slot)
    return nthreads


def _claim(ctx: StepContext, mb: int, try_key: str) -> bool:
    """Atomically mark this try as started; False when it already was."""
    path = ctx.where.claim(mb, try_key)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except FileNotFoundError:
        os.makedirs(ctx.where.claims, exist_ok=True)
        return _claim(ctx, mb, try_key)
    os.close(fd)
    return True


def run_try(ctx: StepContext, batch: MiniBatch, try_no: int, try_key: str) -> TryRecord:
    """Run one try of one mini-batch in this worker's slot and return its record.

    Parameters
    ----------
    ctx : StepContext
        The step's settings.
    batch : MiniBatch
        The mini-batch descriptor.
    try_no : int
        The try number (1 for the first try).
    try_key : str
        Unique among all submissions of the run (``s0t1``); names the claim and the part.
    """
    start = time.time()
    if not _claim(ctx, batch.index, try_key):
        return TryRecord(
            mb=batch.index,
            try_no=try_no,
            status=Status.DUPLICATE,
            start_time=start,
            error="this try was already started elsewhere; Dask ran its task a second time",
        )
    slot = _slot(ctx)
    part = None
    if ctx.append_row:
        part = ctx.where.part(batch.index, try_key)
    record = slot.run(RunTask(batch, try_no, part), ctx.deadlines)
    return record.with_(
        node=slot.config.node,
        process=slot.config.process,
        start_time=start,
        elapsed=time.time() - start,
    )


def run_tries(ctx: StepContext, items: list[tuple[MiniBatch, int, str]]) -> list[TryRecord]:
    """Run several tries, one after the other, in this worker's slot (one Dask task for many
    small mini-batches). Each keeps its own claim, deadline and record."""
    return [run_try(ctx, batch, try_no, try_key) for batch, try_no, try_key in items]


def claimed(ctx: StepContext, mb: int, try_key: str) -> bool:
    """Whether try ``try_key`` of ``mb`` was started (its claim exists)."""
    return os.path.exists(ctx.where.claim(mb, try_key))


def stop_slots(token: str, kill: bool = False) -> int:
    """Stop (``shutdown()``, then exit) or kill every slot of run ``token`` in this process."""
    with _LOCK:
        slots = [(k, s) for k, s in _SLOTS.items() if k[0] == token]
        for k, _ in slots:
            del _SLOTS[k]
        slots += [(None, s) for s in _SPARE.pop(token, [])]
    for _, slot in slots:
        if slot.monitor is not None:
            slot.monitor.stop()
        if kill:
            slot.kill()
        else:
            slot.stop()
        # the worker-local copies of remote files are of no use after the step
        shutil.rmtree(slot.config.cache_dir, ignore_errors=True)
    return len(slots)


def kill_running(token: str) -> int:
    """Kill the children of run ``token`` now, without removing the slots (used on abort)."""
    with _LOCK:
        slots = [s for k, s in _SLOTS.items() if k[0] == token]
    for slot in slots:
        if slot.proc is not None and slot.proc.poll() is None:
            try:
                slot.proc.kill()
            except ProcessLookupError:
                pass
    return len(slots)


def check_worker(paths: tuple[str, ...]) -> dict[str, Any]:
    """Run on each worker before a job on an external cluster: version and visible paths."""
    import daskprs

    return {
        "version": daskprs.__version__,
        "missing": [p for p in paths if "://" not in p and not os.path.exists(p)],
    }
