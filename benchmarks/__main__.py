"""``python -m benchmarks <name> [options]``: run one benchmark (or ``all`` at default sizes)."""

from __future__ import annotations

import argparse
import importlib
import sys

from benchmarks import NAMES


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="daskprs benchmarks (see BENCHMARKS.md)"
    )
    sub = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in NAMES:
        module = importlib.import_module(f"benchmarks.{name}")
        p = sub.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--data", help="folder for generated data (default: a temp folder)")
        p.add_argument(
            "--no-csv", action="store_true", help="do not append to benchmarks/results/"
        )
        module.add_arguments(p)
    sub.add_parser("all", help="run every benchmark at its default size, one after another")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = NAMES if args.name == "all" else (args.name,)
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        module.main(_parser().parse_args([name]) if args.name == "all" else args)
    return 0  # benchmarks report; a missed target is printed, never an exit status


if __name__ == "__main__":
    sys.exit(main())
