"""Getting a Dask client: the embedded ``LocalCluster``, a scheduler's address, or a cluster
that ``daskprs.yaml`` names by its class (:class:`~daskprs.job.model.ClusterSpec`).

The embedded cluster runs its scheduler and one single-threaded worker per slot in this
process (each slot's entry script runs in a process of its own,
docs/design.md#the-embedded-cluster); it opens no port but the scheduler's HTTP endpoint, on
127.0.0.1 (its dashboard too, unless ``DASKPRS_DASHBOARD`` names a host:
:func:`dashboard_address`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from daskprs.errors import Interrupted, SettingsError, UserInputError
from daskprs.job.model import ClusterSpec
from daskprs.settings import EnvSettings, dashboard_problem

__all__ = ["ClusterHandle", "dashboard_address", "import_dask", "open_cluster"]


@dataclass
class ClusterHandle:
    """A connected client and what the runner needs to know about the cluster."""

    client: Any
    n_workers: int
    local: bool
    start_seconds: float = 0.0
    # False: the embedded cluster was started without a dashboard (DASKPRS_DASHBOARD=off)
    dashboard: bool = True


def dashboard_address(value: str) -> str | None:
    """``DASKPRS_DASHBOARD`` as the embedded cluster binds it: ``off`` (the default) serves
    none; an address without a host (``:0``, ``8787``) is on the loopback only
    (``127.0.0.1:0``), as the link printed says; one with a host (``0.0.0.0:8787``, an
    interface's address) is served there.

    Parameters
    ----------
    value : str
        A checked ``DASKPRS_DASHBOARD`` value (:class:`~daskprs.settings.EnvSettings`): an
        address or a comma list of them.

    Returns
    -------
    str or None
        The address list for ``LocalCluster(dashboard_address=...)``; None: no dashboard.
    """
    if value == "off":
        return None
    items = []
    for item in value.split(","):
        host, _, port = item.rpartition(":")  # a bare port: no host
        items.append(f"{host or '127.0.0.1'}:{port}")
    return ",".join(items)


_importing = threading.Lock()


def import_dask() -> None:
    """Import Dask's ``distributed`` whole, in one thread at a time.

    The driver imports it late, in the thread that starts the cluster and, at the same time,
    in the thread that runs the step: two threads importing the package at once can meet one
    of its modules half made (its modules import each other), an ``ImportError``. Each
    waits here until the other is done.
    """
    with _importing:
        import distributed  # noqa: F401


def _worker_slots(client: Any) -> int:
    info = client.scheduler_info(n_workers=-1)
    return sum(w.get("nthreads", 1) for w in info.get("workers", {}).values())


def open_cluster(
    *,
    scheduler: str | None = None,
    client: Any = None,
    n_workers: int = 1,
    connect_timeout: float | None = None,
    security: Any = None,
    cluster_spec: ClusterSpec | None = None,
    settings: EnvSettings | None = None,
) -> AbstractContextManager[ClusterHandle]:
    """A context manager that yields a :class:`ClusterHandle` and closes what was started
    there on exit.

    A ``cluster_spec``'s class is imported here, on the caller's thread, before anything
    starts (:func:`_import_keeping_signals`): :class:`~daskprs.execute.lazycluster.LazyCluster`
    calls this on the main thread and enters the result in a background thread, where a
    module that sets signal handlers as it is imported could not be imported. A class that
    cannot be imported is reported when the context is entered.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``).
    client : distributed.Client, optional
        A client the caller owns (a notebook's); used as it is and not closed.
    n_workers : int
        Worker processes of the embedded cluster (when neither of the above is given).
    connect_timeout : float, optional
        Seconds to wait for ``scheduler`` (default: ``settings.connect_timeout``).
    security : distributed.Security, optional
        TLS certificates for a ``tls://`` scheduler (:func:`daskprs.execute.tls.client_security`).
    cluster_spec : ClusterSpec, optional
        A cluster to start (``daskprs.yaml`` ``computes:``), used when neither ``scheduler``
        nor ``client`` is given; closed on exit.
    settings : EnvSettings, optional
        The ``DASKPRS_*`` variables (default: :meth:`EnvSettings.from_env`): the connect and
        cluster timeouts, the embedded cluster's dashboard address.
    """
    if cluster_spec is not None and client is None and scheduler is None:
        with contextlib.suppress(UserInputError):  # raised again on entering
            _cluster_class(cluster_spec)
    cancelled = threading.Event()
    opening = _opened_cluster(
        scheduler=scheduler,
        client=client,
        n_workers=n_workers,
        connect_timeout=connect_timeout,
        security=security,
        cluster_spec=cluster_spec,
        settings=settings,
        cancelled=cancelled,
    )
    return _Opening(opening, cancelled)


class _Opening(AbstractContextManager[ClusterHandle]):
    """What :func:`open_cluster` returns: the context manager, and :meth:`cancel`, which
    makes a start that waits for its first worker (in another thread) give up and close the
    cluster (:class:`~daskprs.execute.lazycluster.LazyCluster` calls it when the run ends
    first)."""

    def __init__(self, opening: AbstractContextManager[ClusterHandle], cancelled: threading.Event):
        self._opening, self._cancelled = opening, cancelled

    def __enter__(self) -> ClusterHandle:
        return self._opening.__enter__()

    def __exit__(self, *exc: Any) -> bool | None:
        return self._opening.__exit__(*exc)

    def cancel(self) -> None:
        """Stop waiting for a first worker: the start raises :class:`Interrupted`."""
        self._cancelled.set()


@contextlib.contextmanager
def _opened_cluster(
    *,
    scheduler: str | None = None,
    client: Any = None,
    n_workers: int = 1,
    connect_timeout: float | None = None,
    security: Any = None,
    cluster_spec: ClusterSpec | None = None,
    settings: EnvSettings | None = None,
    cancelled: threading.Event | None = None,
) -> Iterator[ClusterHandle]:
    """Yield a :class:`ClusterHandle` (:func:`open_cluster`); close what was started here
    on exit.
    """
    import time

    import_dask()
    import dask
    from distributed import Client

    from daskprs.observe.logs import keep_dask_off_console

    keep_dask_off_console()  # Dask may have been imported just now, inside the run's logging
    started = time.monotonic()
    if settings is None:
        settings = EnvSettings.from_env()
    if connect_timeout is None:
        connect_timeout = settings.connect_timeout
    if client is not None:
        yield ClusterHandle(client, max(1, _worker_slots(client)), local=False)
        return
    if scheduler is not None:
        try:
            remote = _connected_client(
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
    if cluster_spec is not None:
        starting = _spec_cluster(cluster_spec, connect_timeout, settings.cluster_timeout, cancelled)
        with starting as (spec_client, slots):
            yield ClusterHandle(
                spec_client, slots, local=False, start_seconds=time.monotonic() - started
            )
        return
    dashboard = dashboard_address(settings.dashboard)
    LocalCluster = _embedded_cluster_class(dashboard or "127.0.0.1:0")
    config = {
        # Dask's low-level message log (1,000 messages a comm by default) keeps the
        # arguments of the last tasks alive: up to hundreds of MB of descriptors in a job of
        # many tiny mini-batches (`python -m benchmarks scale`); the embedded cluster keeps
        # none
        "distributed.admin.low-level-log-length": 0,
        # what runs in a worker is daskprs waiting for its slot's process: Dask's sampling
        # profiler (every thread's stack every 10 ms, in each worker) would only take CPU
        # from the entry scripts, as its 20 ms ticks and half-second system samples did
        "distributed.worker.profile.enabled": False,
        "distributed.admin.tick.interval": "500ms",
        "distributed.admin.system-monitor.interval": "5s",
    }
    path = list(sys.path)  # (each of its servers puts its scratch folder in front)
    with dask.config.set(config):
        with _dashboard_refused(settings.dashboard if dashboard else None):
            cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=1,
                # the workers are threads of this process, talking to the scheduler in memory
                # (inproc://): no port is opened, nothing to spawn or import again, and a Ctrl-C
                # reaches this process alone (the entry-script processes have sessions of their
                # own). A worker only hands tries to its slot's process and waits
                # (docs/design.md#the-embedded-cluster)
                processes=False,
                # the dashboard on the loopback only, unless DASKPRS_DASHBOARD names a host
                # (without one it would be on every interface)
                dashboard_address=dashboard,
                # without a dashboard the scheduler still serves /health on HTTP: on a free
                # loopback port, not on 8787 (another run's dashboard, maybe)
                scheduler_kwargs=None if dashboard else {"dashboard_address": "127.0.0.1:0"},
                # each worker's own HTTP endpoint (/health, metrics) on the loopback too, without
                # a dashboard of its own (importing bokeh for it took 0.3 s of CPU at each start)
                worker_dashboard_address="127.0.0.1:0",
                worker_class=_worker_class(),
                memory_limit=0,
                silence_logs=logging.ERROR,
            )
        local = Client(cluster, set_as_default=False)
    try:
        yield ClusterHandle(
            local,
            n_workers,
            local=True,
            start_seconds=time.monotonic() - started,
            dashboard=dashboard is not None,
        )
    finally:
        servers = [cluster.scheduler, *cluster.workers.values()]
        try:
            local.close()
        finally:
            cluster.close()
            _forget_servers(servers, path)


def _forget_servers(servers: list[Any], path: list[str]) -> None:
    """Leave nothing of the embedded cluster's closed ``servers`` (its scheduler and
    workers, objects of this process) in it: a notebook runs many jobs in one process.

    Each server put its scratch folder at the front of ``sys.path`` (``path`` is what it was
    before), and takes it out at its close only when it is still first: two stale folders a
    run stayed, searched by every later import. And Dask's ``_expects_comm`` (whether a
    handler takes a comm) caches its answers by the handler, a bound method: every server
    that handled a message stayed alive, with the log handler it adds to
    ``distributed.scheduler`` or ``distributed.worker`` (which every later Dask log record
    went through, each keeping its last 10,000). Emptying that cache lets them go.
    """
    from distributed import core

    folders = {getattr(s, "local_directory", None) for s in servers} - set(path)
    sys.path[:] = [p for p in sys.path if p not in folders]
    clear = getattr(getattr(core, "_expects_comm", None), "cache_clear", None)
    if clear is not None:  # (a Dask that caches nothing has none)
        clear()


@contextlib.contextmanager
def _dashboard_refused(value: str | None) -> Iterator[None]:
    """Make the embedded cluster's failure to listen where ``DASKPRS_DASHBOARD`` says (its
    host not known here, or none of this machine's) the exit-2 error naming the variable,
    its value and the fix, instead of an internal error. The settings check the host before
    anything is written (:class:`~daskprs.settings.EnvSettings`); this is for what that
    check cannot see (settings given as they are, a host that resolves elsewhere by now)."""
    try:
        yield
    except Exception as err:
        cause: BaseException | None = err  # Dask's "Cluster failed to start" wraps it
        while cause is not None and not _refused_address(cause):
            cause = cause.__cause__ or cause.__context__
        if value is None or cause is None:
            raise
        problem = f"DASKPRS_DASHBOARD={value!r}: {dashboard_problem(cause)}"
        raise SettingsError({"DASKPRS_DASHBOARD": problem}) from err


def _refused_address(err: BaseException) -> bool:
    """Whether ``err`` says that an address cannot be listened on: a host that does not
    resolve, or that is none of this machine's (not a lack of file descriptors, say)."""
    if isinstance(err, socket.gaierror):
        return True
    return isinstance(err, OSError) and err.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)


