"""Read a job YAML, validate it, bind it, and resolve it into a :class:`~daskprs.job.model.Job`.

This module and its private helpers are the only ones that look at job YAML
(docs/job-files.md). They are pure apart from reading the job file, component files, the
``daskprs.yaml`` configuration and the entry scripts (parsed with :mod:`ast`, never imported):
nothing is written and no cluster is touched.

Every problem of a file is collected before anything is raised, so the user sees all of them
at once; each names its YAML place, says what is wrong and how to fix it. Keys that only matter
on Azure are accepted and reported as *notes*; suspicious but valid settings as *warnings*.

Binding happens in two phases, because a node's output paths depend only on its own
``outputs:`` section while its inputs may refer to any other node's outputs
(``${{parent.jobs.<s>.outputs.<o>}}``): first every node's outputs are placed, then inputs are
bound and the nodes are ordered by the references found.

This module holds the public API and the top-level flow; the helpers, each importing only
those listed before it:

- :mod:`daskprs.job.schema`: the keys a file may contain, value checks, the problem collector;
- :mod:`daskprs.job.binding`: ``${{...}}`` bindings, inputs and outputs, path resolution;
- :mod:`daskprs.job.files`: reading YAML files and the ``daskprs.yaml`` configuration;
- :mod:`daskprs.job.sets`: ``--set`` overrides;
- :mod:`daskprs.job.nodes`: components merged into nodes, and the order of a pipeline's nodes;
- :mod:`daskprs.job.runtime`: a parallel node's runtime settings and ``mini_batch_size``;
- :mod:`daskprs.job.build`: a bound node built into a parallel or command step;
- :mod:`daskprs.job.clashes`: outputs that would write over each other;
- :mod:`daskprs.job.v1`: a v1 ``ParallelRunConfig`` YAML translated into a ``type: parallel``
  document (with ``--input``, ``--output``, ``--arguments`` and ``--side-input``);
- :mod:`daskprs.job.sdk`: a job built with Azure's Python SDK, or a mapping, as a job
  document; a file of one node (``component:`` inline) as a pipeline of that node.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from daskprs.errors import JobSpecError, Problem
from daskprs.job import schema as S
from daskprs.job.binding import FAILED, bind_inputs, definitions, place_outputs
from daskprs.job.build import bound_output, build_step
from daskprs.job.clashes import check_output_paths
from daskprs.job.files import load_config, read_yaml
from daskprs.job.model import CommandStep, Job, ParallelStep
from daskprs.job.nodes import Node, dependency_order, make_node, merge
from daskprs.job.runtime import NOT_YET_APPLIED, parse_mini_batch_size
from daskprs.job.sdk import node_as_pipeline
from daskprs.job.sets import apply_sets
from daskprs.job.v1 import V1Options, is_v1, translate_v1

__all__ = ["NOT_YET_APPLIED", "load_job", "parse_mini_batch_size", "validate_file"]

# What a job file is: the values of Job.kind.
_Kind = Literal["pipeline", "component", "parallel", "v1"]


# --------------------------------------------------------------------------- public API


def load_job(
    path: str | os.PathLike,
    sets: Sequence[str] = (),
    *,
    run_dir: str | None = None,
    run_name: str | None = None,
    config: Mapping | None = None,
    env: Mapping[str, str] | None = None,
    v1: V1Options | None = None,
    base: str | None = None,
    given_as: str | None = None,
) -> Job:
    """Read, validate and bind a job file.

    Parameters
    ----------
    path : str or os.PathLike
        A pipeline YAML (``type: pipeline``), a parallel component YAML, or a bare
        ``type: parallel`` YAML.
    sets : sequence of str
        ``--set`` values, ``KEY=VALUE``: ``inputs.<name>=VALUE`` binds a pipeline input (for a
        component or parallel file, one of its inputs; a path is taken relative to the current
        directory), ``jobs.<node>.<field>[.<sub>]=VALUE`` overrides a node field (VALUE is read
        as a YAML scalar). For a component or parallel file ``<field>=VALUE`` works too.
    run_dir : str, optional
        The run directory; outputs without a ``path`` go to ``<run_dir>/outputs/<node>/<output>``.
        Default (as for ``daskprs validate``): ``./daskprs-runs/<file stem>``, absolute. No
        folder is created.
    run_name : str, optional
        The run's name, ``${{name}}``. Default: the run directory's base name.
    config : mapping, optional
        The parsed ``daskprs.yaml`` (``datastores: {name: folder or URL}``, ``computes: {name:
        scheduler address}``). Default: ``daskprs.yaml`` next to the job file, else
        ``$XDG_CONFIG_HOME/daskprs/daskprs.yaml`` (``~/.config`` when unset), else empty.
        Relative datastore roots are relative to the configuration file's folder (the
        current directory for a mapping given here).
    env : mapping, optional
        The environment (``XDG_CONFIG_HOME``, ``HOME``); default :data:`os.environ`.
    v1 : V1Options, optional
        What a v1 ``ParallelRunConfig`` file's ``ParallelRunStep`` gave: ``--input`` (its
        dataset: a folder, a file or an MLTable folder; required), ``--output`` (default
        ``<run_dir>/outputs/<name>/output``), ``--arguments`` (one command line) and
        ``--side-input NAME=PATH`` values. An error for other files.
    base : str, optional
        The folder relative paths of the file are relative to, and where ``daskprs.yaml`` is
        looked for first; default: the file's folder (a job built with the Python SDK and
        written into the run directory keeps the folder it was built in). A component file's
        own relative paths stay relative to that component file.
    given_as : str, optional
        What the job was given as when no file of the user's holds it (a mapping or an SDK
        object that :func:`~daskprs.api.run_job` wrote to the run directory): problems are
        reported under this name (``"the job given to run_job"``) rather than the file's, and
        the job's relative paths are said to be relative to ``base``, by default the current
        directory.

    Returns
    -------
    Job
        Steps in dependency order, with notes (fields accepted but not applied) and warnings.

    Raises
    ------
    JobSpecError
        Listing every problem of the file (and of the ``--set`` values), not only the first.
    """
    v1 = v1 or V1Options()
    at = None
    if base or given_as:
        folder = os.path.abspath(base or os.path.dirname(os.path.abspath(path)))
        at = S.At("", folder, _relative_to(folder, given_as))
    job, problems, _, _ = _load(path, sets, run_dir, run_name, config, env, v1, at)
    if problems or job is None:
        if given_as:
            raise JobSpecError(given_as, problems, file=False)
        raise JobSpecError(os.fspath(path), problems)
    return job


def validate_file(
    path: str | os.PathLike,
    sets: Sequence[str] = (),
    input_path: str | None = None,
    output_path: str | None = None,
    arguments: str | None = None,
    side_inputs: Sequence[str] = (),
) -> tuple[Job | None, list[Problem], list[str]]:
    """Validate a job file without raising.

    Parameters
    ----------
    path : str or os.PathLike
        The job file.
    sets : sequence of str
        ``--set`` values, as for :func:`load_job`.
    input_path, output_path, arguments, side_inputs : optional
        ``--input``, ``--output``, ``--arguments`` and ``--side-input``, as for
        :func:`load_job`.

    Returns
    -------
    tuple
        ``(job, problems, messages)``: the job (None when there are problems), every problem
        found, and the notes followed by the warnings.
    """
    v1 = V1Options(input_path, output_path, arguments, tuple(side_inputs))
    job, problems, notes, warnings = _load(path, sets, None, None, None, None, v1)
    return job, problems, [*notes, *warnings]


# --------------------------------------------------------------------------- loading


def _load(
    path: str | os.PathLike,
    sets: Sequence[str],
    run_dir: str | None,
    run_name: str | None,
    config: Mapping | None,
    env: Mapping[str, str] | None,
    v1_io: V1Options,
    top: S.At | None = None,
) -> tuple[Job | None, list[Problem], list[str], list[str]]:
    """Load the job file ``path``; ``top`` is where its relative paths start (``base``),
    default its folder."""
    env = os.environ if env is None else env
    source = os.path.abspath(os.fspath(path))
    run_dir = os.path.abspath(run_dir or os.path.join("daskprs-runs", Path(source).stem))
    ctx = S.Context(os.getcwd(), run_dir, run_name or os.path.basename(run_dir))
    doc = read_yaml(source, "", ctx)
    if doc is None:
        return None, ctx.problems, ctx.notes, ctx.warnings
    if not isinstance(doc, dict):
        ctx.problem("", f"the job file must be a YAML mapping, not {S.kind_of(doc)}")
        return None, ctx.problems, ctx.notes, ctx.warnings
    at = top or S.At("", os.path.dirname(source))
    load_config(config, at.base, env, ctx)
    steps: list[ParallelStep | CommandStep] = []
    continue_on_failure = False
    if is_v1(doc):
        kind: _Kind | None = "v1"
        steps = _v1(doc, sets, v1_io, source, at, ctx)
    else:
        kind = _file_kind(doc, ctx)
        if kind in ("parallel", "component") and "component" in doc:
            # one node (as the Python SDK writes a parallel_run_function node): a pipeline of
            # that node, named as its component
            doc, kind = node_as_pipeline(doc, Path(source).stem), "pipeline"
        for flag in v1_io.flags():
            ctx.problem(
                flag,
                f"{flag} goes with a v1 ParallelRunConfig file only",
                "bind this file's inputs and outputs with --set inputs.<name>=PATH (or "
                "jobs.<node>.outputs.<name>.path=PATH)",
            )
    if kind is not None and kind != "v1":
        apply_sets(doc, sets, kind, Path(source).stem, ctx)
        if kind == "pipeline":
            steps, continue_on_failure = _pipeline(doc, at, ctx)
        else:
            steps = _single(doc, at, Path(source).stem, ctx)
    force_rerun = False
    settings = doc.get("settings") if kind == "pipeline" else None
    if isinstance(settings, Mapping) and settings.get("force_rerun") is not None:
        force_rerun = S.as_bool(settings["force_rerun"], "settings.force_rerun", ctx) is True
    _check_folder_names(steps, kind, ctx)
    check_output_paths(steps, kind, ctx)
    if ctx.problems:
        return None, ctx.problems, ctx.notes, ctx.warnings
    job = Job(
        source=source,
        kind=kind or "parallel",
        steps=tuple(steps),
        name=ctx.run_name,
        run_dir=run_dir,
        notes=tuple(ctx.notes),
        warnings=tuple(ctx.warnings),
        continue_on_step_failure=continue_on_failure,
        force_rerun=force_rerun,
        staging=ctx.staging,
    )
    return job, [], ctx.notes, ctx.warnings


def _relative_to(base: str, given_as: str | None) -> str:
    """What the relative paths of a job loaded with a ``base`` are relative to, in the words
    of a hint ("check the path; it is relative to ...")."""
    if given_as:  # no file of the user's: run_job's base=, which it defaults
        return f"base=, here {base}, which is by default the current directory"
    return f"base=, here {base}, not to the YAML file"


def unsafe_folder_name(name: str) -> bool:
    """Whether ``name`` cannot be one folder's name inside the run directory: empty, ``.``
    or ``..``, or holding a path separator or a NUL (``../../etc``, ``/abs``)."""
    return name in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0"))


def _check_folder_names(
    steps: Sequence[ParallelStep | CommandStep], kind: str | None, ctx: S.Context
) -> None:
    """Step and output names become folders of the run directory (``steps/<step>``,
    ``outputs/<step>/<output>``): none may lead out of it."""
    hint = "use letters, digits, `_`, `-` and `.`: it names a folder in the run directory"
    for step in steps:
        at = f"jobs.{step.name}" if kind == "pipeline" else ""
        if unsafe_folder_name(step.name):
            ctx.problem(at or "name", f"{step.name!r} is not a valid step name", hint)
        for name in step.outputs:
            if unsafe_folder_name(str(name)):
                place = f"{at}.outputs.{name}" if at else f"outputs.{name}"
                ctx.problem(place, f"{name!r} is not a valid output name", hint)


def _v1(
    doc: dict,
    sets: Sequence[str],
    io: V1Options,
    source: str,
    at: S.At,
    ctx: S.Context,
) -> list[ParallelStep | CommandStep]:
    """A v1 ``ParallelRunConfig``: translated, then loaded as a bare ``type: parallel`` file
    (its relative paths relative to ``at.base``, the file's folder unless ``base`` is given)."""
    ctx.note("a v1 ParallelRunConfig: loaded as the type: parallel job it describes")
    hint = at.relative_to if at.relative_to != S.FILE_RELATIVE else "the config file's folder"
    translated = translate_v1(doc, io, sets, at.base, ctx, hint)
    if translated is None:
        return []
    steps = _single(translated.doc, at, Path(source).stem, ctx)
    name = translated.append_row_file_name
    if name and steps and isinstance(steps[0], ParallelStep) and steps[0].append_row_to:
        folder = os.path.dirname(steps[0].append_row_to)
        steps = [replace(steps[0], append_row_to=f"{folder}/{name}")]
    return steps


def _file_kind(doc: dict, ctx: S.Context) -> Literal["pipeline", "component", "parallel"] | None:
    kind = doc.get("type")
    if kind == "pipeline" or (kind is None and "jobs" in doc):
        return "pipeline"
    if kind in S.NODE_TYPES:
        component = "version" in doc or "component" in str(doc.get("$schema", "")).lower()
        return "component" if component or kind == "command" else "parallel"
    if kind is None:
        ctx.problem("type", "the file has no `type`", "write `type: pipeline` or `type: parallel`")
    else:
        ctx.problem("type", f"unsupported file type {kind!r}", "allowed: pipeline, parallel")
    return None


# --------------------------------------------------------------------------- pipelines and steps


def _pipeline(doc: dict, at: S.At, ctx: S.Context) -> tuple[list[ParallelStep | CommandStep], bool]:
    S.check_keys(doc, S.PIPELINE, at, (), ctx)
    settings = S.mapping_or_empty(doc.get("settings"))
    if settings.get("default_datastore"):
        ctx.default_datastore = str(settings["default_datastore"]).removeprefix("azureml:")
    continue_on_failure = False
    if settings.get("continue_on_step_failure") is not None:
        value = S.as_bool(
            settings["continue_on_step_failure"], "settings.continue_on_step_failure", ctx
        )
        continue_on_failure = bool(value)
    for key in ("on_init", "on_finalize"):
        if settings.get(key):
            ctx.not_applied(f"settings.{key}", key, settings[key])
    if doc.get("identity"):
        ctx.not_applied("identity", "identity", None)
    default_compute = ("settings.default_compute", settings.get("default_compute"))
    if not default_compute[1] and doc.get("compute"):
        default_compute = ("compute", doc.get("compute"))
    scope0 = {"name": ctx.run_name, "default_datastore": ctx.default_datastore}
    pdefs = definitions(doc.get("inputs"), at, "inputs", ctx)
    pin = bind_inputs(None, at, pdefs, at, scope0, ctx, set())
    # an input with a problem of its own binds to FAILED: its users report nothing more
    pin = {k: pin.get(k, FAILED) for k in pdefs}
    pout = definitions(doc.get("outputs"), at, "outputs", ctx)
    for name, entry in pout.items():
        for key in entry if isinstance(entry, Mapping) else ():
            if key not in S.OUTPUT_KEYS:
                ctx.problem(
                    at("outputs", name, key), "unknown key", S.suggest(str(key), S.OUTPUT_KEYS)
                )
    jobs = doc.get("jobs")
    if not isinstance(jobs, Mapping) or not jobs:
        ctx.problem("jobs", "the pipeline has no jobs", "add a `type: parallel` node under `jobs:`")
        return [], continue_on_failure
    cache: dict = {}
    nodes: dict[str, Node] = {}
    for name, raw in jobs.items():
        node_at = S.At(f"jobs.{name}", at.base, at.relative_to)
        node = make_node(str(name), raw, node_at, cache, at.base, ctx)
        if node is not None:
            nodes[node.name] = node
    for node in nodes.values():
        node.outputs = place_outputs(
            node.name, node.output_defs, node.def_at, node.output_vals, node.at, pout, at, ctx
        )
    scope: dict[str, object] = {**scope0, **{f"parent.inputs.{k}": v for k, v in pin.items()}}
    for node in nodes.values():
        for out in node.outputs.values():
            scope[f"parent.jobs.{node.name}.outputs.{out.name}"] = bound_output(node, out)
    steps: dict[str, ParallelStep | CommandStep] = {}
    for node in nodes.values():
        used: set[str] = set()
        node.inputs = bind_inputs(
            node.input_defs, node.def_at, node.input_vals, node.at, scope, ctx, used
        )
        node.deps = {u.split(".")[2] for u in used if u.startswith("parent.jobs.")}
        field_scope = {k: v for k, v in scope.items() if k.startswith("parent.inputs.")}
        step = build_step(node, field_scope, default_compute, ctx)
        if step is not None:
            steps[node.name] = step
    order = dependency_order({n.name: n.deps for n in nodes.values()}, ctx)
    result: list[ParallelStep | CommandStep] = []
    for name in order:
        if name in steps:
            deps = tuple(d for d in order if d in nodes[name].deps)
            result.append(replace(steps[name], depends_on=deps))
    return result, continue_on_failure


def _single(doc: dict, at: S.At, stem: str, ctx: S.Context) -> list[ParallelStep | CommandStep]:
    """A parallel (or command) component file, or a bare ``type: parallel`` file."""
    kind = str(doc["type"])
    S.check_keys(doc, S.PARALLEL_FILE if kind == "parallel" else S.COMMAND_FILE, at, (), ctx)
    name = str(doc.get("name") or stem)
    fields_, origins = merge({}, at, doc, at)
    node = Node(
        name=name,
        type=kind,
        fields=fields_,
        origins=origins,
        at=at,
        input_defs=None,
        def_at=at,
        input_vals=definitions(doc.get("inputs"), at, "inputs", ctx),
        output_defs=None,
        output_vals=definitions(doc.get("outputs"), at, "outputs", ctx),
    )
    node.outputs = place_outputs(name, None, at, node.output_vals, at, {}, at, ctx)
    scope = {"name": ctx.run_name, "default_datastore": ctx.default_datastore}
    node.inputs = bind_inputs(None, at, node.input_vals, at, scope, ctx, set())
    step = build_step(node, {}, ("compute", None), ctx)
    return [step] if step is not None else []
