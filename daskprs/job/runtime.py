"""A parallel node's runtime settings: ``mini_batch_size``, thresholds, retries, runtime args.

The settings come from node fields (``error_threshold``, ``retry_settings``, ...) and from the
runtime arguments among ``task.program_arguments`` (``--error_threshold 5``); an argument wins
over a field, with a warning.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import Any

from daskprs.job import schema as S
from daskprs.job.binding import bind_text, bind_value, drop_optional
from daskprs.job.model import DataInput, MiniBatchSize, RuntimeSettings
from daskprs.job.nodes import Node

#: Fields and runtime arguments that are parsed and validated but whose effect is not
#: implemented yet; each occurrence is reported as a note "... is accepted but not yet applied".
#: Remove a name from this set once the planner or the runner applies it.
NOT_YET_APPLIED: frozenset[str] = frozenset()


class _SizeError(ValueError):
    def __init__(self, message: str, hint: str):
        super().__init__(f"{message} ({hint})")
        self.message = message
        self.hint = hint


def parse_mini_batch_size(value: object) -> MiniBatchSize:
    """Parse a ``mini_batch_size``.

    Parameters
    ----------
    value : object
        A string of digits with an optional ``kb``/``mb``/``gb`` unit (any case, x1024 each)
        or ``rows`` suffix, spaces allowed before it (``"100 kb"``), or a YAML integer.

    Returns
    -------
    MiniBatchSize
        ``unit`` is ``"count"`` for a bare number, ``"bytes"`` with a unit (multiplied out),
        ``"rows"`` for ``"<n>rows"``.

    Raises
    ------
    ValueError
        For any other form (``"1.5mb"``, ``"1 0kb"``, ``"10tb"``, negative numbers), with the
        right form in the message.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return MiniBatchSize(value, "count", str(value))
    if isinstance(value, str):
        match = S.SIZE.fullmatch(value)
        if match and len(match[1]) <= S.MAX_DIGITS:
            number, unit = int(match[1]), (match[2] or "").lower()
            if not unit:
                return MiniBatchSize(number, "count", value)
            if unit == "rows":
                return MiniBatchSize(number, "rows", value)
            return MiniBatchSize(number * 1024 ** (S.UNITS.index(unit) + 1), "bytes", value)
    raise _SizeError(f"{value!r} is not a valid mini_batch_size", S.size_hint(value))


def not_yet(ctx: S.Context, place: str, name: str) -> None:
    if name in NOT_YET_APPLIED:
        ctx.note(f"{place}: {name} is accepted but not yet applied")


def node_mini_batch_size(
    node: Node, scope: Mapping[str, object], input_data: DataInput | None, ctx: S.Context
) -> MiniBatchSize | None:
    raw = node.fields.get("mini_batch_size")
    if raw is None:
        return None
    place = node.origin("mini_batch_size")("mini_batch_size")
    value = bind_value(raw, scope, place, ctx)
    if value is None:
        return None
    try:
        size = parse_mini_batch_size(value)
    except _SizeError as err:
        ctx.problem(place, err.message, err.hint)
        return None
    if input_data is not None and input_data.type != "mltable" and size.unit != "count":
        ctx.problem(
            place,
            f"{size} has a unit, but {input_data.name} is a {input_data.type}: a list of files",
            'give a number of files, e.g. "10"',
        )
        return None
    return size


def field_settings(node: Node, scope: Mapping[str, object], ctx: S.Context) -> dict[str, object]:
    """The runtime settings given as node fields (bindings resolved, values checked)."""
    f = node.fields
    out: dict[str, object] = {}
    for key in ("error_threshold", "mini_batch_error_threshold"):
        if f.get(key) is not None:
            place = node.origin(key)(key)
            value = S.as_int(bind_value(f[key], scope, place, ctx), place, ctx, -1)
            if value is not None:
                out[key] = value
    if f.get("logging_level") is not None:
        place = node.origin("logging_level")("logging_level")
        level = bind_value(f["logging_level"], scope, place, ctx)
        if level is not None and (level := S.as_level(level, place, ctx)):
            out["logging_level"] = level
    retry = S.mapping_or_empty(f.get("retry_settings"))
    if retry.get("max_retries") is not None:
        place = node.origin("retry_settings", "max_retries")("retry_settings", "max_retries")
        value = S.as_int(bind_value(retry["max_retries"], scope, place, ctx), place, ctx, 0)
        if value is not None:
            out["max_retries"] = value
    if retry.get("timeout") is not None:
        place = node.origin("retry_settings", "timeout")("retry_settings", "timeout")
        bound = bind_value(retry["timeout"], scope, place, ctx)
        timeout = (
            S.as_float(bound, place, ctx, S.RUNTIME_ARGS["--run_invocation_timeout"])
            if bound is not None
            else None
        )
        if timeout is not None:
            out["timeout"] = timeout
    return out


