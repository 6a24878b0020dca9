"""One cache of fsspec filesystems for the whole process: planning, reading and writing.

fsspec's own instance cache is keyed by thread id too, which can hand a reused thread a
filesystem made for other credentials or another endpoint (seen with ``AWS_ENDPOINT_URL``
changing between runs in one process); this cache is keyed by what matters only: the
protocol, the storage options and the environment variables that configure them.

Also what an error of an object store says to the user (:func:`store_problem`): a store that
cannot be reached or refuses the credentials is the user's to fix, not a bug of daskprs.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "AZURE_PROTOCOLS",
    "filesystem",
    "missing_package",
    "modified_time",
    "store_missing",
    "store_problem",
    "url_options",
]

_FILESYSTEMS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()
_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_", "GCS", "AZURE_")
# Azure storage: adlfs serves abfs://, abfss:// and az://; wasb:// and wasbs:// (the Blob
# service's own scheme, in Azure ML's datastore URLs) name the same containers.
AZURE_PROTOCOLS = ("abfs", "abfss", "az", "wasb", "wasbs")
_AZURE_HOST = re.compile(r"^([^@/]+)@([^./]+)\.(?:blob|dfs)\.core\.windows\.net(?::\d+)?$", re.I)


def url_options(url: str) -> dict[str, Any]:
    """The storage options a URL implies: an Azure URL's account (``abfs://container@account.
    dfs.core.windows.net/...``), which the paths planned from it no longer carry."""
    protocol, _, rest = url.partition("://")
    if protocol.lower() not in AZURE_PROTOCOLS:
        return {}
    host = _AZURE_HOST.match(rest.split("/", 1)[0])
    return {"account_name": host[2]} if host else {}


def missing_package(url: str) -> str | None:
    """What is missing to read or write ``url``, when it is an Azure URL and adlfs is not
    installed (a message naming the package); else None."""
    if url.partition("://")[0].lower() not in AZURE_PROTOCOLS:
        return None
    try:
        _azure_url(url)
    except ImportError as err:
        return str(err)
    return None


def _azure_url(url: str) -> str:
    """``url`` for adlfs: ``wasbs://`` and ``wasb://`` as ``abfs://``; adlfs checked for."""
    protocol, _, rest = url.partition("://")
    try:
        importlib.import_module("adlfs")
    except ImportError as err:
        raise ImportError(
            f"{protocol}:// URLs (Azure storage) are read and written with adlfs, which is not "
            "installed: pip install adlfs"
        ) from err
    _quiet_credential_chains()
    return url if protocol.lower() in ("abfs", "abfss", "az") else f"abfs://{rest}"


# azure-identity's chains of credentials (DefaultAzureCredential), which adlfs falls back on:
# when none gives a token they log a warning of 15 lines, then raise it as the
# ClientAuthenticationError that daskprs reports in one line (store_problem). The warning
# came once a request, four times for one listing.
_CHAIN_LOGGERS = ("azure.identity._credentials.chained", "azure.identity.aio._credentials.chained")


def _not_a_warning(record: logging.LogRecord) -> bool:
    return record.levelno != logging.WARNING


def _quiet_credential_chains() -> None:
    """Drop the warnings of azure-identity's credential chains (their error says the same)."""
    for name in _CHAIN_LOGGERS:
        logger = logging.getLogger(name)
        if _not_a_warning not in logger.filters:
            logger.addFilter(_not_a_warning)


# The scope azure-storage-blob asks a token credential for (its STORAGE_OAUTH_SCOPE)
_STORAGE_SCOPE = "https://storage.azure.com/.default"


