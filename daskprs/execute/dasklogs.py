"""The embedded cluster's worker processes: Dask's log messages to the run's log file, and a
Ctrl-C left to the driver.

A worker process writes Dask's messages (``distributed.*``) to the stderr it shares with the
driver: at the end of a run, a heartbeat cut by the worker's own closing prints a
``CommClosedError`` traceback under a job that succeeded. :class:`DaskLogsToFile`, given to
every worker of the embedded cluster when it starts (``LocalCluster(plugins=...)``), sends
them to the driver's log file (``logs/sys/daskprs.log``) instead, as
:func:`daskprs.observe.logs.driver_logging` does with the driver's own Dask loggers.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from daskprs.observe.logs import RedactingFormatter

__all__ = ["DaskLogsToFile", "IgnoreInterrupts"]


class DaskLogsToFile(WorkerPlugin):
    """Send the ``distributed`` logger of a worker process to ``path`` (WARNING and up),
    not to the console.

    Parameters
    ----------
    path : str
        The run's log file, which the driver writes too (each record is appended whole).
    """

    name = "daskprs-dask-logs"

    def __init__(self, path: str):
        self.path = path

    def setup(self, worker: Any = None) -> None:
        dask_logger = logging.getLogger("distributed")
        if any(isinstance(h, _WorkerLogFile) for h in dask_logger.handlers):
            return  # set up already in this process
        for handler in list(dask_logger.handlers):
            if type(handler) is logging.StreamHandler:  # Dask's own, to stderr
                dask_logger.removeHandler(handler)
        where = str(getattr(worker, "name", "?")).replace("%", "%%")
        to_file = _WorkerLogFile(self.path, encoding="utf-8", delay=True)
        to_file.setLevel(logging.WARNING)
        to_file.setFormatter(
            RedactingFormatter(f"%(asctime)s %(levelname)s %(name)s [worker {where}]: %(message)s")
        )
        dask_logger.addHandler(to_file)

    # No teardown: Dask's closing messages (the noise this keeps off the console) come after
    # the worker has torn its plugins down, and the process ends with the worker.


class IgnoreInterrupts(WorkerPlugin):
    """Make a worker process ignore SIGINT. A Ctrl-C in a terminal reaches every process of
    its foreground group, the embedded cluster's worker processes included, where each would
    print a ``KeyboardInterrupt`` traceback; the driver answers it alone (it cancels, kills
    the running entry scripts, keeps what is committed and closes the cluster). The
    entry-script processes run in sessions of their own and never get it."""

    name = "daskprs-ignore-interrupts"

    def setup(self, worker: Any = None) -> None:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():  # where a handler may be set
            signal.signal(signal.SIGINT, signal.SIG_IGN)


class _WorkerLogFile(logging.FileHandler):
    """The handler :class:`DaskLogsToFile` adds (found again if set up twice)."""
