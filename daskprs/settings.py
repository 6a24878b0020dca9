"""The ``DASKPRS_*`` environment variables, read once, checked, and kept in one frozen
:class:`EnvSettings`.

Each variable is a row of :data:`VARIABLES`: the field of :class:`EnvSettings` it sets, the
form its value takes, an example, its default, and what it changes. :meth:`EnvSettings.from_env`
reads them all from the environment it is given and reports every bad value at once in one
:class:`~daskprs.errors.SettingsError` (exit status 2); :func:`describe` renders the same rows
for the docs (``docs/environment.md``). The driver reads its settings once, when a job starts,
and passes them down; :meth:`EnvSettings.to_env` gives what an entry-script process needs of
them.

The parsers are shared with the places that read an environment of their own: a worker's
devices (:func:`parse_gpu_devices`, :mod:`daskprs.execute.devices`) and an entry-script process's
log limit (:func:`parse_size`, :mod:`azureml_user.parallel_run`). Standard library only, so
that those processes stay light: sizes are parsed here as :func:`dask.utils.parse_bytes`
parses them, without importing dask.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from daskprs.errors import SettingsError

__all__ = [
    "VARIABLES",
    "EnvSettings",
    "Unusable",
    "Variable",
    "dashboard_problem",
    "describe",
    "parse_gpu_devices",
    "parse_size",
]


# Bytes per unit, as dask.utils.byte_sizes has them (a unit is matched case-insensitively).
_UNITS = {
    "": 1,
    "b": 1,
    **{p: 1000**i for i, p in enumerate("kmgtp", start=1)},
    **{f"{p}b": 1000**i for i, p in enumerate("kmgtp", start=1)},
    **{f"{p}i": 1024**i for i, p in enumerate("kmgtp", start=1)},
    **{f"{p}ib": 1024**i for i, p in enumerate("kmgtp", start=1)},
}
_SIZE = re.compile(r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)\s*(?P<unit>[a-z]*)", re.I)


def parse_size(value: str) -> int:
    """A size in bytes, written as for :func:`dask.utils.parse_bytes`.

    Parameters
    ----------
    value : str
        A number of bytes (``"123"``, ``"1e6"``), or a number and a unit (``"64MiB"``,
        ``"200MB"``, ``"1.5 GB"``, ``"2kb"``): ``B``, ``kB``/``k``, ``MB``/``M``, ``GB``,
        ``TB``, ``PB`` (powers of 1000) or ``KiB``/``Ki``, ``MiB``, ``GiB``, ``TiB``, ``PiB``
        (powers of 1024), in any case.

    Returns
    -------
    int
        The bytes, truncated as ``parse_bytes`` truncates them (``"1.5kiB"``: 1536).

    Raises
    ------
    ValueError
        Anything else, including what ``parse_bytes`` accepts but no one means: a negative
        size, a unit without a number (``"MB"``), spaces inside the number.
    """
    found = _SIZE.fullmatch(value.strip())
    if found is None or found["unit"].lower() not in _UNITS:
        raise ValueError(f"not a size: {value!r}")
    size = float(found["number"]) * _UNITS[found["unit"].lower()]
    if not math.isfinite(size):
        raise ValueError(f"not a size: {value!r}")
    return int(size)


def parse_gpu_devices(value: str) -> tuple[str, ...]:
    """The devices of a comma list as ``CUDA_VISIBLE_DEVICES`` takes it (indices or UUIDs).

    Never fails: an empty list, or one that starts with ``-1`` or ``NoDevFiles`` (CUDA stops
    at the first invalid entry), means no device: ``()``.
    """
    devices = tuple(d.strip() for d in value.split(",") if d.strip())
    return () if not devices or devices[0] in ("-1", "NoDevFiles") else devices


def _seconds(value: str, *, zero: bool = False) -> float:
    seconds = float(value)  # ValueError for what is no number
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        raise ValueError(f"not a number of seconds: {value!r}")
    return seconds


def _positive_seconds(value: str) -> float:
    return _seconds(value)


def _seconds_or_zero(value: str) -> float:
    return _seconds(value, zero=True)


def _size_or_no_limit(value: str) -> int | None:
    return parse_size(value) or None


class Unusable(ValueError):
    """A value of the right form that cannot be used on this machine; its message says why
    and what to give instead (a dashboard host that is not known here)."""


# A dashboard address as distributed's ``clean_dashboard_address`` takes it, with a port, as
# the docs' form ``[HOST]:PORT`` says: ``:PORT``, ``HOST:PORT`` or a bare ``PORT``, or a
# comma list of them; no IPv6 literals. A bare ``HOST`` (any port, for distributed) is
# refused: ``foo`` is more likely a mistake than a wish for any port on host foo.
_ADDRESS = re.compile(r"(?P<host>[\w.-]*):(?P<port>\d+)|(?P<bare>\d+)")


def _dashboard(value: str) -> str:
    if value.strip().lower() == "off":
        return "off"
    items = [item.strip() for item in value.split(",")]
    hosts = []
    for item in items:
        found = _ADDRESS.fullmatch(item)
        if found is None or int(found["port"] or found["bare"]) > 65535:
            raise ValueError(f"not a dashboard address: {value!r}")
        hosts += [found["host"]] if found["host"] else []
    for host in hosts:  # the right form: can this machine listen there?
        _check_dashboard_host(host)
    return ",".join(items)  # no spaces: distributed would take " :8788" for host " "


def _check_dashboard_host(host: str) -> None:
    """Raise :class:`Unusable` unless the embedded cluster's dashboard can listen on
    ``host``: a name or address of this machine (the embedded scheduler is a thread of the
    driver). Checked as the scheduler's HTTP server binds it (tornado's ``bind_sockets``):
    the addresses the host resolves to, each on port 0 (a port in use is not the host's
    fault: distributed takes another). One that binds is enough: ``localhost`` is also
    ``::1``, which a machine without IPv6 cannot bind and tornado skips; what else fails is
    found when the cluster starts (:func:`daskprs.execute.cluster.open_cluster`)."""
    try:
        found = socket.getaddrinfo(
            host, 0, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as err:  # socket.gaierror is an OSError
        raise Unusable(dashboard_problem(err, host)) from None
    error: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, address in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind(address)
        except OSError as err:
            error = err
        else:
            return
    raise Unusable(dashboard_problem(error, host))


def dashboard_problem(err: BaseException, host: str | None = None) -> str:
    """What is wrong with a ``DASKPRS_DASHBOARD`` address the embedded cluster cannot serve
    its dashboard on, and what to give instead; the variable and its value go before it.

    Parameters
    ----------
    err : BaseException
        Why: the error of resolving the host or of listening there.
    host : str, optional
        The host of the address (``nosuchhost`` of ``nosuchhost:8787``), when known.

    Returns
    -------
    str
        The problem, without a final full stop (:class:`~daskprs.errors.SettingsError` adds
        how to get the default).
    """
    if host is None:
        what = "the dashboard cannot be served there"
    elif isinstance(err, socket.gaierror | UnicodeError):
        what = f"the host {host} is not known here"
    else:
        what = f"this machine cannot listen on the host {host}"
    return (
        f"{what} ({err}). The embedded cluster serves the dashboard on this machine: give one "
        "of its names or addresses (0.0.0.0:8787: every interface), or no host (:8787: "
        "127.0.0.1 only)"
    )


@dataclass(frozen=True)
class Variable:
    """One ``DASKPRS_*`` environment variable.

    Parameters
    ----------
    name : str
        ``DASKPRS_LEASE_SECONDS``.
    field : str
        The :class:`EnvSettings` field it sets.
    form : str
        The form of its value, completing "is not ...": ``a number of seconds > 0``.
    example : str
        A good value, for messages: ``60``.
    default : str
        Its default as the docs show it (a value of the same form where there is one).
    what : str
        What it changes, for the docs.
    parse : callable
        ``str -> value`` of the field; raises ``ValueError`` for a bad value.
    empty_is_default : bool
        An empty value means the default (else it is parsed like any other).
    """

    name: str
    field: str
    form: str
    example: str
    default: str
    what: str
    parse: Callable[[str], Any]
    empty_is_default: bool = True

    def problem(self, value: str) -> str:
        """What is wrong with ``value``, naming the variable, the form and an example."""
        return f"{self.name}={value!r} is not {self.form} (for example {self.name}={self.example})"


_SIZE_FORM = "a size in bytes or with a unit (kB, MB, GB, KiB, MiB, GiB, ...; 0: no limit)"

VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        Variable(
            "DASKPRS_CONNECT_TIMEOUT",
            "connect_timeout",
            "a number of seconds > 0",
            "30",
            "10",
            "Seconds to wait for a `--scheduler` to answer, and for it to have a worker.",
            _positive_seconds,
        ),
        Variable(
            "DASKPRS_CLUSTER_TIMEOUT",
            "cluster_timeout",
            "a number of seconds > 0",
            "600",
            "300",
            "Seconds to wait for the first worker of a cluster that `daskprs.yaml` "
            "`computes:` starts.",
            _positive_seconds,
        ),
        Variable(
            "DASKPRS_DASHBOARD",
            "dashboard",
            "`off`, or an address [HOST]:PORT (PORT 0 to 65535; 0: any free port)",
            ":8787",
            "off",
            "Where the embedded cluster serves the Dask dashboard: none by default (serving "
            "it took a quarter of the driver's CPU in a short job on 2 cores); `:0` serves it "
            "on any free port and prints its address. Without a HOST it listens on 127.0.0.1 "
            "only (the embedded scheduler and workers, threads of the driver, open no port); "
            "give one to open it to other machines (`0.0.0.0:8787`: every interface): a name "
            "or address of this machine, checked before anything is written (one that does "
            "not resolve, or that this machine cannot listen on, is a bad value).",
            _dashboard,
        ),
        Variable(
            "DASKPRS_HANDBACK_SECONDS",
            "handback_seconds",
            "a number of seconds >= 0",
            "5",
            "5",
            "Seconds the rerun of a claimed try waits for the hand-back of a worker that "
            "closed, before it counts the try as lost with its worker.",
            _seconds_or_zero,
        ),
        Variable(
            "DASKPRS_SHUTDOWN_TIMEOUT",
            "shutdown_timeout",
            "a number of seconds > 0",
            "60",
            "30",
            "Seconds an entry script's `shutdown()` may take before its process is killed.",
            _positive_seconds,
        ),
        Variable(
            "DASKPRS_CHILD_MEMORY_LIMIT",
            "child_memory_limit",
            _SIZE_FORM,
            "2GB",
            "80 % of the memory / processes on the embedded cluster; else no limit",
            "Resident memory an entry-script process may use before it is killed.",
            parse_size,
        ),
        Variable(
            "DASKPRS_USER_LOG_LIMIT",
            "user_log_limit",
            _SIZE_FORM,
            "200MB",
            "64MiB",
            "Bytes kept of each log file of an entry-script process (stdout, stderr, "
            "`EntryScript().logger`); past that, one note says the rest was dropped.",
            _size_or_no_limit,
        ),
        Variable(
            "DASKPRS_LEASE_SECONDS",
            "lease_seconds",
            "a number of seconds > 0",
            "60",
            "60",
            "Seconds without the driver's lease after which the workers of an external "
            "cluster end the driver's entry-script processes.",
            _positive_seconds,
        ),
        Variable(
            "DASKPRS_GPU_DEVICES",
            "gpu_devices",
            "a comma list of device indices or UUIDs (empty or -1: no GPU)",
            "0,1",
            "`CUDA_VISIBLE_DEVICES`, else `nvidia-smi -L`",
            "The GPUs a worker shares out among its entry-script processes (read by each "
            "worker, as its host has them).",
            parse_gpu_devices,
            empty_is_default=False,  # empty: no GPU, as for CUDA_VISIBLE_DEVICES
        ),
    )
}


@dataclass(frozen=True)
class EnvSettings:
    """Every ``DASKPRS_*`` variable, checked and typed; the defaults are daskprs's own.

    Attributes
    ----------
    connect_timeout : float
        ``DASKPRS_CONNECT_TIMEOUT``: seconds to wait for a ``--scheduler``.
    cluster_timeout : float
        ``DASKPRS_CLUSTER_TIMEOUT``: seconds to wait for a ``computes:`` cluster's first worker.
    dashboard : str
        ``DASKPRS_DASHBOARD``: the embedded cluster's dashboard address (``:0``: a free port;
        ``off``, the default: none).
    handback_seconds : float
        ``DASKPRS_HANDBACK_SECONDS``: the wait for a hand-back marker
        (:func:`daskprs.execute.handback.take_over`).
    shutdown_timeout : float
        ``DASKPRS_SHUTDOWN_TIMEOUT``: seconds ``shutdown()`` may take.
    child_memory_limit : int or None
        ``DASKPRS_CHILD_MEMORY_LIMIT`` in bytes, 0 for no limit; None when not set (the
        runner's default rule applies).
    user_log_limit : int or None
        ``DASKPRS_USER_LOG_LIMIT`` in bytes per log file; None for no limit.
    lease_seconds : float
        ``DASKPRS_LEASE_SECONDS``: the driver's lease on an external cluster.
    gpu_devices : tuple of str or None
        ``DASKPRS_GPU_DEVICES`` as the environment read has it (``()``: no GPU); None when not
        set. Each worker reads its own (:func:`daskprs.execute.devices.visible_gpus`).
    """

    connect_timeout: float = 10.0
    cluster_timeout: float = 300.0
    dashboard: str = "off"
    handback_seconds: float = 5.0
    shutdown_timeout: float = 30.0
    child_memory_limit: int | None = None
    user_log_limit: int | None = 64 * 2**20
    lease_seconds: float = 60.0
    gpu_devices: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EnvSettings:
        """Read and check every variable of :data:`VARIABLES`.

        Parameters
        ----------
        env : mapping, optional
            The environment to read (default: :data:`os.environ`). A variable that is not
            set, or is set to an empty value, keeps its default (except
            ``DASKPRS_GPU_DEVICES``, where empty means no GPU).

        Raises
        ------
        SettingsError
            Naming every variable with a bad value, the value, its form and an example; or,
            for a value of the right form that cannot be used here (a ``DASKPRS_DASHBOARD``
            host that does not resolve, or that this machine cannot listen on), why and
            what to give instead.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for var in VARIABLES.values():
            value = env.get(var.name)
            if value is None or (var.empty_is_default and not value.strip()):
                continue
            try:
                values[var.field] = var.parse(value)
            except Unusable as err:  # the right form, but not here: the message says why
                problems[var.name] = f"{var.name}={value!r}: {err}"
            except ValueError:
                problems[var.name] = var.problem(value)
        if problems:
            raise SettingsError(problems)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables an entry-script process reads, as it reads them: added to its
        environment when it is started (``DASKPRS_USER_LOG_LIMIT`` in bytes, ``0``: no limit,
        for ``EntryScript().logger``: no dask there to parse ``64MiB``)."""
        return {"DASKPRS_USER_LOG_LIMIT": str(self.user_log_limit or 0)}


def describe() -> list[str]:
    """The lines of the table of variables that ``docs/environment.md`` shows (Markdown)."""
    lines = ["| variable | value | default | what it changes |", "| --- | --- | --- | --- |"]
    for var in VARIABLES.values():
        default = var.default if " " in var.default else f"`{var.default}`"
        lines.append(f"| `{var.name}` | {var.form} | {default} | {var.what} |")
    return lines
