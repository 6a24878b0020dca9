"""Before the first mini-batch: can the entry script's process start, and import what the
script imports?

An entry script runs in the workers' Python, or in the interpreter ``daskprs.yaml`` maps its
``task.environment`` to. A missing package would otherwise surface as ``init()`` failing on
every process; here it is named once, with the fix, before the cluster does any work.
Only top-level imports outside ``try`` blocks are checked: an optional import guarded by
``try``/``except ImportError`` is the script's own business.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

from daskprs.errors import UserInputError
from daskprs.job.model import ParallelStep

__all__ = [
    "check_command",
    "check_entry_script",
    "check_step_script",
    "command_script",
    "script_imports",
]

# What daskprs's entry-script process needs in another interpreter (docs/design.md#layers);
# for tabular input fsspec too: the readers open the files through it.
_CHILD_NEEDS = ("pandas", "pyarrow")
_TABULAR_NEEDS = ("fsspec",)

_PROBE = r"""
import importlib.util, json, sys
sys.path.insert(0, sys.argv[1])
missing = []
for name in json.loads(sys.argv[2]):
    try:
        found = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        missing.append(name)
print(json.dumps({"version": list(sys.version_info[:2]), "missing": missing}))
"""


def script_imports(path: str) -> dict[str, int]:
    """The top-level packages an entry script imports unconditionally, with the line of the
    first import of each (pure: reads the file, runs nothing)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found: dict[str, int] = {}
    for node in tree.body:  # module level only; not inside try, if, def or class
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name.split(".")[0], node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.setdefault(node.module.split(".")[0], node.lineno)
    return found


