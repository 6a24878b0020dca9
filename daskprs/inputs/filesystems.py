"""One cache of fsspec filesystems for the whole process: planning, reading and writing.

fsspec's own instance cache is keyed by thread id too, which can hand a reused thread a
filesystem made for other credentials or another endpoint (seen with ``AWS_ENDPOINT_URL``
changing between runs in one process); this cache is keyed by what matters only: the
protocol, the storage options and the environment variables that configure them.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["filesystem"]

_FILESYSTEMS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()
_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_", "GCS", "AZURE_")


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

    options = dict(storage_options or {})
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
