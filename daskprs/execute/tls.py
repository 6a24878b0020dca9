"""TLS to a Dask scheduler: ``--scheduler tls://host:port`` with certificates from flags
(``--tls-ca-file``, ``--tls-cert``, ``--tls-key``) or from the standard Dask configuration
(``distributed.comm.tls.ca-file``, ``distributed.comm.tls.client.cert`` and ``.key``).
"""

from __future__ import annotations

import os
from typing import Any

from daskprs.errors import UserInputError

__all__ = ["client_security"]

_FLAGS = {"ca": "--tls-ca-file", "cert": "--tls-cert", "key": "--tls-key"}
_CONFIG = {
    "ca": "distributed.comm.tls.ca-file",
    "cert": "distributed.comm.tls.client.cert",
    "key": "distributed.comm.tls.client.key",
}


def client_security(
    scheduler: str | None,
    ca_file: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> Any:
    """The :class:`distributed.Security` a client of ``scheduler`` needs, or None.

    Parameters
    ----------
    scheduler : str or None
        The scheduler address; certificates are only used with ``tls://``.
    ca_file, cert, key : str, optional
        PEM files: the certificate authority that signed the scheduler's certificate, the
        client certificate, and its private key (may be in ``cert``). Each one not given is
        taken from the Dask configuration.

    Returns
    -------
    distributed.Security or None
        None for a non-TLS address without certificate flags (Dask's defaults apply).

    Raises
    ------
    UserInputError
        Certificate flags without a ``tls://`` address, a ``tls://`` address without a CA
        file and a certificate, or a file that does not exist.
    """
    given = {"ca": ca_file, "cert": cert, "key": key}
    is_tls = scheduler is not None and scheduler.startswith("tls://")
    if not is_tls:
        if any(given.values()):
            used = ", ".join(_FLAGS[k] for k, v in given.items() if v)
            raise UserInputError(
                f"{used} go with a TLS scheduler address: give --scheduler tls://host:port"
            )
        return None  # (before importing Dask: the embedded cluster imports it in a thread)
    import dask

    files = {k: v or dask.config.get(_CONFIG[k], None) for k, v in given.items()}
    missing = [k for k in ("ca", "cert") if not files[k]]
    if missing:
        what = " and ".join(f"{_FLAGS[k]} (or {_CONFIG[k]} in the Dask config)" for k in missing)
        raise UserInputError(
            f"--scheduler {scheduler} uses TLS: give {what}, the PEM files the cluster's "
            "certificates were made with"
        )
    for k, path in files.items():
        if path and not os.path.isfile(os.path.expanduser(str(path))):
            raise UserInputError(
                f"{_FLAGS[k]} {path}: no such file. Give the PEM file's path (from the flag or "
                f"{_CONFIG[k]} in the Dask config)."
            )
    from distributed.security import Security

    return Security(
        tls_ca_file=os.path.expanduser(str(files["ca"])),
        tls_client_cert=os.path.expanduser(str(files["cert"])),
        tls_client_key=os.path.expanduser(str(files["key"])) if files["key"] else None,
        require_encryption=True,
    )
