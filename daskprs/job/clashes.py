"""Outputs that would write over each other (docs/job-files.md#paths-and-bindings).

Two outputs with one path, or an output that is the very file another output's
``append_row_to`` collects its rows in, are problems: whichever step writes last would
silently replace what the other wrote. An output inside another output's folder is a warning:
nothing is overwritten, but its files become part of that output (and of what a later step
reads from it). Paths are compared after resolution (absolute, normalised, symbolic links
followed); URLs as strings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from daskprs.job import schema as S
from daskprs.job.model import CommandStep, ParallelStep
from daskprs.paths import URL, parent_path

__all__ = ["check_output_paths"]

_HINT = (
    "give each output a path of its own, or leave out `path:`: an output without one goes "
    "to <run dir>/outputs/<step>/<output>"
)


@dataclass(frozen=True)
class _Written:
    """An output as compared: where it is declared, its path as shown and as compared, and
    whether it is a folder that holds files (every output but a ``uri_file`` with a path)."""

    place: str
    path: str
    key: str
    folder: bool


def _key(path: str) -> str:
    if URL.match(path):
        return path.rstrip("/")
    return os.path.normcase(os.path.realpath(path))


def _inside(inner: str, outer: str) -> bool:
    sep = "/" if URL.match(outer) else os.sep
    return inner.startswith(outer.rstrip(sep) + sep)


def check_output_paths(
    steps: Sequence[ParallelStep | CommandStep], kind: str | None, ctx: S.Context
) -> None:
    """Report outputs of ``steps`` that write to one path (problems naming both places and
    the path), and outputs inside another output's folder (warnings)."""
    written: list[_Written] = []
    # the file an append_row_to writes in its output's folder -> that output
    appends: dict[str, _Written] = {}
    for step in steps:
        at = f"jobs.{step.name}." if kind == "pipeline" else ""
        append = step.append_row_to if isinstance(step, ParallelStep) else None
        for out in step.outputs.values():
            folder = not (out.type == "uri_file" and out.explicit)
            w = _Written(f"{at}outputs.{out.name}", out.path, _key(out.path), folder)
            written.append(w)
            if append and folder and _key(parent_path(append)) == w.key:
                appends[_key(append)] = w
    first: dict[str, _Written] = {}
    clashed: set[tuple[str, str]] = set()
    for w in written:
        other = first.setdefault(w.key, w)
        if other is not w:
            ctx.problem(
                w.place,
                f"writes to {w.path}, as {other.place} does: one would overwrite the other",
                _HINT,
            )
            continue
        owner = appends.get(w.key)
        if owner is not None:
            clashed.add((w.place, owner.place))
            ctx.problem(
                w.place,
                f"writes to {w.path}, the file in which append_row_to collects the rows of "
                f"{owner.place}: one would overwrite the other",
                _HINT,
            )
    for w in written:
        for outer in first.values():
            if outer.folder and (w.place, outer.place) not in clashed and _inside(w.key, outer.key):
                ctx.warn(
                    f"{w.place} ({w.path}) is inside the folder of {outer.place} ({outer.path}): "
                    "its files become part of that output, and of what a step reading that "
                    "output sees; give it a folder of its own to keep them apart"
                )
