"""The ``modulm`` command line: one small module per subcommand.

Each module in this package defines ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace, returning an exit code); plugins add theirs through
the ``modulm_add_commands`` hook (``tokenizer`` and ``data`` come from the built-in plugins).
User mistakes raise :class:`~modulm.errors.ModulmError`; they print as ``modulm: error: …`` and
exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

import modulm
from modulm.cli._common import IntermixedParser
from modulm.errors import ModulmError, RecipeError, allocation_size, is_out_of_memory

EXIT_USER_ERROR = 2


class Parser(IntermixedParser):
    """argparse with the command's error contract: one line ``modulm: error: ...``, exit 2."""

    def error(self, message: str):
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{command}: " if command else ""
        hint = f"; see modulm {command} --help" if command else "; see modulm --help"
        print(f"modulm: error: {where}{message}{hint}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def build_parser(pm=None) -> argparse.ArgumentParser:
    """The ``modulm`` parser: the core's commands, then those of ``pm``'s plugins (if given)."""
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
    if pm is not None:
        pm.hook.modulm_add_commands.call_historic(kwargs={"subparsers": subparsers, "registry": pm.registry})
        subparsers._choices_actions.sort(key=lambda action: action.dest)  # --help lists all commands A-Z
    return parser


def _plugin_arguments(argv: Sequence[str]) -> list[str]:
    """The ``-p`` values before the command: the plugins must be loaded before the parser is built."""
    found, i = [], 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "--":
        if argv[i] == "-p" and i + 1 < len(argv):
            found.append(argv[i + 1])
            i += 1
        elif argv[i].startswith("-p") and not argv[i].startswith("--"):
            found.append(argv[i][2:])
        i += 1
    return found


def main(argv: Sequence[str] | None = None) -> int:
    from modulm import plugins
    from modulm.cli._common import place_extra_arguments

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        pm = plugins.load(_plugin_arguments(argv))
    except ModulmError as exc:
        if "--debug" in argv:
            raise
        print(f"modulm: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    parser = build_parser(pm)
    args, extras = parser.parse_known_args(argv)
    args.plugin_manager = pm
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
    except (MemoryError, RuntimeError) as exc:  # outside training (which names its settings): a build, a tokenizer
        if args.debug or not is_out_of_memory(exc):
            raise
        asked = allocation_size(exc)
        print(f"modulm: error: {args.command}: out of memory{f' (could not allocate {asked})' if asked else ''}; "
              "see docs/troubleshooting.md#out-of-memory for the settings that make it smaller", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("modulm: interrupted", file=sys.stderr)
        return 130
