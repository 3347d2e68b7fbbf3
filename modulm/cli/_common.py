"""Helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from modulm import plugins
from modulm.errors import ModulmError


class IntermixedParser(argparse.ArgumentParser):
    """Options and positionals in any order: ``encode DIR --tokens TEXT`` as ``encode DIR TEXT --tokens``.

    Plain argparse gives an optional positional its (empty) value before the first option, so a
    positional after an option is "unrecognized"; ``parse_known_intermixed_args`` does not. A
    parser with subcommands parses as usual (its subcommands' parsers are of this class too).
    """

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        nested = any(a.nargs in (argparse.PARSER, argparse.REMAINDER) for a in self._get_positional_actions())
        if self._inside or nested:  # parse_known_intermixed_args calls parse_known_args itself
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def plugin_manager(args) -> plugins.PluginManager:
    """The plugin manager for this invocation (entry points, ``-p`` options, environment)."""
    pm = getattr(args, "plugin_manager", None) or plugins.load(getattr(args, "plugins", []) or [])
    if not any(True for _ in pm.registry.components()):
        raise ModulmError(plugins.builtins_missing_message())
    return pm


def add_recipe_arguments(parser) -> None:
    parser.add_argument("recipe", help="path to a TOML recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe values, e.g. optimizer.lr=1e-3")
