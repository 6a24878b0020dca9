"""One cache of fsspec filesystems for the whole process: planning, reading and writing.

fsspec's own instance cache is keyed by thread id too, which can hand a reused thread a
filesystem made for other credentials or another endpoint (seen with ``AWS_ENDPOINT_URL``
changing between runs in one process); this cache is keyed by what matters only: the
protocol, the storage options and the environment variables that configure them.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["AZURE_PROTOCOLS", "filesystem", "missing_package", "modified_time", "url_options"]

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
    return url if protocol.lower() in ("abfs", "abfss", "az") else f"abfs://{rest}"


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The filesystem for ``url`` (a local path or an fsspec URL) and the path in it.

    Raises
    ------
    ValueError
        An unknown protocol.
    ImportError
        The protocol's fsspec package is not installed.
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
