"""A small test kit for daskprs jobs (docs/design.md#a-test-kit-for-failure-paths): write a
one-step job folder, find its output, and poll for a state instead of sleeping. Used by the
project's tests and benchmarks; users may use it to test their own entry scripts.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from daskprs.rundir import RunDir

__all__ = ["flaky_script", "output_of", "poll_for", "write_job"]


def write_job(
    folder: Path,
    script: str,
    *,
    input_yaml: str,
    mini_batch_size: str = '"2"',
    extra: str = "",
    program_arguments: str = "",
    append_row: bool = True,
    settings: str = "",
    max_concurrency: int = 2,
) -> Path:
    """Write ``folder/job.yml``: a pipeline with one inline parallel node ``score`` whose
    entry script ``code/score.py`` is ``script``.

    Parameters
    ----------
    folder : Path
        Where the job file and its ``code`` folder go (created).
    script : str
        The entry script's source.
    input_yaml : str
        The YAML body of the node's data input ``data`` (``type: uri_folder\\npath: ./x``).
    mini_batch_size : str
        As written in YAML (``'"2"'``, ``'"1kb"'``).
    extra : str
        More node fields, as YAML lines.
    program_arguments : str
        ``task.program_arguments``, if any.
    append_row : bool
        Whether ``task.append_row_to`` is ``${{outputs.result}}`` (a ``uri_file`` output).
    settings : str
        Pipeline-level YAML lines (``inputs:``, ``settings:``).
    max_concurrency : int
        ``max_concurrency_per_instance``.

    Returns
    -------
    Path
        The job file.
    """
    folder = Path(folder)
    (folder / "code").mkdir(parents=True, exist_ok=True)
    (folder / "code" / "score.py").write_text(textwrap.dedent(script))
    args = (
        f"      program_arguments: >-\n        {program_arguments}\n" if program_arguments else ""
    )
    append = "      append_row_to: ${{outputs.result}}\n" if append_row else ""
    text = f"""\
type: pipeline
{settings}
jobs:
  score:
    type: parallel
    inputs:
      data:
{textwrap.indent(textwrap.dedent(input_yaml).strip(), " " * 8)}
    outputs:
      result:
        type: uri_file
    input_data: ${{{{inputs.data}}}}
    mini_batch_size: {mini_batch_size}
    max_concurrency_per_instance: {max_concurrency}
{textwrap.indent(textwrap.dedent(extra).strip(), " " * 4)}
    task:
      type: run_function
      code: ./code
      entry_script: score.py
{args}{append}"""
    path = folder / "job.yml"
    path.write_text(text)
    return path


def flaky_script(failures: int = 1, error: str = "first try fails") -> str:
    """An entry script whose ``run()`` raises ``RuntimeError(error)`` on the first
    ``failures`` tries of every mini-batch, then returns its files' names (one a line).

    It counts tries with marker files in the folder ``$MARKS`` (give it through the job's
    ``environment_variables``), so the count survives killed and replaced processes.
    """
    return textwrap.dedent(
        f"""
        import os

        def run(mini_batch, context):
            marks = os.environ["MARKS"]
            tried = len([m for m in os.listdir(marks)
                         if m.startswith(f"{{context.minibatch_index}}.")])
            if tried < {failures}:
                open(os.path.join(marks, f"{{context.minibatch_index}}.{{tried}}"), "w").close()
                raise RuntimeError({error!r})
            return [os.path.basename(p) for p in mini_batch]
        """
    )


def output_of(run_dir: Path, step: str = "score", name: str = "result") -> Path:
    """The ``append_row_to`` file of an output without a path, in a run directory."""
    return Path(RunDir(str(run_dir)).output(step, name)) / "parallel_run_step.txt"


def poll_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    """Wait until ``predicate()`` is truthy and return it; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s: {predicate}")
        time.sleep(interval)
