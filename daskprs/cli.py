"""The ``daskprs`` command line (SPEC section 0): parse, call, print, exit with the right code.

Exit status: 0 success, 2 a problem with what the user gave, 42 the job ran and failed,
130 interrupted, 1 an internal error of daskprs.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from daskprs.errors import DaskprsError, Interrupted, JobSpecError

__all__ = ["main"]

EXIT_FAILED = 42
EXIT_INTERRUPTED = 130


def _echo_err(line: str) -> None:
    click.echo(line, err=True)


def _guard(fn: Callable[[], Any]) -> int:
    """Call ``fn`` and turn what it raises into an exit status and a message."""
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        fn()
        return 0
    except KeyboardInterrupt:
        _echo_err("interrupted; committed work is kept in the run directory")
        return EXIT_INTERRUPTED
    except Interrupted as err:
        _echo_err(f"interrupted: {err}")
        return EXIT_INTERRUPTED
    except JobSpecError as err:
        _echo_err(f"error: {err}")
        return err.exit_code
    except DaskprsError as err:
        _echo_err(f"error: {err}")
        return err.exit_code
    except Exception:
        _echo_err("internal error of daskprs (please report it):\n" + traceback.format_exc())
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="daskprs")
def cli() -> None:
    """Run Azure Machine Learning parallel jobs on any Dask cluster."""


@cli.command()
@click.argument("file", required=True, type=click.Path(dir_okay=False))
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run directory (new or empty).")
@click.option("--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tcp://host:8786.")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Bind an input (inputs.x=VALUE) or override a node field (jobs.<node>.<field>=VALUE).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes of the embedded cluster."
)
def run(
    file: str,
    run_dir: str | None,
    scheduler: str | None,
    sets: tuple[str, ...],
    workers: int | None,
) -> None:
    """Run a job FILE (pipeline, parallel component or type: parallel YAML)."""
    import os

    from daskprs.api import run_job

    if not os.path.isfile(file):
        raise click.BadParameter(f"{file} does not exist or is not a file", param_hint="FILE")
    outcome: dict[str, Any] = {}

    def go() -> None:
        outcome["result"] = run_job(
            file, sets=sets, run_dir=run_dir, scheduler=scheduler, workers=workers
        )

    code = _guard(go)
    result = outcome.get("result")
    if code == 0 and result is not None and not result.ok:
        code = EXIT_FAILED
    sys.exit(code)


@cli.command()
@click.argument("file", required=True, type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="As for `run`.")
def validate(file: str, sets: tuple[str, ...]) -> None:
    """Check a job FILE without running it."""
    import os

    from daskprs.spec import validate_file

    if not os.path.isfile(file):
        raise click.BadParameter(f"{file} does not exist or is not a file", param_hint="FILE")
    job, problems, notes = validate_file(file, sets)
    for note in notes:
        click.echo(f"note: {note}")
    if problems:
        click.echo(f"{file}: {len(problems)} problem(s):", err=True)
        for p in problems:
            click.echo(f"  - {p}", err=True)
        sys.exit(2)
    assert job is not None
    steps = ", ".join(f"{s.name} ({s.kind})" for s in job.steps)
    click.echo(f"{file}: valid ({steps})")


def main() -> None:
    """Entry point of the ``daskprs`` command."""
    cli(prog_name="daskprs")


if __name__ == "__main__":
    main()