def program_arguments(
    raw: object, scope: Mapping[str, object], place: str, ctx: S.Context
) -> tuple[str, ...]:
    """Split like a shell first, then bind inside each token (a path with a space stays one)."""
    if raw is None:
        return ()
    if isinstance(raw, list):
        tokens = [str(t) for t in raw]
    else:
        try:
            tokens = shlex.split(drop_optional(str(raw), scope))
        except ValueError as err:
            ctx.problem(
                place, f"cannot be split like a shell command line: {err}", "balance the quotes"
            )
            return ()
    used: set[str] = set()
    return tuple(bind_text(token, scope, place, ctx, used) for token in tokens)


def _runtime_args(argv: tuple[str, ...], place: str, ctx: S.Context) -> dict[str, object]:
    """The runtime arguments in ``argv``, by exact name (``--x v`` and ``--x=v``)."""
    found: dict[str, object] = {}
    index = 0
    while index < len(argv):
        token = argv[index]
        index += 1
        if not token.startswith("--") or token == "--":
            continue
        name, equals, value = token.partition("=")
        arg = S.RUNTIME_ARGS.get(name)
        if arg is None:
            # not --nice: two edits from --name and --mine, which scripts take themselves
            close = sorted(
                (S.edit_distance(name, known), known)
                for known in S.RUNTIME_ARGS
                if known not in S.FLAG_RUNTIME_ARGS
            )
            if close and close[0][0] <= 2:
                ctx.warn(
                    f"{place}: {name} is not a runtime argument and is passed to the script "
                    f"unchanged; did you mean {close[0][1]}?"
                )
            continue
        if not equals:
            if index < len(argv) and not argv[index].startswith("--"):
                value = argv[index]
                index += 1
            elif name in S.FLAG_RUNTIME_ARGS:
                value = ""
            else:
                ctx.problem(place, f"{name} has no value", f"write {name} VALUE")
                continue
        arg_place = f"{place}: {name}"
        converted: object
        if arg.kind == "int":
            converted = S.as_int(value, arg_place, ctx, int(arg.low or 0))
        elif arg.kind == "tries":
            converted = S.as_int(value, arg_place, ctx, 1)
        elif arg.kind == "float":
            converted = S.as_float(value, arg_place, ctx, arg)
        elif arg.kind == "level":
            converted = S.as_level(value, arg_place, ctx)
        else:
            converted = value
        if converted is not None:
            found[name] = converted
    return found


def append_row_file_name(argv: Sequence[str]) -> str | None:
    """The file name ``--append_row_file_name`` gives in ``argv`` (``--x v`` or ``--x=v``),
    lower-cased as Azure's driver does; None when it is not given."""
    for index, token in enumerate(argv):
        name, equals, value = token.partition("=")
        if name != "--append_row_file_name":
            continue
        if not equals:
            value = argv[index + 1] if index + 1 < len(argv) else ""
        return value.lower()
    return None


def runtime_settings(
    node: Node, given: dict[str, object], argv: tuple[str, ...], place: str, ctx: S.Context
) -> RuntimeSettings | None:
    # RuntimeSettings' keyword arguments: each value was checked for its field as it was read
    values: dict[str, Any] = dict(given)
    for name, value in _runtime_args(argv, place, ctx).items():
        arg = S.RUNTIME_ARGS[name]
        if arg.field is None:
            ctx.note(f"{place}: {name} accepted; {S.RUNTIME_ARG_NOTES[name]}")
            continue
        not_yet(ctx, place, name)
        if name == "--profiling_module" and value != "cProfile":
            ctx.problem(
                f"{place}: --profiling_module",
                f"profiling module {value!r} is not supported",
                "use --profiling_module cProfile",
            )
            continue
        setting = value
        if arg.kind == "tries":
            if not isinstance(value, int):  # _runtime_args reads a number of tries with as_int
                raise RuntimeError(f"{name}: a number of tries must be an int, not {value!r}")
            setting = value - 1
        if arg.field in given and given[arg.field] != setting:
            if arg.node_field is None:  # `given` holds node fields only
                raise RuntimeError(
                    f"RUNTIME_ARGS[{name!r}] sets node field {arg.field}: no node_field"
                )
            node_place = node.origin(*arg.node_field.split("."))(*arg.node_field.split("."))
            ctx.warn(
                f"{node_place} is {_show(given[arg.field])} but program_arguments give {name} "
                f"{_show(value)}; using the program argument ({arg.field} = {_show(setting)})"
            )
        values[arg.field] = setting
    try:
        return RuntimeSettings(**values)
    except TypeError as err:  # a field name out of sync with jobmodel: an internal error
        raise RuntimeError(f"daskprs.job.load and RuntimeSettings disagree: {err}") from err


def _show(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
