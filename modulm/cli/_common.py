"""Helpers shared by the subcommands."""

from __future__ import annotations

from modulm import plugins
from modulm.errors import ModulmError


def plugin_manager(args) -> plugins.PluginManager:
    """The plugin manager for this invocation (entry points, ``-p`` options, environment)."""
    pm = plugins.load(getattr(args, "plugins", []) or [])
    if not any(True for _ in pm.registry.components()):
        raise ModulmError(plugins.builtins_missing_message())
    return pm


def add_recipe_arguments(parser) -> None:
    parser.add_argument("recipe", help="path to a TOML recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe values, e.g. optimizer.lr=1e-3")
