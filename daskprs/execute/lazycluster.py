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
    """The Dask dashboard's address, when the scheduler serves one."""
    try:
        return client.dashboard_link if client.scheduler_info().get("services") else None
    except Exception:  # no dashboard (bokeh missing, --no-dashboard): nothing to print
        return None
