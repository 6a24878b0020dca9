"""One long-lived process (a notebook) calling the API many times: each call leaves the
process as it found it, whether the job succeeded, failed or was interrupted."""

from __future__ import annotations

import gc
import logging
import sys

import pytest
from conftest import make_files, write_job

import daskprs

pytestmark = pytest.mark.slow

SCRIPT = """
import os

def run(mini_batch):
    return [os.path.basename(p) for p in mini_batch]
"""


def _servers() -> set:
    """Dask's schedulers and workers alive in this process."""
    from distributed import Scheduler, Worker

    gc.collect()
    return {*Scheduler._instances, *Worker._instances}


def test_embedded_clusters_leave_nothing_in_the_process(tmp_path):
    """Each embedded cluster's scheduler and workers are freed after the call, with the log
    handler Dask gives each of them (every Dask log line went through all of them, and each
    kept its last 10,000 lines), and their scratch folders leave ``sys.path`` (two stale
    entries a call before, searched by every import)."""
    make_files(tmp_path / "data", 4)
    job = write_job(tmp_path, SCRIPT, input_yaml="type: uri_folder\npath: ./data")
    daskprs.run_job(job, run_dir=tmp_path / "run0", echo=lambda line: None)  # imports Dask
    path, servers = list(sys.path), _servers()
    handlers = {
        name: list(logging.getLogger(name).handlers)
        for name in ("distributed.scheduler", "distributed.worker")
    }
    for n in (1, 2):
        result = daskprs.run_job(
            job, run_dir=tmp_path / f"run{n}", echo=lambda line: None, force_rerun=True
        )
        assert result.ok
    assert sys.path == path
    assert _servers() <= servers
    for name, before in handlers.items():
        assert logging.getLogger(name).handlers == before
