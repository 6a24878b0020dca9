"""A job built with Azure's Python SDK v2 (``azure-ai-ml``), or given as a mapping, made into
the YAML document a job file holds (README "A pipeline built with the Python SDK").

The SDK writes its objects as CLI v2 YAML itself (``PipelineJob.dump``, a ``Parallel`` node's
and a ``ParallelComponent``'s ``dump``); daskprs reads that document as it reads a job file.
Nothing here imports ``azure.ai.ml``: an SDK object is recognised by its class's module and
asked to write itself, so daskprs needs the SDK only where a user built a job with it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import yaml

from daskprs.errors import UserInputError

__all__ = ["is_sdk_object", "job_document", "job_label", "job_name", "node_as_pipeline"]


def is_sdk_object(job: object) -> bool:
    """Whether ``job`` is an object of Azure's Python SDK v2 that can write itself as YAML."""
    module = type(job).__module__ or ""
    return module.split(".")[:3] == ["azure", "ai", "ml"] and callable(getattr(job, "dump", None))


def job_document(job: object) -> dict[str, Any]:
    """The job document of an SDK object (a ``PipelineJob``, a node or component made by
    ``parallel_run_function``) or of a mapping (a job file's YAML as Python values).

    Raises
    ------
    UserInputError
        ``job`` is neither, the SDK cannot write it, or the mapping is not plain YAML values.
    """
    if is_sdk_object(job):  # first: an SDK node is a dict too
        stream = io.StringIO()
        try:
            job.dump(stream)  # type: ignore[attr-defined]
        except Exception as err:  # the SDK's own validation: say what it said
            raise UserInputError(
                f"the Python SDK cannot write this {type(job).__name__} as YAML: {err}"
            ) from err
        doc = yaml.safe_load(stream.getvalue())
    elif isinstance(job, Mapping):
        try:  # a deep copy that keeps only what a YAML file can hold
            doc = yaml.safe_load(yaml.safe_dump(dict(job), sort_keys=False))
        except yaml.YAMLError as err:
            raise UserInputError(
                f"the job mapping holds a value a job file cannot: {err}; give strings, "
                "numbers, lists and mappings (as yaml.safe_load returns them)"
            ) from err
    else:
        raise UserInputError(
            f"cannot run a {type(job).__name__}: give a job file's path, a mapping of its "
            "YAML, or an azure-ai-ml PipelineJob, parallel node or parallel component"
        )
    if not isinstance(doc, dict):
        raise UserInputError("the job must be a mapping (a job file's YAML document)")
    return doc


def job_name(doc: Mapping) -> str:
    """A file name stem for a job document: its ``name``, ``display_name``, or its
    component's name (a node), made safe for a file name; ``job`` when it has none."""
    component = doc.get("component")
    for value in (
        doc.get("name"),
        doc.get("display_name"),
        component.get("name") if isinstance(component, Mapping) else None,
    ):
        if isinstance(value, str) and value.strip():
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", value.strip()).strip("._") or "job"
    return "job"


def job_label(job: object, doc: Mapping) -> str:
    """How messages name a job given to ``run_job`` as an object, ``doc`` its document: the
    SDK object's class and name (``the PipelineJob iris_batch_prediction given to run_job``),
    or the mapping."""
    if not is_sdk_object(job):
        return "the job given to run_job"
    name = job_name(doc)
    return f"the {type(job).__name__}{f' {name}' if name != 'job' else ''} given to run_job"


def node_as_pipeline(doc: Mapping, stem: str) -> dict[str, Any]:
    """A file holding one node (``type: parallel`` or ``command`` with a ``component``) as a
    pipeline of that node, named as its component (else ``stem``), as the SDK names it."""
    component = doc.get("component")
    name = component.get("name") if isinstance(component, Mapping) else None
    if not isinstance(name, str) or not name.strip():
        name = stem
    return {"type": "pipeline", "jobs": {name: dict(doc)}}
