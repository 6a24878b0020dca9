"""``python -m benchmarks <name> [options]``: run one benchmark (or ``all`` at default sizes)."""

from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

from benchmarks import NAMES


def _parser(name: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"benchmarks.{name}")
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks {name}",
        description=module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="folder for generated data, kept (default: a temp folder)")
    p.add_argument("--no-csv", action="store_true", help="do not append to benchmarks/results/")
    module.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in (*NAMES, "all"):
        print(
            "usage: python -m benchmarks NAME [options]   (NAME --help for its options)\n"
            f"names: {', '.join(NAMES)}, all (each at its default size; options such as --data "
            "are passed to each)",
            file=sys.stderr,
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[0] == "all":
        # each in its own process, so that none inherits another's imports, memory or threads
        extra = argv[1:]
        for name in NAMES:
            subprocess.run([sys.executable, "-m", "benchmarks", name, *extra], check=False)
        return 0
    # what is measured imports as an installed Python does, from cached bytecode: a shell's
    # PYTHONDONTWRITEBYTECODE=1 has every run, and each of its processes, compile again each
    # module not compiled at install time (daskprs's own in an editable install)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    args = _parser(argv[0]).parse_args(argv[1:])
    importlib.import_module(f"benchmarks.{argv[0]}").main(args)
    return 0  # benchmarks report; a missed target is printed, never an exit status


if __name__ == "__main__":
    sys.exit(main())
