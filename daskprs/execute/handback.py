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
import uuid

from daskprs.results.outcome import TryRecord
from daskprs.rundir import StepDir

__all__ = ["leave_marker", "leave_record", "take_over"]

# The wait when the caller passes none: EnvSettings.handback_seconds's default.
_DEFAULT_WAIT = 5.0


def _base(where: StepDir, mb: int, try_key: str) -> str:
    folder = os.path.join(where.root, "handback")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, os.path.basename(where.claim(mb, try_key)))


def _write(path: str, text: str) -> None:
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def leave_marker(where: StepDir, mb: int, try_key: str) -> None:
    """Hand back a running try: the rerun of its task runs it again."""
    _write(_base(where, mb, try_key) + ".back", f"{os.getpid()}\n")


def leave_record(where: StepDir, mb: int, try_key: str, record: TryRecord) -> None:
    """Leave the record of a try that finished in a task whose result will be lost."""
    _write(_base(where, mb, try_key) + ".rec", json.dumps(record.to_dict()))


def take_over(where: StepDir, mb: int, try_key: str, wait: float | None = None) -> TryRecord | bool:
    """What the rerun of a claimed try does: the record left for it, True to run the try
    (handed back; the marker is taken atomically, so by one rerun only), or False (none
    came within ``wait`` seconds: the first run was lost with its worker).

    ``wait`` is the driver's ``EnvSettings.handback_seconds`` as the step context carries it;
    None: 5 s, that setting's default."""
    if wait is None:
        wait = _DEFAULT_WAIT
    base = _base(where, mb, try_key)
    deadline = time.monotonic() + wait
    while True:
        taken = f"{base}.taken-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(base + ".rec", taken)
        except FileNotFoundError:
            pass
        else:
            with open(taken, encoding="utf-8") as f:
                return TryRecord.from_dict(json.load(f))
        try:
            os.rename(base + ".back", taken)
            return True
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
