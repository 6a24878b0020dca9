"""``python -m daskprs``: the ``daskprs`` command (:func:`daskprs.cli.main`)."""

import signal
import sys

# SIGTERM interrupts as Ctrl-C does, and an interrupt exits 130 with one line, while the
# command line loads too (click): main() takes over from there
signal.signal(signal.SIGTERM, signal.default_int_handler)
try:
    from daskprs.cli import main
except KeyboardInterrupt:
    print("interrupted before the command began: nothing was done", file=sys.stderr)
    sys.exit(130)

main()
