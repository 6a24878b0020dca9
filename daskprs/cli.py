"""The ``daskprs`` command line (docs/cli.md): parse, call, print, exit with the right code.

Exit status: 0 success, 2 a problem with what the user gave, 42 the job ran and failed,
130 interrupted, 1 an internal error of daskprs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from daskprs.errors import DaskprsError, Interrupted, JobSpecError, UserInputError
from daskprs.settings import EnvSettings

__all__ = ["main"]

EXIT_FAILED = 42
EXIT_INTERRUPTED = 130


def _echo_err(line: str) -> None:
    from daskprs.paths import redact

    click.echo(redact(line), err=True)


def _interrupted(run_dir: str | None) -> str:
    """What to say about an interrupt outside a step's loop (planning, starting the cluster,
    a command step): how to continue the run in ``run_dir``, or that there is none yet."""
    from daskprs.rundir import RunDir

    if run_dir is not None and os.path.exists(RunDir(run_dir).record):
        return (
            "interrupted; committed work is kept in the run directory. Continue with: "
            f"daskprs run --resume {run_dir}"
        )
    return "interrupted before the run started: nothing to resume (run the job again)"


def _guard(
    fn: Callable[[], Any], run_dir: str | None = None, interrupted: str | None = None
) -> int:
    """Call ``fn`` and turn what it raises into an exit status and a message.

    Parameters
    ----------
    fn : callable
        The command's work, its imports included: an interrupt while Dask loads is one too.
    run_dir : str, optional
        The run directory of the run ``fn`` runs, for the command that continues it.
    interrupted : str, optional
        What to say about an interrupt, for a command that runs no job.
    """
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        fn()
        return 0
    except KeyboardInterrupt:
        _echo_err(interrupted or _interrupted(run_dir))
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


def _run_and_exit(call: Callable[[], Any], run_dir: str) -> None:
    """Run a job: ``call`` it once the ``DASKPRS_*`` variables are checked (a bad one is an
    exit-2 error before anything is written), and exit with the job's status (``run_dir``:
    the run's directory, named if the run is interrupted)."""
    outcome: dict[str, Any] = {}

    def go() -> None:
        EnvSettings.from_env()
        outcome["result"] = call()

    code = _guard(go, os.path.abspath(run_dir))
    result = outcome.get("result")
    if code == 0 and result is not None and not result.ok:
        code = EXIT_FAILED
    sys.exit(code)


def _existing_file(file: str) -> None:
    if not os.path.isfile(file):
        raise click.BadParameter(f"{file} does not exist or is not a file", param_hint="FILE")


def _tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--tls-ca-file``, ``--tls-cert``, ``--tls-key``: certificates for a tls:// scheduler."""
    for flag, what in reversed(
        (
            ("--tls-ca-file", "CA certificate (PEM) of a tls:// scheduler."),
            ("--tls-cert", "Client certificate (PEM) for a tls:// scheduler."),
            ("--tls-key", "Private key (PEM) of --tls-cert, if not in that file."),
        )
    ):
        fn = click.option(flag, metavar="FILE", help=what)(fn)
    return fn


def _v1_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--input``, ``--output``, ``--arguments``, ``--side-input``: what a v1
    ParallelRunConfig's ParallelRunStep gave."""
    fn = click.option(
        "--side-input",
        "side_inputs",
        multiple=True,
        metavar="NAME=PATH",
        help="v1 ParallelRunConfig: a side input, bound in --arguments as ${{inputs.NAME}}.",
    )(fn)
    fn = click.option(
        "--arguments",
        metavar="TEXT",
        help="v1 ParallelRunConfig: ParallelRunStep's arguments, one command line.",
    )(fn)
    fn = click.option(
        "--output",
        "output_path",
        metavar="FOLDER",
        help="v1 ParallelRunConfig: the output folder (default: in the run directory).",
    )(fn)
    return click.option(
        "--input",
        "input_path",
        metavar="PATH",
        help="v1 ParallelRunConfig: its dataset (a folder of files, a file, an MLTable folder).",
    )(fn)


