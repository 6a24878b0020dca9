"""Shipping a step's code folder to workers that cannot see it (docs/design.md#several-hosts)."""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

__all__ = ["CodeFolder", "code_dir_for"]


# Code folders shipped to this worker, by run token (see CodeFolder).
_CODE_DIRS: dict[str, str] = {}


class CodeFolder(WorkerPlugin):
    """Ships a step's code folder to every worker, present and future, that cannot see it
    (docs/design.md#several-hosts): zipped once here, unpacked into each worker's local directory.

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


def code_dir_for(token: str, code_dir: str) -> str:
    """The code folder of step run ``token`` on this worker: a shipped copy when there is
    one, else ``code_dir`` itself."""
    return _CODE_DIRS.get(token, code_dir)
