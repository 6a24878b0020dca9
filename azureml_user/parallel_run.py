"""``EntryScript``, as Azure ML's parallel run step offers it to entry scripts.

``EntryScript()`` is a per-process singleton with ``logger``, ``log_dir``, ``output_dir``,
``working_dir`` and ``agent_name``. daskprs configures it in each process that runs an entry
script; outside daskprs (a script run by hand) it falls back to the current directory and a
console logger.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

__all__ = ["EntryScript"]

_CONFIG: dict[str, str] = {}

# Bytes kept in the log file, unless DASKPRS_USER_LOG_LIMIT (set to a number of bytes by
# daskprs in the process's environment; 0: no limit) says otherwise. The default of
# daskprs.settings.EnvSettings.user_log_limit.
_DEFAULT_LOG_LIMIT = 64 * 2**20


class _CappedFileHandler(logging.FileHandler):
    """A log file that stops growing at ``limit`` bytes, with one note where it stopped."""

    def __init__(self, path: str, limit: int | None):
        super().__init__(path, encoding="utf-8")
        self.limit = limit
        self._cut = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.limit is None:
            super().emit(record)
            return
        if self._cut:
            return
        try:
            stream = self.stream
            if stream is None:  # closed (close() drops the stream): handled as any failure
                raise ValueError("the log file is closed")
            size = os.fstat(stream.fileno()).st_size
            text = self.format(record)
        except Exception:  # as logging.Handler does: never fail the caller
            self.handleError(record)
            return
        if size + len(text.encode("utf-8")) + 1 <= self.limit:
            super().emit(record)
            return
        self._cut = True
        stream.write(
            f"[daskprs: this log file reached its limit of {self.limit} bytes; the rest of "
            "this process's log is not kept (DASKPRS_USER_LOG_LIMIT changes the limit)]\n"
        )
        self.flush()


def _log_limit(env: Mapping[str, str] | None = None) -> int | None:
    """Bytes kept in the log file (None: no limit). daskprs sets the variable to a number of
    bytes; a size by hand (``200MB``) is read too, and anything else gives the default: a bad
    value never fails the user's script."""
    value = (os.environ if env is None else env).get("DASKPRS_USER_LOG_LIMIT", "")
    if not value.strip():
        return _DEFAULT_LOG_LIMIT
    from daskprs.settings import parse_size  # standard library only: no dask imported

    try:
        limit = parse_size(value)
    except ValueError:
        limit = _DEFAULT_LOG_LIMIT
    return limit or None


def _configure(
    *, logs_dir: str, output_dir: str, node: str, process: str, logging_level: str = "INFO"
) -> None:
    """Called by daskprs in each child process before the entry script is imported."""
    _CONFIG.update(
        logs_dir=logs_dir,
        output_dir=output_dir,
        node=node,
        process=process,
        logging_level=logging_level,
    )
    EntryScript._instance = None


class EntryScript:
    """Per-process singleton giving an entry script its logger and folders.

    Attributes
    ----------
    logger : logging.Logger
        Writes to ``logs/user/entry_script_log/<node>/<process>.log.txt`` in the run
        directory.
    log_dir : str
        The folder of that log file.
    output_dir : str
        The folder of the step's first output (also ``AZUREML_BI_OUTPUT_PATH``).
    working_dir : str
        The run directory (the folder of ``logs/``), as Azure's is the job's working folder;
        each process itself works in a temporary folder of its own.
    agent_name : str
        ``processNNN``, naming this process on its node, as on Azure.
    """

    _instance: EntryScript | None = None

    def __new__(cls) -> EntryScript:
        if cls._instance is None:
            self = super().__new__(cls)
            self._setup()
            cls._instance = self
        return cls._instance

    def _setup(self) -> None:
        node = _CONFIG.get("node", "node000")
        process = _CONFIG.get("process", "process000")
        logs_dir = _CONFIG.get("logs_dir") or os.path.join(os.getcwd(), "logs")
        self.agent_name = process
        self.log_dir = os.path.join(logs_dir, "user", "entry_script_log", node)
        self.output_dir = _CONFIG.get("output_dir") or os.getcwd()
        self.working_dir = os.path.dirname(os.path.abspath(logs_dir))
        logger = logging.getLogger(f"azureml_user.entry_script.{node}.{process}")
        logger.setLevel(_CONFIG.get("logging_level", "INFO"))
        logger.propagate = False
        if not logger.handlers:
            if _CONFIG.get("logs_dir"):
                os.makedirs(self.log_dir, exist_ok=True)
                handler: logging.Handler = _CappedFileHandler(
                    os.path.join(self.log_dir, f"{process}.log.txt"), _log_limit()
                )
            else:
                handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            logger.addHandler(handler)
        self.logger = logger