def _connected_client(address: str, **kwargs: Any) -> Any:
    """``Client(address, **kwargs)``, closed at once when connecting fails.

    Dask closes a client that cannot reach its scheduler (an ``OSError``), but not one
    whose address it cannot read (``foo``, no port: a ``ValueError``): that one was left
    half open, and its ``__del__`` closed it at the interpreter's exit, with its event loop
    stopped: "Exception ignored in: Client.__del__ ... TimeoutError" printed after
    daskprs's own message, and twice the connect timeout before the process ended. The
    client is taken here as its constructor starts it, to be closed before the error goes on.
    """
    from distributed import Client

    made: list[Any] = []

    class Connecting(Client):
        def start(self, **start_kwargs: Any) -> Any:
            made.append(self)
            return super().start(**start_kwargs)

    try:
        return Connecting(address, **kwargs)
    except BaseException:
        for client in made:
            with contextlib.suppress(Exception):
                client.close()
        raise


def _embedded_cluster_class(http_address: str) -> Any:
    """``LocalCluster``, with the link to its HTTP server (``client.dashboard_link``, the
    link the console prints) on the host it listens on: Dask names an in-memory cluster by
    this machine's network address, where nothing of it listens."""
    from distributed import LocalCluster
    from distributed.utils import format_dashboard_link

    host = http_address.split(",")[0].rpartition(":")[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):  # every interface: the loopback among them
        host = "127.0.0.1"

    class EmbeddedCluster(LocalCluster):
        @property
        def dashboard_link(self) -> str:
            port = self.scheduler_info.get("services", {}).get("dashboard")
            return format_dashboard_link(host, port) if port else ""

    return EmbeddedCluster


