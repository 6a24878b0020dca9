"""Paths that may be local or URLs: one way to tell them apart and to join them, and to
write them down without the secrets they may carry.

Standard library only; every layer uses it (the entry-script process too).
"""

from __future__ import annotations

import itertools
import os
import posixpath
import re
from typing import Any

__all__ = [
    "REDACTED",
    "URL",
    "join_path",
    "looks_secret",
    "nearest_existing",
    "parent_path",
    "redact",
    "redact_data",
]

# An fsspec URL: a scheme and ``://`` (``s3://bucket/key``, ``file:///tmp``).
URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def join_path(base: str, *parts: str) -> str:
    """``base`` joined with ``parts``, normalised; ``base`` and the parts may be local paths or
    URLs, and a part that is absolute or a URL starts over (as ``os.path.join`` does).

    >>> join_path("s3://b/data", "../other", "x.csv")
    's3://b/other/x.csv'
    """
    out = base
    for part in parts:
        if not part:
            continue
        if URL.match(part) or part.startswith("/"):
            out = part
        elif URL.match(out):
            scheme, rest = out.split("://", 1)
            out = f"{scheme}://{posixpath.normpath(posixpath.join(rest, part))}"
        else:
            out = os.path.join(out, part)
    if URL.match(out):
        scheme, rest = out.split("://", 1)
        rest = posixpath.normpath(rest) if rest else rest
        return f"{scheme}://{rest}"
    return os.path.normpath(out)


def nearest_existing(path: str) -> str:
    """``path`` if it exists, else its nearest parent folder that does (the root at most)."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def parent_path(path: str) -> str:
    """The folder holding ``path`` (a local path or a URL)."""
    if URL.match(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(path)


# -- secrets ---------------------------------------------------------------------------------
# What daskprs writes in place of a secret in its logs, reports, job.json and messages.
REDACTED = "***"

# A part of a name (split at ``_``, ``-``, ``.``, ...) that says it holds a secret:
# ``AWS_SECRET_ACCESS_KEY``, ``API_TOKEN``, ``db-password``, ``storage_key``, ``sig``; not
# ``TOKENIZERS_PARALLELISM`` or ``KEYBOARD``.
_SECRET_PART = re.compile(
    r"\w*(?:secret|password|passwd|credentials?|token)|pwd|key|apikey|accesskey|accountkey"
    r"|privatekey|sig|signature|sas|auth|authorization|connectionstring",
    re.IGNORECASE,
)
# The name of a credential's class, which its errors begin with (azure-identity's
# ``AzureCliCredential: Azure CLI not found on path``): the message after it is no secret.
_CREDENTIAL_CLASS = re.compile(r"(?:[A-Z][a-z0-9]+)+Credential")
# A connection string (``Server=...;Password=...``), named in one part or two: ``conn_str``,
# ``--connstr``, ``connection-string``, ``AZURE_STORAGE_CONNECTION_STRING``, ``ConnStr``;
# and a DSN, which holds the user and password as often as not.
_CONNECTION = re.compile(r"conn(?:ection)?str(?:ing)?|dsn", re.IGNORECASE)
# scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)([^/\s@]+)(@)")
# ?sig=SECRET&... (an Azure SAS), X-Amz-Signature=..., token=...
_QUERY = re.compile(r"(?P<head>[?&;](?P<name>[\w.-]+)=)(?P<value>[^&#\s'\"]+)")
# NAME=SECRET, NAME: SECRET, "name": "SECRET"; not a folder of a path (``/data/key=3/``), and
# on one line: the first word of the next line is not the value of a "credentials:" ending one
_ASSIGNED = re.compile(
    r"(?<![/\w.-])(?P<head>(?P<name>[A-Za-z_][\w.-]*)['\"]?[ \t]*[=:][ \t]*['\"]?)"
    r"(?P<value>[^\s'\",;}&]+)"
)
# --name=SECRET (one argument, argparse's `=` form), --name SECRET, and in a list written out:
# "--name", "SECRET". Only the flag is matched; its value (the lookahead) runs to the next space
# or quote, so that a connection string is masked whole (see _mask_flags).
_FLAG = re.compile(
    r"(?<![^\s'\"\[(,=])--?(?P<name>[A-Za-z][\w.-]*)=(?=(?P<value>[^\s'\"]+))"
    r"|--?(?P<name2>[A-Za-z][\w-]*)(?:['\"]?,\s*['\"]|\s+)(?=(?P<value2>[^\s'\"-][^\s'\"]*))"
)


def looks_secret(name: object) -> bool:
    """Whether a variable, setting, parameter or key named ``name`` holds a secret
    (``AWS_SECRET_ACCESS_KEY``, ``API_TOKEN``, ``db-password``, ``storage_key``, ``sig``, a
    connection string: ``conn_str``, ``connection_string``, ``dsn``); not the name of a
    credential's class (``AzureCliCredential``)."""
    parts = [p for p in re.split(r"[^a-zA-Z0-9]+", str(name)) if p]
    if any(_SECRET_PART.fullmatch(p) and not _CREDENTIAL_CLASS.fullmatch(p) for p in parts):
        return True
    pairs = (a + b for a, b in itertools.pairwise(parts))
    return any(_CONNECTION.fullmatch(p) for p in (*parts, *pairs))


