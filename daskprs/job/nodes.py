"""Nodes before binding: components loaded and merged into nodes; a pipeline's node order."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from daskprs.job import schema as S
from daskprs.job.binding import definitions
from daskprs.job.files import read_yaml
from daskprs.job.model import Output


@dataclass
class Node:
    """A node before binding: its fields merged from its component and itself."""

    name: str
    type: str
    fields: dict[str, object]
    origins: dict[tuple, S.At]
    at: S.At
    input_defs: Mapping[str, object] | None
    def_at: S.At
    input_vals: Mapping[str, object]
    output_defs: Mapping[str, object] | None
    output_vals: Mapping[str, object]
    outputs: dict[str, Output] = field(default_factory=dict)
    inputs: dict[str, object] = field(default_factory=dict)
    deps: set[str] = field(default_factory=set)

    def origin(self, *keys: str) -> S.At:
        for length in (2, 1):
            if keys[:length] in self.origins:
                return self.origins[keys[:length]]
        return self.at


def merge(component: Mapping, comp_at: S.At, node: Mapping, node_at: S.At) -> tuple[dict, dict]:
    """A component's fields overridden by the node's (nested settings merged key by key)."""
    merged: dict[str, object] = {}
    origins: dict[tuple, S.At] = {}
    for source, at in ((component, comp_at), (node, node_at)):
        for key, value in source.items():
            if key in ("inputs", "outputs", "component"):
                continue
            earlier = merged.get(key)
            if isinstance(value, Mapping) and isinstance(earlier, Mapping):
                merged[key] = {**earlier, **value}
            else:
                merged[key] = value
                origins[(key,)] = at
            if isinstance(value, Mapping):
                for sub in value:
                    origins[(key, str(sub))] = at
    return merged, origins


def _component(
    ref: object,
    node_at: S.At,
    cache: dict[str, tuple[dict, S.At] | None],
    root: str,
    ctx: S.Context,
) -> tuple[dict, S.At] | None:
    place = node_at("component")
    if isinstance(ref, Mapping):
        comp, at = dict(ref), S.At(place, node_at.base, node_at.relative_to)
    elif isinstance(ref, str) and not ref.startswith("azureml:"):
        path = os.path.normpath(os.path.join(node_at.base, ref.removeprefix("file:")))
        if path in cache:
            return cache[path]
        cache[path] = None
        if not os.path.isfile(path):
            ctx.problem(
                place,
                f"component file {path} does not exist",
                f"the path is relative to {node_at.relative_to}",
            )
            return None
        doc = read_yaml(path, place, ctx)
        if doc is None:
            return None
        label = os.path.relpath(path, root) if not os.path.isabs(ref) else path
        at = S.At(f"{label}: ", os.path.dirname(path))
        if not isinstance(doc, dict):
            ctx.problem(at(), f"a component file must be a YAML mapping, not {S.kind_of(doc)}")
            return None
        comp = doc
    else:
        ctx.problem(
            place,
            f"{ref!r} is a registered component, which daskprs cannot fetch",
            "download the component YAML and write `component: ./file.yml`",
        )
        return None
    kind = comp.get("type")
    if kind not in S.NODE_TYPES:
        ctx.problem(
            at("type"), f"component type {kind!r} is not supported", "allowed: parallel, command"
        )
        return None
    S.check_keys(comp, S.PARALLEL_FILE if kind == "parallel" else S.COMMAND_FILE, at, (), ctx)
    if isinstance(ref, str):
        cache[path] = (comp, at)
    return comp, at


def make_node(
    name: str, raw: object, at: S.At, cache: dict, root: str, ctx: S.Context
) -> Node | None:
    if not isinstance(raw, Mapping):
        ctx.problem(at(), f"a node must be a mapping, not {S.kind_of(raw)}")
        return None
    comp: Mapping = {}
    comp_at = at
    if "component" in raw:
        loaded = _component(raw["component"], at, cache, root, ctx)
        if loaded is None:
            return None
        comp, comp_at = loaded
    kind = raw.get("type", comp.get("type"))
    if kind not in S.NODE_TYPES:
        hint = "allowed: parallel, command"
        ctx.problem(
            at("type"),
            f"node type {kind!r} is not supported" if kind else "the node has no `type`",
            hint,
        )
        return None
    if comp and comp.get("type") != kind:
        ctx.problem(at("type"), f"the node is {kind!r} but its component is {comp.get('type')!r}")
        return None
    S.check_keys(raw, S.PARALLEL_NODE if kind == "parallel" else S.COMMAND_NODE, at, (), ctx)
    fields_, origins = merge(comp, comp_at, raw, at)
    return Node(
        name=name,
        type=str(kind),
        fields=fields_,
        origins=origins,
        at=at,
        input_defs=definitions(comp.get("inputs"), comp_at, "inputs", ctx) if comp else None,
        def_at=comp_at,
        input_vals=definitions(raw.get("inputs"), at, "inputs", ctx),
        output_defs=definitions(comp.get("outputs"), comp_at, "outputs", ctx) if comp else None,
        output_vals=definitions(raw.get("outputs"), at, "outputs", ctx),
    )


def dependency_order(deps: Mapping[str, set[str]], ctx: S.Context) -> list[str]:
    """Names in dependency order, keeping the YAML order where there is a choice."""
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(deps):
        ready = [n for n in deps if n not in done and deps[n] <= done]
        if not ready:
            left = {n: deps[n] - done for n in deps if n not in done}
            cycle = [next(iter(left))]
            while True:
                following = sorted(left[cycle[-1]])[0]
                if following in cycle:
                    cycle = [*cycle[cycle.index(following) :], following]
                    break
                cycle.append(following)
            ctx.problem(
                "jobs",
                "the nodes depend on each other in a cycle: " + " -> ".join(cycle),
                "a node can use only outputs of nodes that do not use its own",
            )
            return order
        order.append(ready[0])
        done.add(ready[0])
    return order
