"""The ``modulm`` command line: one small module per subcommand.

Each module in this package defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace, returning an exit code). User mistakes raise
:class:`~modulm.errors.ModulmError`; they print as ``modulm: error: …`` and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

import modulm
from modulm.errors import ModulmError, RecipeError

EXIT_USER_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modulm", description="Train Transformer language models from modular recipes.")
    parser.add_argument("--version", action="version", version=f"modulm {modulm.__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument(
        "-p", dest="plugins", action="append", default=[], metavar="NAME",
        help="load plugin module NAME; -p no:NAME blocks plugin NAME (repeatable)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return int(args.func(args) or 0)
    except RecipeError as exc:
        if args.debug:
            raise
        for problem in exc.problems:
            print(f"modulm: error: {problem}", file=sys.stderr)
        return EXIT_USER_ERROR
    except ModulmError as exc:
        if args.debug:
            raise
        print(f"modulm: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("modulm: interrupted", file=sys.stderr)
        return 130
