"""``python -m benchmarks <name> [options]``: run one benchmark (or ``all`` at default sizes)."""

from __future__ import annotations

import argparse
import importlib
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
            f"names: {', '.join(NAMES)}, all (each at its default size)",
            file=sys.stderr,
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    names = NAMES if argv[0] == "all" else (argv[0],)
    for name in names:
        args = _parser(name).parse_args(argv[1:] if argv[0] == name else [])
        importlib.import_module(f"benchmarks.{name}").main(args)
    return 0  # benchmarks report; a missed target is printed, never an exit status


if __name__ == "__main__":
    sys.exit(main())
