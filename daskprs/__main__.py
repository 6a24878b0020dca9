"""``python -m daskprs`` and the ``daskprs`` command: :func:`daskprs.cli.main`, with SIGTERM
taken as Ctrl-C and an interrupt exiting 130 with one line from the first line on."""

import signal
import sys


def main() -> None:
    """The ``daskprs`` command."""
    # SIGTERM interrupts as Ctrl-C does, and an interrupt exits 130 with one line, while the
    # command line loads too (click): the CLI's main() takes over from there
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        from daskprs.cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted before the command began: nothing was done", file=sys.stderr)
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
