"""Getting a Dask client: the embedded ``LocalCluster``, or a scheduler's address.

The embedded cluster has one single-threaded worker process per slot and sets
``distributed.scheduler.allowed-failures`` to 0, so a task whose worker died is reported to
the supervisor (which counts the try) instead of being run again silently (DESIGN
decision 2).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from daskprs.errors import UserInputError

__all__ = ["ClusterHandle", "open_cluster"]


@dataclass
class ClusterHandle:
    """A connected client and what the runner needs to know about the cluster."""

    client: Any
    n_workers: int
    local: bool
    start_seconds: float = 0.0


def _worker_slots(client: Any) -> int:
    info = client.scheduler_info(n_workers=-1)
    return sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())


@contextlib.contextmanager
def open_cluster(
    *,
    scheduler: str | None = None,
    client: Any = None,
    n_workers: int = 1,
    connect_timeout: float | None = None,
    security: Any = None,
) -> Iterator[ClusterHandle]:
    """Yield a :class:`ClusterHandle`; close what was started here on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``).
    client : distributed.Client, optional
        A client the caller owns (a notebook's); used as it is and not closed.
    n_workers : int
        Worker processes of the embedded cluster (when neither of the above is given).
    connect_timeout : float, optional
        Seconds to wait for ``scheduler`` (default: ``DASKPRS_CONNECT_TIMEOUT`` or 10).
    security : distributed.Security, optional
        TLS certificates for a ``tls://`` scheduler (:func:`daskprs.execute.tls.client_security`).
    """
    import time

    import dask
    from distributed import Client

    started = time.monotonic()
    if connect_timeout is None:
        connect_timeout = float(os.environ.get("DASKPRS_CONNECT_TIMEOUT", "10"))
    if client is not None:
        yield ClusterHandle(client, max(1, _worker_slots(client)), local=False)
        return
    if scheduler is not None:
        try:
            remote = Client(
                scheduler, timeout=f"{connect_timeout}s", set_as_default=False, security=security
            )
        except (OSError, TimeoutError, ValueError, TypeError) as err:
            if scheduler.startswith("tls://"):
                raise UserInputError(
                    f"cannot connect to the Dask scheduler at {scheduler} over TLS "
                    f"({type(err).__name__}: {err}). Check that --tls-ca-file is the CA that "
                    "signed the scheduler's certificate, that --tls-cert/--tls-key are a "
                    "certificate and key that CA signed, and that the scheduler runs there."
                ) from err
            raise UserInputError(
                f"cannot reach the Dask scheduler at {scheduler} ({err}). Check the address "
                "(tcp://host:8786) and that `dask scheduler` runs there, or leave out "
                "--scheduler to use the embedded local cluster."
            ) from err
        try:
            slots = _worker_slots(remote)
            if slots == 0:
                remote.wait_for_workers(1, timeout=connect_timeout)
                slots = _worker_slots(remote)
        except (OSError, TimeoutError) as err:
            remote.close()
            raise UserInputError(
                f"the Dask scheduler at {scheduler} has no workers. Start some with "
                f"`dask worker {scheduler}`."
            ) from err
        try:
            yield ClusterHandle(
                remote, max(1, slots), local=False, start_seconds=time.monotonic() - started
            )
        finally:
            remote.close()
        return
    from distributed import LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=os.environ.get("DASKPRS_DASHBOARD", ":0"),
            memory_limit=0,
            silence_logs=logging.ERROR,
        )
        local = Client(cluster, set_as_default=False)
    try:
        yield ClusterHandle(local, n_workers, local=True, start_seconds=time.monotonic() - started)
    finally:
        local.close()
        cluster.close()