def _check_token(fs: Any) -> None:
    """Ask the token credential an adlfs filesystem authenticates with (azure-identity's
    DefaultAzureCredential when no key, SAS token or connection string is given; a service
    principal's; one given in the storage options) for a storage token, once, before any
    request: its error (``ClientAuthenticationError`` when no source of the chain gives one)
    is raised here, after one walk of the chain (DefaultAzureCredential's managed-identity
    probe waits 1 s and is not retried). Left to the first request, it came after the blob
    client's retry policy had run the chain four times and slept 15 s + 3^n (n = 1, 2, 3)
    between them: about 85 s to fail. The token is kept by the credential the filesystem's
    client asks next (a managed identity's, a service principal's; the Azure CLI credential
    runs ``az`` again). Account keys, SAS tokens, connection strings and ``anon`` ask nothing.
    """
    credential = getattr(fs, "credential", None)
    get_token = getattr(credential, "get_token", None)
    if getattr(fs, "connection_string", None) is not None or not inspect.iscoroutinefunction(
        get_token
    ):
        return  # (a connection string's key or SAS is used instead; a SAS or key credential)
    from fsspec.asyn import sync

    sync(fs.loop, get_token, _STORAGE_SCOPE)


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The filesystem for ``url`` (a local path or an fsspec URL) and the path in it.

    Raises
    ------
    ValueError
        An unknown protocol.
    ImportError
        The protocol's fsspec package is not installed.
    azure.core.exceptions.ClientAuthenticationError
        An Azure URL whose token credential gives no token (:func:`_check_token`).
    """
    protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
    if protocol in ("file", "local"):
        from fsspec.implementations.local import LocalFileSystem

        fs = LocalFileSystem()
        return fs, fs._strip_protocol(url)
    import fsspec.core

    options = {**url_options(url), **(storage_options or {})}
    if protocol in AZURE_PROTOCOLS:
        url = _azure_url(url)
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    key = (protocol, repr((sorted(options.items()), env)))
    with _LOCK:
        fs = _FILESYSTEMS.get(key)
    if fs is None:
        fs, path = fsspec.core.url_to_fs(url, **options, skip_instance_cache=True)
        if protocol in AZURE_PROTOCOLS:
            _check_token(fs)  # (a filesystem whose credentials give no token is not kept)
        with _LOCK:
            _FILESYSTEMS.setdefault(key, fs)
        return fs, path
    return fs, fs._strip_protocol(url)


# Where fsspec filesystems put a file's modification time in ``info()`` and ``find()``:
# local ("mtime"), s3fs ("LastModified"), adlfs ("last_modified"), gcsfs ("updated").
_MTIME_KEYS = ("mtime", "LastModified", "last_modified", "updated")


def modified_time(info: Mapping[str, Any]) -> float | None:
    """A file's modification time in seconds since the epoch, from an fsspec ``info()`` or
    ``find(detail=True)`` entry; None when it has none or it is a link (a local listing gives
    a link's own time there, a ``stat`` its target's, so the two could not be compared)."""
    if info.get("islink"):
        return None
    for key in _MTIME_KEYS:
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            from datetime import datetime

            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return None
        timestamp = getattr(value, "timestamp", None)
        return float(timestamp()) if callable(timestamp) else None
    return None


# -- an object store that cannot be reached or refuses who asks ------------------------------
# The errors of object stores and of the network to them, by the top package and the name of a
# class the error is an instance of: their packages (botocore, azure-core, aiohttp, gcsfs) are
# optional, and heavy to import only to catch what they raise. Any OSError counts too
# (ConnectionError, TimeoutError, socket.gaierror, ssl.SSLError, s3fs's translations of S3's
# refusals), except those that say a path is missing or of the wrong kind: the listing names
# those itself. A TypeError or a KeyError stays a bug of daskprs (exit 1).
_STORE_ERRORS = frozenset(
    {
        ("botocore", "BotoCoreError"),  # no endpoint, no credentials, a timeout, TLS
        ("botocore", "ClientError"),  # an answer of S3: access denied, a bad key
        ("azure", "AzureError"),  # ClientAuthenticationError, ServiceRequestError, ...
        ("aiohttp", "ClientError"),
        ("google", "GoogleAuthError"),
        ("gcsfs", "HttpError"),
    }
)
_PATH_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
# Classes (by name, anywhere in an error's MRO) that say the store refused who asked: no,
# wrong or expired credentials, or no access to that bucket or container
_REFUSALS = frozenset(
    {
        "PermissionError",
        "NoCredentialsError",
        "PartialCredentialsError",
        "ClientAuthenticationError",
        "CredentialUnavailableError",
        "GoogleAuthError",
    }
)
# Classes that say the store could not be reached: no connection, no such host, a timeout, TLS
_UNREACHABLE = frozenset(
    {
        "ConnectionError",  # the builtin's and botocore's (EndpointConnectionError)
        "HTTPClientError",  # botocore: a connection closed, a proxy that failed
        "ServiceRequestError",  # azure-core: the request never reached the service
        "ClientConnectionError",  # aiohttp
        "TimeoutError",
        "gaierror",  # no such host (DNS)
        "SSLError",
    }
)
_SHORT = 300


def _classes(err: BaseException) -> list[tuple[str, str]]:
    """``(top package, class name)`` of each class in the MRO of ``err``."""
    return [(c.__module__.split(".")[0], c.__name__) for c in type(err).__mro__]


def _status(err: BaseException) -> int | None:
    """The HTTP status of a store's answer in ``err``: botocore's ``ClientError``, azure's
    ``HttpResponseError``, aiohttp's ``ClientResponseError``, gcsfs's ``HttpError``."""
    response = getattr(err, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    for name in ("status_code", "status", "code"):
        status = getattr(err, name, None)
        if isinstance(status, int) and not isinstance(status, bool):
            return status
    return None


def _kind(err: BaseException) -> str | None:
    """What an error of a store or of the network to it says: ``refused`` (credentials, access),
    ``unreachable`` (a connection, a host name, a timeout, TLS) or else ``failed``, from
    ``err`` or, when it says no more, the errors it was raised from; None for any other."""
    if isinstance(err, _PATH_ERRORS):
        return None
    classes = _classes(err)
    if not isinstance(err, OSError) and not any(c in _STORE_ERRORS for c in classes):
        return None
    seen: list[BaseException] = []
    here: BaseException | None = err
    while here is not None and here not in seen and len(seen) < 10:
        seen.append(here)
        names = {name for _, name in _classes(here)}
        if names & _REFUSALS or _status(here) in (401, 403):
            return "refused"
        if names & _UNREACHABLE:
            return "unreachable"
        here = here.__cause__ or here.__context__
    return "failed"


def _fix(url: str, kind: str, options: bool) -> str:
    """How to fix a store of ``url`` that cannot be reached or refuses who asks: its endpoint
    and credentials, which come from the environment (README), or from the storage options
    given (``options``: the Python API's)."""
    protocol = url.partition("://")[0].lower()
    if protocol in ("s3", "s3a"):
        endpoint = "AWS_ENDPOINT_URL (unset for AWS itself)"
        secrets = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    elif protocol in AZURE_PROTOCOLS:
        endpoint = "the account (in the URL, AZURE_STORAGE_ACCOUNT_NAME or the connection string)"
        secrets = (
            "AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_KEY or "
            "AZURE_STORAGE_SAS_TOKEN with the account"
        )
    elif protocol in ("gs", "gcs"):
        endpoint = "the network"
        secrets = "GOOGLE_APPLICATION_CREDENTIALS"
    else:
        endpoint = "the URL's host and the network"
        secrets = "the credentials the store takes"
    given = " (or the storage_options given)" if options else ""
    if kind == "refused":
        return f"check the credentials in the environment{given}, and their access: {secrets}"
    return (
        f"check the endpoint and the credentials in the environment{given}: {endpoint}; {secrets}"
    )


def store_problem(url: str, err: BaseException, options: bool = False) -> str | None:
    """What to say when reaching the store of ``url`` failed with ``err``: the URL, what went
    wrong in one line (the error's class and the first line of its message, shortened) and
    where the store's endpoint and credentials come from (``options``: storage options were
    given too); None when ``err`` is no error of a store or of the network to it (a bug, or
    a missing path, which the caller names itself).

    >>> store_problem("s3://b/x", ConnectionRefusedError(111, "refused")).split(";")[0]
    's3://b/x: cannot reach the object store (ConnectionRefusedError: [Errno 111] refused)'
    """
    kind = _kind(err)
    if kind is None:
        return None
    store = "the server" if url.lower().startswith(("http://", "https://")) else "the object store"
    what = {
        "refused": f"{store} refused access",
        "unreachable": f"cannot reach {store}",
        "failed": f"{store} failed the request",
    }[kind]
    lines = str(err).strip().splitlines()
    message = lines[0].strip() if lines else ""
    if len(message) > _SHORT:
        message = message[: _SHORT - 3].rstrip() + "..."
    said = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return f"{url}: {what} ({said}); {_fix(url, kind, options)}"


def _store_word(url: str) -> str:
    """What a store calls the top of its paths: a bucket, or an Azure container."""
    return "container" if url.partition("://")[0].lower() in AZURE_PROTOCOLS else "bucket"


def store_missing(url: str, err: BaseException) -> str | None:
    """What to say when writing under ``url`` failed with ``err`` because its bucket (an Azure
    container) does not exist: s3fs raises ``FileNotFoundError`` for S3's ``NoSuchBucket``,
    adlfs lets azure-core's ``ResourceNotFoundError`` (HTTP 404, ``ContainerNotFound``)
    through. A write makes every other part of the path, so nothing else is missing. None
    for any other error."""
    if not isinstance(err, FileNotFoundError) and not (
        _status(err) == 404 and any(c in _STORE_ERRORS for c in _classes(err))
    ):
        return None
    top = url.partition("://")[2].split("/", 1)[0].split("@", 1)[0]
    lines = str(err).strip().splitlines()
    message = lines[0].strip()[:_SHORT] if lines else ""
    said = f"{type(err).__name__}: {message}" if message else type(err).__name__
    word = _store_word(url)
    return f"{url}: the {word} {top} does not exist ({said}); create it, or give another {word}"
