"""Getting a Dask client: the embedded ``LocalCluster``, a scheduler's address, or a cluster
that ``daskprs.yaml`` names by its class (:class:`~daskprs.job.model.ClusterSpec`).

The embedded cluster has one single-threaded worker process per slot and sets
``distributed.scheduler.allowed-failures`` to 0, so a task whose worker died is reported to
the supervisor (which counts the try) instead of being run again silently
(docs/design.md#exactly-once-claims-and-the-ledger). It listens on 127.0.0.1 only (its
dashboard too, unless ``DASKPRS_DASHBOARD`` names a host: :func:`dashboard_address`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from daskprs.errors import UserInputError
from daskprs.job.model import ClusterSpec
from daskprs.settings import EnvSettings

__all__ = ["ClusterHandle", "dashboard_address", "open_cluster"]


@dataclass
class ClusterHandle:
    """A connected client and what the runner needs to know about the cluster."""

    client: Any
    n_workers: int
    local: bool
    start_seconds: float = 0.0


def dashboard_address(value: str) -> str:
    """``DASKPRS_DASHBOARD`` as the embedded cluster binds it: an address without a host
    (``:0``, ``8787``) is on the loopback only (``127.0.0.1:0``), as the link printed says;
    one with a host (``0.0.0.0:8787``, an interface's address) is served there.

    Parameters
    ----------
    value : str
        A checked ``DASKPRS_DASHBOARD`` value (:class:`~daskprs.settings.EnvSettings`): an
        address or a comma list of them.

    Returns
    -------
    str
        The address list for ``LocalCluster(dashboard_address=...)``.
    """
    items = []
    for item in value.split(","):
        host, colon, port = item.rpartition(":")
        if not colon and item.isdigit():  # a bare port
            host, port = "", item
        elif not colon:  # a bare host: any port there
            items.append(item)
            continue
        items.append(f"{host or '127.0.0.1'}:{port}")
    return ",".join(items)


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
    cluster_spec: ClusterSpec | None = None,
    settings: EnvSettings | None = None,
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
    import time

    import dask
    from distributed import Client

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
    if cluster_spec is not None:
        starting = _spec_cluster(cluster_spec, connect_timeout, settings.cluster_timeout)
        with starting as (spec_client, slots):
            yield ClusterHandle(
                spec_client, slots, local=False, start_seconds=time.monotonic() - started
            )
        return
    from distributed import LocalCluster

    from daskprs.execute.dasklogs import DaskLogsToFile, IgnoreInterrupts
    from daskprs.observe.logs import driver_log_file

    # inside a run, the workers' Dask messages go to the run's log file, as the driver's do;
    # a Ctrl-C reaches the worker processes too (they share the terminal's process group):
    # the driver alone answers it, and ends them
    log_file = driver_log_file()
    plugins = (IgnoreInterrupts(), *((DaskLogsToFile(log_file),) if log_file else ()))
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            # the scheduler, nannies and workers on the loopback only; the dashboard too,
            # unless DASKPRS_DASHBOARD names a host (without one it would be on every interface)
            host="127.0.0.1",
            dashboard_address=dashboard_address(settings.dashboard),
            memory_limit=0,
            silence_logs=logging.ERROR,
            plugins=plugins,
        )
        local = Client(cluster, set_as_default=False)
    try:
        yield ClusterHandle(local, n_workers, local=True, start_seconds=time.monotonic() - started)
    finally:
        # the client first (a client left connected to a closing scheduler retries, and says
        # so); then the cluster closes its workers, waits for their processes, and only then
        # its scheduler. A heartbeat a worker's own closing cuts still logs a traceback:
        # DaskLogsToFile keeps it in the run's log.
        local.close()
        cluster.close()


def _cluster_class(spec: ClusterSpec) -> Any:
    import importlib

    module_name, _, attr = spec.cls.rpartition(".")
    where = f"daskprs.yaml computes: {spec.name}: class {spec.cls}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        package = module_name.split(".")[0].replace("_", "-")
        raise UserInputError(
            f"{where}: cannot import {module_name} ({err}). Install it where daskprs runs "
            f"(e.g. pip install {package}), or fix the class name."
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
    spec: ClusterSpec, timeout: float, cluster_timeout: float
) -> Iterator[tuple[Any, int]]:
    """Start ``spec``'s cluster, size it, connect a client; yield (client, worker slots),
    waiting up to ``cluster_timeout`` seconds (at least ``timeout``) for a first worker."""
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
            slots = _worker_slots(client)
            if slots == 0:
                wait = max(timeout, cluster_timeout)
                try:
                    client.wait_for_workers(1, timeout=wait)
                except (OSError, TimeoutError) as err:
                    raise UserInputError(
                        f"{where}: the {spec.cls} cluster started no worker in {wait:.0f} s. "
                        "Give it workers (scale: N, adapt: {minimum: 1, ...}, or the class's "
                        "own n_workers), and check its queue or pods; DASKPRS_CLUSTER_TIMEOUT "
                        "waits longer."
                    ) from err
                slots = _worker_slots(client)
            yield client, max(1, slots)
        finally:
            client.close()
    finally:
        cluster.close()