def _mask(match: re.Match) -> str:
    name, value = match["name"], match["value"]
    if value == REDACTED or not (looks_secret(name) or name.lower().startswith("x-amz-")):
        return match[0]
    return f"{match['head']}{REDACTED}"


def redact(text: str) -> str:
    """``text`` with the secrets it shows replaced by :data:`REDACTED`: passwords in URLs,
    secret query parameters (SAS signatures, tokens), and values given to names that look
    secret (``TOKEN=...``, ``--api-key ...``, ``"password": "..."``).

    >>> redact("s3://me:pa55@host/b?sig=abc&sv=1 --api_key xyz")
    's3://me:***@host/b?sig=***&sv=1 --api_key ***'
    """
    if not text:
        return text
    text = _URL_PASSWORD.sub(rf"\1{REDACTED}\3", text)
    for pattern in (_QUERY, _ASSIGNED):
        text = pattern.sub(_mask, text)
    return _mask_flags(text)


def _mask_flags(text: str) -> str:
    """``text`` with the value after each secret-looking flag masked: up to the next space or
    quote, so ``--conn_str Server=x;Uid=u;Pass=y`` leaves nothing of the string. A flag that
    is not secret consumes nothing, so a flag inside its value is still seen."""
    out, pos = [], 0
    for match in _FLAG.finditer(text):
        name = match["name"] or match["name2"]
        value = match["value"] or match["value2"]
        if match.start() < pos or value == REDACTED or not looks_secret(name):
            continue
        out += [text[pos : match.end()], REDACTED]
        pos = match.end() + len(value)
    return "".join([*out, text[pos:]])


def _secret_key(key: object) -> bool:
    return looks_secret(str(key).rsplit(".", 1)[-1])


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool) and value != ""


def redact_data(data: Any) -> Any:
    """A copy of JSON-like ``data`` with every value under a secret-looking key replaced by
    :data:`REDACTED` (for a flat key such as ``jobs.score.environment_variables.API_TOKEN``,
    its last part counts), every value after a secret-looking flag in a list too
    (``["--api-key", "SECRET"]``), and every string passed through :func:`redact` (which
    masks ``"--api-key=SECRET"``)."""
    if isinstance(data, dict):
        return {
            k: REDACTED if _secret_key(k) and _scalar(v) else redact_data(v)
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):  # an argv: ["--api-key", "SECRET"]
        # a flag that takes the next item as its value; "--api-key=SECRET" is one item, and
        # redact masks it
        flags = [
            isinstance(v, str) and v.startswith("-") and "=" not in v and looks_secret(v)
            for v in data
        ]
        return [
            REDACTED if i and flags[i - 1] and _scalar(v) else redact_data(v)
            for i, v in enumerate(data)
        ]
    if isinstance(data, str):
        return redact(data)
    return data
