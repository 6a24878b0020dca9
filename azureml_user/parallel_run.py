"""``EntryScript``, as Azure ML's parallel run step offers it to entry scripts.

``EntryScript()`` is a per-process singleton with ``logger``, ``log_dir``, ``output_dir`` and
``agent_name``. daskprs configures it in each process that runs an entry script; outside
daskprs (a script run by hand) it falls back to the current directory and a console logger.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["EntryScript"]

_CONFIG: dict[str, str] = {}


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
        The folder of the step's first output.
    agent_name : str
        ``<node>.<process>``, naming this process.
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
        self.agent_name = f"{node}.{process}"
        self.log_dir = os.path.join(logs_dir, "user", "entry_script_log", node)
        self.output_dir = _CONFIG.get("output_dir") or os.getcwd()
        logger = logging.getLogger(f"azureml_user.entry_script.{self.agent_name}")
        logger.setLevel(_CONFIG.get("logging_level", "INFO"))
        logger.propagate = False
        if not logger.handlers:
            if _CONFIG.get("logs_dir"):
                os.makedirs(self.log_dir, exist_ok=True)
                handler: logging.Handler = logging.FileHandler(
                    os.path.join(self.log_dir, f"{process}.log.txt"), encoding="utf-8"
                )
            else:
                handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            logger.addHandler(handler)
        self.logger = logger
