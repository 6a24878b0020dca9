"""A cluster started in the background and taken when a step first needs it.

The embedded cluster takes a second or more to start; a step spends that time planning and
checking its entry script. :class:`LazyCluster` starts it in a thread (:meth:`prestart`),
hands it over on :meth:`get` (starting it there if nothing did before), and closes it, used
or not, on :meth:`close`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from daskprs.execute.cluster import ClusterHandle

__all__ = ["LazyCluster"]

log = logging.getLogger(__name__)


class LazyCluster:
    """Opens a cluster once, maybe in advance, and closes it at the end.

    Parameters
    ----------
    opener : callable
        Returns the context manager that opens the cluster
        (:func:`daskprs.execute.cluster.open_cluster` with its arguments).
    echo : callable
        Where the cluster's size and dashboard address are said when it is first taken.
    given : bool
        The caller gave a client: there is nothing to start in advance.
    connects : bool
        The cluster exists already (a scheduler's address): it is connected to, not started.
    """

    def __init__(
        self,
        opener: Callable[[], AbstractContextManager[ClusterHandle]],
        echo: Callable[[str], None],
        given: bool = False,
        connects: bool = False,
    ):
        self._opener, self._echo, self._given = opener, echo, given
        self._connects = connects
        self._handle: ClusterHandle | None = None
        self._starting: concurrent.futures.Future[ClusterHandle] | None = None
        self._opening: AbstractContextManager[ClusterHandle] | None = None
        self._stack = contextlib.ExitStack()

    def prestart(self) -> None:
        """Start opening the cluster in a thread (nothing for a given client, or when it is
        open or opening already)."""
        if self._given or self._handle is not None or self._starting is not None:
            return
        self._opening = self._opener()
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="daskprs-cluster")
        self._starting = pool.submit(self._opening.__enter__)
        pool.shutdown(wait=False)

    def get(self) -> ClusterHandle:
        """The open cluster (waiting for a start begun by :meth:`prestart`)."""
        if self._handle is not None:
            return self._handle
        if self._starting is not None:
            # a failed start raises here, in the caller's thread; so does a Ctrl-C while it
            # waits, the start still owned by this object, for close() to cancel and close
            handle = self._starting.result()
            opening = self._opening
            self._starting = self._opening = None
            assert opening is not None
            self._stack.push(opening.__exit__)
        else:
            handle = self._stack.enter_context(self._opener())
        self._handle = handle
        self._echo(_started_line(handle, self._given or self._connects))
        link = _dashboard_link(handle.client) if handle.dashboard else None
        if link:
            self._echo(f"Dask dashboard: {link}")
        return handle

    def close(self) -> None:
        """Close what was opened here, including a cluster started in advance and never
        taken."""
        if self._starting is not None:
            starting, opening = self._starting, self._opening
            self._starting = self._opening = None
            # a start still waiting for its first worker (batch jobs queued, pods pending)
            # gives up now instead of at its timeout, and closes its cluster
            cancel = getattr(opening, "cancel", None)
            if starting.running() and cancel is not None:
                cancel()
            try:
                starting.result()
            except BaseException as err:  # it never started: nothing to close
                log.debug("the cluster started in advance failed: %s", err)
            else:
                assert opening is not None
                opening.__exit__(None, None, None)
        self._stack.close()

    def __enter__(self) -> LazyCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _started_line(handle: ClusterHandle, connected: bool) -> str:
    """What the console says when the cluster is first taken."""
    if handle.local:
        where = "embedded local cluster"
    else:
        address = getattr(getattr(handle.client, "scheduler", None), "address", None)
        where = f"cluster at {address}" if address else "cluster"
    how = "connected" if connected else "started"
    return f"{where}: {handle.n_workers} worker slots, {how} in {handle.start_seconds:.1f} s"


def _dashboard_link(client: Any) -> str | None:
    """The Dask dashboard's address, when the scheduler serves one.

    A scheduler always has an HTTP server (``services["dashboard"]`` in its info, the port
    of ``client.dashboard_link``), but serves the dashboard there only when it was started
    with one: ``dask scheduler --no-dashboard``, a ``computes:`` cluster with
    ``dashboard_address: null`` or a scheduler without bokeh serve /health and metrics, and
    the link would be a 404. The scheduler is asked whether the dashboard's bokeh
    application is among its HTTP server's, as distributed's own page of the dashboard's
    plots finds it (``distributed.http.scheduler.info.IndividualPlots``).
    """
    try:
        if not client.scheduler_info().get("services", {}).get("dashboard"):
            return None
        link = client.dashboard_link
    except Exception:  # no HTTP server, or no scheduler to ask: nothing to print
        return None

    # defined here, not at the module's level, to be sent by value: a scheduler of another
    # cluster may have no daskprs to import it from
    def serves_dashboard(dask_scheduler: Any) -> bool:
        try:
            from bokeh.server.tornado import BokehTornado
        except ImportError:  # the scheduler's missing-bokeh page, no dashboard
            return False
        apps = getattr(getattr(dask_scheduler, "http_application", None), "applications", ())
        return any(isinstance(app, BokehTornado) for app in apps)

    try:
        served = client.run_on_scheduler(serves_dashboard)
    except Exception:  # a scheduler that runs no code sent to it: the link, as Dask gives it
        served = True
    return link if served and link else None
