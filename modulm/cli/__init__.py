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


class Parser(argparse.ArgumentParser):
    """argparse with the command's error contract: one line ``modulm: error: ...``, exit 2."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        hint = f"; see modulm {command} --help" if command else "; see modulm --help"
        print(f"modulm: error: {where}{message}{hint}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="modulm", description="Train Transformer language models from modular recipes.")
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
    from modulm.cli._common import place_extra_arguments

    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        place_extra_arguments(args, extras)
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
    except OSError as exc:  # a file the command reads or writes: disk full, permission, I/O error
        if args.debug or not exc.filename:
            raise
        print(f"modulm: error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("modulm: interrupted", file=sys.stderr)
        return 130
