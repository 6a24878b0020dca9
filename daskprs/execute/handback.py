"""Tries handed back by a worker that closed under them (retired, scaled down, stopped).

Dask reruns elsewhere the tasks of a worker that leaves; the rerun finds the try's claim
taken (:func:`daskprs.execute.worker.run_try`). A worker that closes in order leaves beside
the claim either a hand-back marker (the try was running: the rerun takes the marker and runs
the try again, counted once) or the try's record (it finished inside a packed task whose
result was lost: the rerun returns that record). A worker that died leaves neither, and the
rerun is counted as a death after ``DASKPRS_HANDBACK_SECONDS`` (default 5) of waiting for
them: the scheduler reschedules the tasks of a retired worker as it tells the worker to close,
so the rerun may start before the closing worker has left its markers. The driver reads that
variable (:attr:`daskprs.settings.EnvSettings.handback_seconds`) and passes it through the
step context to :func:`take_over`; nothing here reads the environment.
"""

from __future__ import annotations

import json
import os
import time

from daskprs.execute.store import StepStore, claim_name
from daskprs.results.outcome import TryRecord

__all__ = ["leave_marker", "leave_record", "take_over"]

# The wait when the caller passes none: EnvSettings.handback_seconds's default.
_DEFAULT_WAIT = 5.0


def _base(mb: int, try_key: str) -> str:
    return "handback/" + claim_name(mb, try_key).rsplit("/", 1)[-1]


def leave_marker(store: StepStore, mb: int, try_key: str) -> None:
    """Hand back a running try: the rerun of its task runs it again."""
    store.put(_base(mb, try_key) + ".back", f"{os.getpid()}\n".encode())


def leave_record(store: StepStore, mb: int, try_key: str, record: TryRecord) -> None:
    """Leave the record of a try that finished in a task whose result will be lost."""
    store.put(_base(mb, try_key) + ".rec", json.dumps(record.to_dict()).encode())


def take_over(
    store: StepStore, mb: int, try_key: str, wait: float | None = None
) -> TryRecord | bool:
    """What the rerun of a claimed try does: the record left for it, True to run the try
    (handed back; the marker is taken atomically, so by one rerun only), or False (none
    came within ``wait`` seconds: the first run was lost with its worker).

    ``wait`` is the driver's ``EnvSettings.handback_seconds`` as the step context carries it;
    None: 5 s, that setting's default."""
    if wait is None:
        wait = _DEFAULT_WAIT
    base = _base(mb, try_key)
    deadline = time.monotonic() + wait
    while True:
        data = store.take(base + ".rec")
        if data is not None:
            return TryRecord.from_dict(json.loads(data))
        if store.take(base + ".back") is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05 if not store.staged else 0.25)
