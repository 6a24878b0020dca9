"""A step's entry-script processes, started before the embedded cluster's workers exist.

The embedded cluster's workers are threads of the driver (docs/design.md#the-embedded-cluster),
so the processes of their slots can be started by the driver itself as soon as a new step is
planned: a process loads the entry script and runs ``init()`` as it starts, and importing Dask
and starting the cluster (half a second) then overlap that ``init()`` instead of coming
before it. :class:`WarmSlots` starts one slot per worker, named by the place the worker will
have; the worker's slot pool takes it when it sets up (:func:`take`), and those no worker took
are stopped when the step ends. Nothing here imports Dask.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from typing import Any

from daskprs.execute.context import StepContext
from daskprs.execute.devices import device_for, visible_gpus
from daskprs.execute.slot import Slot

__all__ = ["WarmSlots", "end_slots", "local_identity", "new_slot", "take"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
# (step run token, worker name) -> a started slot no worker has taken yet
_waiting: dict[tuple[str, Any], Slot] = {}


def local_identity(ctx: StepContext, name: int, index: int, nthreads: int) -> tuple[str, str]:
    """The node and process names of slot ``index`` of the embedded cluster's worker ``name``
    (``ctx.local_concurrency`` workers a node; docs/run-directory.md#node-and-process-names)."""
    per_node = ctx.local_concurrency or 1
    suffix = f"-{index}" if nthreads > 1 else ""
    return f"node{name // per_node:03d}", f"process{name % per_node:03d}{suffix}"


def new_slot(ctx: StepContext, node: str, process: str, code_dir: str, device: str | None) -> Slot:
    """A slot (not started) for one entry-script process of the step, watched by the
    resource monitor when the step asks for it."""
    slot = Slot(ctx.child_for(node, process, code_dir=code_dir, device=device), ctx.memory_limit)
    if ctx.monitor_interval > 0:
        slot.watch_resources(ctx.run.logs.perf(node, process), ctx.monitor_interval)
    return slot


class WarmSlots:
    """One started slot for each of the embedded cluster's ``workers`` single-threaded workers.

    Parameters
    ----------
    ctx : StepContext
        The step run's context, the one its slot pool will be given (same token).
    workers : int
        The embedded cluster's workers (named ``0`` to ``workers - 1`` by Dask).
    """

    def __init__(self, ctx: StepContext, workers: int):
        self.ctx, self.token = ctx, ctx.token
        # the entry scripts' logs as they were (see close(forget=True))
        self._user_logs = os.path.join(ctx.run.logs.root, "user")
        self._logs_before = _tree(self._user_logs)
        devices = visible_gpus()
        per_node = ctx.local_concurrency or 1
        try:
            for name in range(workers):
                node, process = local_identity(ctx, name, 0, 1)
                slot = new_slot(
                    ctx, node, process, ctx.child.code_dir, device_for(name % per_node, devices)
                )
                with _lock:
                    _waiting[(self.token, name)] = slot
                slot.start()
        except BaseException:  # no process may outlive a start that failed part-way
            self.close()
            raise

    def close(self, kill: bool = False, forget: bool = False) -> None:
        """Stop the slots no worker took (``shutdown()``, then exit; or kill them), all at
        once. ``forget``: the step was refused before any try (its input could not be
        planned, its script imports what is not there): the processes' logs lose what they
        wrote (``init()``'s output), so that the run stays one that never began."""
        with _lock:
            mine = [key for key in _waiting if key[0] == self.token]
            left = [_waiting.pop(key) for key in mine]
        end_slots(left, kill)
        if forget:
            _restore(self._user_logs, self._logs_before)


def _tree(folder: str) -> tuple[dict[str, int], set[str]]:
    """The size of every file below ``folder``, and its folders (none: it does not exist)."""
    sizes, folders = {}, set()
    for root, _, names in os.walk(folder):
        folders.add(root)
        for name in names:
            path = os.path.join(root, name)
            try:
                sizes[path] = os.path.getsize(path)
            except OSError:  # gone meanwhile
                continue
    return sizes, folders


def _restore(folder: str, before: tuple[dict[str, int], set[str]]) -> None:
    """Take ``folder`` back to what ``before`` saw: files cut back to their sizes, the files
    and folders made since removed."""
    sizes, folders = before
    now_sizes, now_folders = _tree(folder)
    try:
        for path, size in now_sizes.items():
            if path not in sizes:
                os.unlink(path)
            elif size > sizes[path]:
                os.truncate(path, sizes[path])
        for made in sorted(now_folders - folders, key=len, reverse=True):  # deepest first
            os.rmdir(made)
    except OSError as err:  # what cannot be taken back stays: the run then began
        log.warning("cannot take back the entry scripts' logs in %s: %s", folder, err)


def end_slots(slots: list[Slot], kill: bool = False) -> None:
    """Stop the slots' processes (``shutdown()``, then exit; or kill them), all at once, and
    drop their caches."""
    threads = [
        threading.Thread(target=_end_slot, args=(slot, kill), name="daskprs-stop-slot")
        for slot in slots
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _end_slot(slot: Slot, kill: bool) -> None:
    slot.close(kill=kill)
    shutil.rmtree(slot.config.cache_dir, ignore_errors=True)


def take(token: str, name: Any) -> Slot | None:
    """The started slot waiting for worker ``name`` of step run ``token``, if any (once)."""
    with _lock:
        return _waiting.pop((token, name), None)