def _found_here(name: str) -> bool:
    """Whether this interpreter finds the top-level module ``name`` (imports nothing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _probe(python: str, code_dir: str, names: list[str], env: dict[str, str]) -> dict:
    try:
        proc = subprocess.run(
            [python, "-c", _PROBE, code_dir, json.dumps(names)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise UserInputError(f"cannot start the Python interpreter {python}: {err}") from err
    if proc.returncode != 0:
        raise UserInputError(
            f"the Python interpreter {python} failed to start: "
            f"{(proc.stderr.strip().splitlines() or ['no message'])[-1]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_step_script(step: ParallelStep, tabular: bool) -> None:
    """:func:`check_entry_script` for a parallel step (``tabular``: its input is a table)."""
    check_entry_script(
        step.name, step.code_dir, step.entry_script, step.python, step.environment, tabular
    )


def check_entry_script(
    step: str,
    code_dir: str,
    entry_script: str,
    python: str | None,
    environment: str | None,
    tabular: bool = False,
) -> None:
    """Raise :class:`UserInputError` naming what the entry script's process cannot import.

    Parameters
    ----------
    step : str
        The step's name, for messages.
    code_dir, entry_script : str
        The code folder and the script in it.
    python : str or None
        The interpreter ``daskprs.yaml`` maps the step's environment to (None: this one).
    environment : str or None
        The name of the step's ``task.environment`` (for the suggested mapping).
    tabular : bool
        The step's input is tabular: a mapped interpreter needs fsspec too.
    """
    from daskprs.execute.slot import package_root, package_shim

    script = os.path.join(code_dir, entry_script)
    try:
        imports = script_imports(script)
    except (OSError, SyntaxError, ValueError):
        return  # init() reports a script that cannot be read or parsed, with its line
    local = {os.path.splitext(n)[0] for n in os.listdir(code_dir)}
    names = sorted(n for n in imports if n not in local and n not in sys.builtin_module_names)
    env = dict(os.environ)
    mapped = python is not None
    if python:
        env["PYTHONPATH"] = package_shim()
        needs = (*_CHILD_NEEDS, *(_TABULAR_NEEDS if tabular else ()))
        answer = _probe(python, code_dir, [*needs, *names], env)
        where = f"the interpreter {python} of environment {environment}"
        if tuple(answer["version"]) < (3, 11):
            raise UserInputError(
                f"step {step}: {where} is Python {'.'.join(map(str, answer['version']))}; "
                "daskprs runs entry scripts in Python 3.11 or newer"
            )
        lacking = [n for n in needs if n in answer["missing"]]
        if lacking:
            raise UserInputError(
                f"step {step}: {where} cannot run daskprs's entry-script process: it lacks "
                f"{', '.join(lacking)}. Install them there: {python} -m pip install "
                + " ".join(lacking)
            )
    else:
        # this interpreter imports its own standard library: nothing else to ask, no probe
        # (a Python started for nothing took CPU from the processes' init()), unless a
        # module of it was left out of this build (tkinter without Tk): then it is asked
        names = [n for n in names if n not in sys.stdlib_module_names or not _found_here(n)]
        if not names:
            return
        python = sys.executable
        root = package_root()
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        answer = _probe(python, code_dir, names, env)
        where = f"this Python ({python})"
    missing = [n for n in names if n in answer["missing"]]
    if not missing:
        return
    what = ", ".join(f"{n} (line {imports[n]})" for n in missing)
    message = f"step {step}: the entry script {entry_script} imports {what}, which {where} "
    message += "cannot import. "
    if mapped:
        message += f"Install {' '.join(missing)} in that environment."
    else:
        name = environment or "my-env"
        message += (
            "Install it, or run the step in a Python environment that has it: "
            + ("" if environment else "give the step `task.environment: my-env` and ")
            + "map the environment in daskprs.yaml next to the job file:\n"
            f"  environments:\n    {name}: /path/to/env/bin/python"
        )
    raise UserInputError(message)


# The names a command runs Python by: python, python3, python3.12 (a path to one too).
_PYTHON_NAME = re.compile(r"^python(\d+(\.\d+)?)?$")
_SHELL_SEPARATORS = ("&&", "||", ";", "|", "&")


def command_script(command: str, code_dir: str) -> list[tuple[str, str, str]]:
    """The Python programs a command step's ``command`` runs: ``(interpreter, file, shown)``
    for each ``python script.py ...`` and ``python -m module ...`` in it whose file is in the
    code folder (pure: reads no file). ``interpreter`` is the first word as written; for a
    module not in the code folder ``file`` is empty and ``shown`` the module's name."""
    try:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:
        return []
    found: list[tuple[str, str, str]] = []
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in _SHELL_SEPARATORS:
            segment.append(token)
            continue
        words = [w for w in segment if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
        segment = []
        if not words or not _PYTHON_NAME.match(os.path.basename(words[0])):
            continue
        rest = words[1:]
        while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c", "-"):
            if rest[0] in ("-W", "-X"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2 and rest[0] == "-m":
            module = rest[1]
            base = os.path.join(code_dir, *module.split("."))
            for candidate in (f"{base}.py", os.path.join(base, "__main__.py")):
                if os.path.isfile(candidate):
                    found.append((words[0], candidate, module))
                    break
            else:
                found.append((words[0], "", module))
        elif rest and rest[0].endswith(".py"):
            found.append((words[0], os.path.join(code_dir, rest[0]), rest[0]))
    return found


def check_command(
    step: str,
    code_dir: str,
    command: str,
    env: dict[str, str],
    environment: str | None,
    mapped: bool,
) -> None:
    """Raise :class:`UserInputError` naming what a command step's Python program
    (``python script.py``, ``python -m module``) cannot import, in the interpreter the command
    will start (found on the command's ``PATH``, ``env``): its top-level imports, as
    :func:`check_entry_script` checks an entry script's."""
    for first, script, shown in command_script(command, code_dir):
        python = first if os.sep in first else shutil.which(first, path=env.get("PATH"))
        if python is None:
            continue  # the shell says "command not found", with the name
        python = os.path.join(code_dir, python)
        if script:
            try:
                imports = script_imports(script)
            except (OSError, SyntaxError, ValueError):
                continue  # Python reports a script that cannot be read or parsed
            # sys.path[0]: the script's folder, or the working folder for -m
            folder = os.path.dirname(script) if shown.endswith(".py") else code_dir
        else:
            imports, folder = {shown.split(".")[0]: 0}, code_dir
        local = {os.path.splitext(n)[0] for n in os.listdir(folder)}
        names = sorted(n for n in imports if n not in local and n not in sys.builtin_module_names)
        if not names:
            continue
        answer = _probe(python, folder, names, env)
        missing = [n for n in names if n in answer["missing"]]
        if not missing:
            continue
        what = ", ".join(
            f"{n} (line {imports[n]})" if imports[n] else f"the module {n}" for n in missing
        )
        where = (
            f"the interpreter {python} of environment {environment}"
            if mapped
            else f"the interpreter {python} on its PATH"
        )
        message = f"step {step}: the command runs {shown}, which imports {what}; {where} "
        message += "cannot import it. "
        if mapped:
            message += f"Install {' '.join(missing)} in that environment."
        else:
            name = environment or "my-env"
            message += (
                "Install it, or run the command in a Python environment that has it: "
                + ("" if environment else "give the step `environment: my-env` and ")
                + "map the environment in daskprs.yaml next to the job file:\n"
                f"  environments:\n    {name}: /path/to/env/bin/python"
            )
        raise UserInputError(message)