def _worker_class() -> Any:
    """Dask's ``Worker``, serving no dashboard whatever its dashboard address says."""
    from distributed import Worker

    class EmbeddedWorker(Worker):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs["dashboard"] = False
            super().__init__(*args, **kwargs)

    return EmbeddedWorker


def _import_keeping_signals(name: str) -> Any:
    """Import module ``name``; on the main thread, keep the SIGINT and SIGTERM handlers it had.

    ``dask_jobqueue`` sets SIGINT to ``sys.exit`` as it is imported (its ``runner`` module),
    which fails on any other thread and, on the main thread, would replace the handling that
    ends a run with exit 130 and the resume hint (``cli._guard``).
    """
    import importlib
    import signal

    if threading.current_thread() is not threading.main_thread():
        return importlib.import_module(name)
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return importlib.import_module(name)
    finally:
        for sig, handler in kept.items():
            # None: a handler not set from Python, which cannot be set back
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)


def _cluster_class(spec: ClusterSpec) -> Any:
    module_name, _, attr = spec.cls.rpartition(".")
    where = f"daskprs.yaml computes: {spec.name}: class {spec.cls}"
    try:
        module = _import_keeping_signals(module_name)
    except ImportError as err:
        package = module_name.split(".")[0].replace("_", "-")
        raise UserInputError(
            f"{where}: cannot import {module_name} ({err}). Install it where daskprs runs "
            f"(e.g. pip install {package}), or fix the class name."
        ) from err
    except Exception as err:  # the module's own code failed as it was imported
        raise UserInputError(
            f"{where}: importing {module_name} failed ({type(err).__name__}: {err}). A module "
            "that sets signal handlers as it is imported (dask_jobqueue does) must be imported "
            f"on the main thread: `import {module_name}` there before calling run_job from "
            "another thread."
        ) from err
    cls = getattr(module, attr, None)
    if not callable(cls):
        raise UserInputError(
            f"{where}: {module_name} has no class {attr}. Give the dotted name of a Dask "
            "cluster class, e.g. dask_jobqueue.SLURMCluster or distributed.LocalCluster."
        )
    return cls