def _staging_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--staging URL`` and ``--keep-staged``: workers that share no filesystem with the
    driver (docs/clusters.md#workers-without-a-shared-filesystem)."""
    fn = click.option(
        "--keep-staged",
        is_flag=True,
        help="Keep the staged files after a step's output is assembled.",
    )(fn)
    return click.option(
        "--staging",
        metavar="URL",
        help="Where workers that cannot see the run directory leave claims, parts and logs "
        "(s3://bucket/prefix, gs://..., abfs://..., or a folder every worker mounts).",
    )(fn)


def _security(scheduler: str | None, ca: str | None, cert: str | None, key: str | None) -> Any:
    from daskprs.execute.tls import client_security

    return client_security(scheduler, ca, cert, key)


@cli.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False))
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
@click.option(
    "--resume",
    "resume",
    metavar="RUN_DIR",
    type=click.Path(file_okay=False),
    help="Continue the run in RUN_DIR from its ledger.",
)
@click.option("--force", is_flag=True, help="With --resume: accept a changed job or input.")
@click.option("--force-rerun", is_flag=True, help="Run every step: reuse none from an earlier run.")
@click.option(
    "--cache",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Also reuse unchanged steps of the runs in DIR (besides the run directory's parent).",
)
@_v1_options
@_staging_options
@_tls_options
def run(
    file: str | None,
    run_dir: str | None,
    scheduler: str | None,
    sets: tuple[str, ...],
    workers: int | None,
    resume: str | None,
    force: bool,
    force_rerun: bool,
    cache: str | None,
    input_path: str | None,
    output_path: str | None,
    arguments: str | None,
    side_inputs: tuple[str, ...],
    staging: str | None,
    keep_staged: bool,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run a job FILE (pipeline, parallel component or type: parallel YAML, or one written by
    the Python SDK's dump()).

    With --resume RUN_DIR, continue that run: only the mini-batches not yet committed run.
    """
    # daskprs.api (Dask, pandas) is imported in the guarded calls: an interrupt while it
    # loads exits 130 too
    tls = (scheduler, tls_ca_file, tls_cert, tls_key)
    if resume is not None:
        v1 = input_path or output_path or arguments is not None or side_inputs
        if run_dir or sets or v1 or cache or force_rerun:
            raise click.UsageError(
                "--resume continues a run as it was started: leave out --run-dir, --set, "
                "--input, --output, --arguments, --side-input, --cache and --force-rerun "
                "(start a new run to change them)"
            )
        if file is not None:
            _existing_file(file)

        def resume_run() -> Any:
            from daskprs.api import resume_job

            return resume_job(
                resume,
                file,
                force=force,
                scheduler=scheduler,
                workers=workers,
                security=_security(*tls),
                staging=staging,
                keep_staged=keep_staged,
            )

        _run_and_exit(resume_run, resume)
    if file is None:
        raise click.UsageError("give a job FILE to run, or --resume RUN_DIR")
    if force:
        raise click.UsageError("--force goes with --resume")
    _existing_file(file)
    from daskprs.rundir import default_run_dir

    # chosen here, as run_job would choose it, so that an interrupt can name it
    new_dir = run_dir or default_run_dir(os.path.splitext(os.path.basename(file))[0])

    def new_run() -> Any:
        from daskprs.api import run_job

        return run_job(
            file,
            sets=sets,
            run_dir=new_dir,
            scheduler=scheduler,
            workers=workers,
            security=_security(*tls),
            input_path=input_path,
            output_path=output_path,
            cache=cache,
            force_rerun=force_rerun,
            arguments=arguments,
            side_inputs=side_inputs,
            staging=staging,
            keep_staged=keep_staged,
        )

    _run_and_exit(new_run, new_dir)


@cli.command("rerun-failed")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tcp://host:8786.")
@click.option(
    "--workers", type=click.IntRange(min=1), help="Worker processes of the embedded cluster."
)
@_staging_options
@_tls_options
def rerun_failed(
    run_dir: str,
    scheduler: str | None,
    workers: int | None,
    staging: str | None,
    keep_staged: bool,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the failed and cancelled mini-batches of a finished run again, and re-assemble
    its output (for example after fixing the entry script)."""

    def rerun() -> Any:
        from daskprs.api import resume_job

        return resume_job(
            run_dir,
            rerun_failed=True,
            scheduler=scheduler,
            workers=workers,
            security=_security(scheduler, tls_ca_file, tls_cert, tls_key),
            staging=staging,
            keep_staged=keep_staged,
        )

    _run_and_exit(rerun, run_dir)


@cli.command()
@click.argument("file", required=True, type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="As for `run`.")
@_v1_options
def validate(
    file: str,
    sets: tuple[str, ...],
    input_path: str | None,
    output_path: str | None,
    arguments: str | None,
    side_inputs: tuple[str, ...],
) -> None:
    """Check a job FILE without running it."""
    _existing_file(file)
    checked = (file, sets, input_path, output_path, arguments, side_inputs)
    sys.exit(_guard(lambda: _validate(checked), interrupted="interrupted: nothing was checked"))


def _validate(
    checked: tuple[str, tuple[str, ...], str | None, str | None, str | None, tuple[str, ...]],
) -> None:
    """``validate``'s work (under its guard): the file, ``--set``s and v1 options."""
    file, sets, input_path, output_path, arguments, side_inputs = checked
    from daskprs.job.load import validate_file

    job, problems, notes = validate_file(
        file, sets, input_path, output_path, arguments, side_inputs
    )
    for note in notes:
        click.echo(f"note: {note}")
    if problems:
        click.echo(f"{file}: {len(problems)} problem(s):", err=True)
        for p in problems:
            click.echo(f"  - {p}", err=True)
        sys.exit(2)
    assert job is not None
    from daskprs.pipeline import check_before_running

    # what run would find within seconds of starting: the inputs planned from their
    # metadata, the entry scripts' imports, the output locations
    problems_found, plan_notes = check_before_running(job)
    for note in plan_notes:
        click.echo(f"note: {note}")
    if problems_found:
        click.echo(f"{file}: {len(problems_found)} problem(s):", err=True)
        for problem in problems_found:
            click.echo(f"  - {problem}", err=True)
        sys.exit(2)
    steps = ", ".join(f"{s.name} ({s.kind})" for s in job.steps)
    click.echo(f"{file}: valid ({steps})")


def _run_dir_view(run_dir: str) -> Any:
    from daskprs.observe.runview import read_run

    try:
        return read_run(run_dir)
    except DaskprsError as err:
        _echo_err(f"error: {err}")
        sys.exit(err.exit_code)


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def status(run_dir: str) -> None:
    """A one-screen summary of RUN_DIR: state per step, counts, failed mini-batches, and
    what to run next. Works on a finished, failed, interrupted or still-running run."""

    def show() -> None:
        from daskprs.observe.status import format_status

        click.echo(format_status(_run_dir_view(run_dir)))

    sys.exit(_guard(show, interrupted="interrupted"))


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="The HTML file to write (default: RUN_DIR/report.html).",
)
def report(run_dir: str, output: str | None) -> None:
    """Write a self-contained HTML report of RUN_DIR: outcome and budgets, a timeline of
    tries per process, throughput, the slowest mini-batches, failures and resource use."""
    sys.exit(_guard(lambda: _report(run_dir, output), interrupted="interrupted: no report written"))


def _report(run_dir: str, output: str | None) -> None:
    from daskprs.observe.report import write_report

    view = _run_dir_view(run_dir)
    target = os.path.abspath(output or os.path.join(view.root, "report.html"))
    try:
        write_report(view, target)
    except OSError as err:  # a read-only or full filesystem, missing permissions
        raise UserInputError(
            f"cannot write the report {target}: {err.strerror or err}. Write it elsewhere "
            f"with -o FILE (daskprs report {run_dir} -o FILE)"
        ) from err
    click.echo(f"report written to {target}")


def _after_interrupt() -> None:
    """Once an interrupt is said and the exit status is 130: what Dask logs while the
    interpreter shuts down what a second interrupt left open (a cluster still starting) is
    noise, and another interrupt ends the process at once, with the same status."""
    logging.disable(logging.CRITICAL)

    def end_now(signum: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, end_now)
    signal.signal(signal.SIGTERM, end_now)


def main() -> None:
    """Entry point of the ``daskprs`` command.

    SIGTERM interrupts as Ctrl-C does from here on, and an interrupt at any moment exits
    130 with one line: the commands say what it stopped, and one that comes before a
    command has begun (while its arguments are parsed) stopped nothing.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        # not standalone: click would end an interrupt with "Aborted!" and status 1
        cli.main(prog_name="daskprs", standalone_mode=False)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (click.Abort, KeyboardInterrupt):
        _echo_err("interrupted before the command began: nothing was done")
        _after_interrupt()
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit as done:
        if done.code == EXIT_INTERRUPTED:
            _after_interrupt()
        raise


if __name__ == "__main__":
    main()
