"""Logs that come home from workers that cannot see the run directory (``--staging``).

On such a worker the entry-script processes of a step write their logs (stdout, stderr, the
error log, ``EntryScript().logger``'s file, the resource monitor's samples, profiles) into a
scratch folder of the worker's, laid out as the run directory's ``logs/``. :class:`StagedLogs`
uploads each file that changed every few seconds, and once more when the step's slots have
stopped, to ``logs/<step run token>/<pool id>/<path under logs/>`` in the staging store.
:func:`pull_logs` (the driver, when a session ends) appends what is new in each staged file
to the same path under the run directory's ``logs/``, remembering how far it read in
``staged-logs.json`` beside the ledger, so a resumed run picks up what a killed driver left
and nothing is appended twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from typing import TYPE_CHECKING

from daskprs.execute.store import StepStore

if TYPE_CHECKING:
    from daskprs.execute.context import StepContext

__all__ = ["StagedLogs", "pull_logs"]

log = logging.getLogger(__name__)

# Seconds between two uploads of the logs that changed.
UPLOAD_EVERY = 5.0


class StagedLogs:
    """Uploads a worker's scratch ``logs/`` folder to the staging store as it grows.

    Parameters
    ----------
    root : str
        The scratch folder's ``logs/``.
    ctx : StepContext
        The step run (its token and staging store).
    """

    def __init__(self, root: str, ctx: StepContext):
        self.root = root
        self.store = ctx.store
        self.prefix = f"logs/{ctx.token}/{uuid.uuid4().hex[:8]}"
        self._sent: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daskprs-logs-up", daemon=True)

    def start(self) -> StagedLogs:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(UPLOAD_EVERY):
            self.upload()

    def upload(self) -> int:
        """Upload every file changed since the last upload; return how many."""
        sent = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                rel = os.path.relpath(path, self.root)
                stamp = (st.st_size, st.st_mtime_ns)
                if self._sent.get(rel) == stamp:
                    continue
                try:
                    self.store.upload(path, f"{self.prefix}/{rel}")
                except Exception as err:  # the next round tries again
                    log.warning("cannot upload the log %s to the staging store: %s", path, err)
                    continue
                self._sent[rel] = stamp
                sent += 1
        return sent

    def stop(self) -> None:
        """Stop the thread and upload what changed since its last round."""
        self._stop.set()
        self._thread.join()
        self.upload()


def pull_logs(store: StepStore, logs_root: str, state_path: str) -> int:
    """Append what is new in the staged logs of ``store`` to the run directory's ``logs/``
    (``logs_root``); return the bytes appended. ``state_path`` remembers how far each staged
    file was read."""
    try:
        with open(state_path, encoding="utf-8") as f:
            pulled: dict[str, int] = json.load(f)
    except (OSError, ValueError):
        pulled = {}
    appended = 0
    for key, size in sorted(store.files("logs").items()):
        parts = key.split("/", 2)
        if len(parts) != 3 or size <= pulled.get(key, 0):
            continue
        dest = os.path.join(logs_root, parts[2])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        offset = pulled.get(key, 0)
        with open(dest, "ab") as out:
            copied = store.read_from(f"logs/{key}", offset, out)
        appended += copied
        pulled[key] = offset + copied
        tmp = f"{state_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(pulled, f)
        os.replace(tmp, state_path)
    return appended