@contextlib.contextmanager
def _spec_cluster(
    spec: ClusterSpec,
    timeout: float,
    cluster_timeout: float,
    cancelled: threading.Event | None = None,
) -> Iterator[tuple[Any, int]]:
    """Start ``spec``'s cluster, size it, connect a client; yield (client, worker slots),
    waiting up to ``cluster_timeout`` seconds (at least ``timeout``) for a first worker, or
    until ``cancelled`` is set (the run ended while its batch jobs or pods waited): then
    :class:`Interrupted`, and the cluster is closed (its batch jobs cancelled) at once."""
    import time

    from distributed import Client

    cls = _cluster_class(spec)
    where = f"daskprs.yaml computes: {spec.name}"
    try:
        cluster = cls(**spec.kwargs)
    except Exception as err:  # any failure to start the user's cluster is theirs to fix
        root: BaseException = err
        while root.__cause__ is not None:
            root = root.__cause__
        why = f"{type(root).__name__}: {root}"
        raise UserInputError(
            f"{where}: {spec.cls}({', '.join(f'{k}=...' for k in spec.kwargs)}) failed "
            f"({why}). Fix `kwargs` to the arguments the class takes, or check that the "
            "cluster can start from here."
        ) from err
    try:
        if spec.adapt is not None:
            cluster.adapt(**spec.adapt)
        elif spec.scale is not None:
            cluster.scale(spec.scale)
        client = Client(cluster, set_as_default=False)
        try:
            wait = max(timeout, cluster_timeout)
            deadline = time.monotonic() + wait
            slots = _worker_slots(client)
            while slots == 0:
                if cancelled is not None and cancelled.is_set():
                    raise Interrupted(f"{where}: the run ended before a first worker started")
                if time.monotonic() > deadline:
                    raise UserInputError(
                        f"{where}: the {spec.cls} cluster started no worker in {wait:.0f} s. "
                        "Give it workers (scale: N, adapt: {minimum: 1, ...}, or the class's "
                        "own n_workers), and check its queue or pods; DASKPRS_CLUSTER_TIMEOUT "
                        "waits longer."
                    )
                try:  # a short wait: to see `cancelled`
                    client.wait_for_workers(1, timeout=_CANCEL_POLL_SECONDS)
                except TimeoutError:
                    pass
                except OSError as err:
                    raise UserInputError(
                        f"{where}: the {spec.cls} cluster's scheduler went away before a first "
                        f"worker started ({err}). Check that the cluster can start from here."
                    ) from err
                slots = _worker_slots(client)
            yield client, max(1, slots)
        finally:
            client.close()
    finally:
        cluster.close()
        _closed_for_good(cluster)


# how soon a start that waits for its first worker sees that the run ended
_CANCEL_POLL_SECONDS = 0.5


def _closed_for_good(cluster: Any) -> None:
    """Keep a closed cluster's objects from closing again when garbage-collected.

    ``dask_gateway.GatewayCluster.close()`` closes its ``Gateway`` client, whose ``__del__``
    closes it again; with its event loop stopped that second close raises (``Exception ignored
    in: Gateway.__del__ ... Accessing the loop property while the loop is not running``),
    printed at the end of every run. Without its loop runner the ``Gateway`` skips that close.
    """
    gateway: Any = getattr(cluster, "gateway", None)
    if type(gateway).__module__.startswith("dask_gateway") and hasattr(gateway, "_loop_runner"):
        with contextlib.suppress(AttributeError):
            del gateway._loop_runner
