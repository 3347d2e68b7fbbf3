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


#: The training guide's setting names that are not the recipe key's last part.
GUIDE_NAMES = {"learning_rate": "optimizer.lr", "lr": "optimizer.lr", "min_learning_rate": "schedule.min_lr",
               "min_lr": "schedule.min_lr", "max_iters": "training.max_iterations", "train_data_path": "data.train",
               "val_data_path": "data.val", "compile_model": "system.compile", "vocab_size": "data.vocab_size"}


def recipe_key_for(name: str) -> str | None:
    """The recipe key a ``--name`` option of the training guide's style most likely means."""
    import dataclasses
    import inspect

    from modulm.settings import recipe_schema

    name = name.replace("-", "_")
    if name in GUIDE_NAMES:
        return GUIDE_NAMES[name]
    for table, param in inspect.signature(recipe_schema).parameters.items():
        if isinstance(param.default, type) and dataclasses.is_dataclass(param.default):
            if name in {f.name for f in dataclasses.fields(param.default)}:
                return f"{table}.{name}"
    try:  # the default components' parameters: model.d_model, optimizer.weight_decay, schedule.warmup_iters, ...
        from modulm import plugins

        registry = plugins.load([]).registry
        for kind, component in (("model", "transformer"), ("optimizer", "adamw"), ("schedule", "cosine-warmup")):
            if name in registry.get(kind, component).schema.names:
                return f"{kind}.{name}"
    except Exception:  # no built-in plugins: no suggestion rather than a second error
        pass
    return None


def _looks_like_option(item: str) -> bool:
    if not item.startswith("-") or item == "-":
        return False
    try:
        float(item)
        return False
    except ValueError:
        return True


def place_extra_arguments(args, extras: list[str]) -> None:
    """Give the overrides typed among or after the options (``run r.toml --overwrite a.b=1``) to the
    command; anything else left over is a one-line error, with the recipe key for a ``--flag VALUE``
    in the training guide's style (``--batch_size 64`` -> ``training.batch_size=64``)."""
    takes_overrides = hasattr(args, "overrides")
    placed, i = [], 0
    while i < len(extras):
        item = extras[i]
        if _looks_like_option(item):
            name, sep, value = item.lstrip("-").partition("=")
            if not sep and i + 1 < len(extras) and not _looks_like_option(extras[i + 1]) and "=" not in extras[i + 1]:
                value = extras[i + 1]
            key = recipe_key_for(name) if takes_overrides else None
            if key:
                raise ModulmError(f"{args.command}: unknown option {item}; recipe settings are KEY=VALUE overrides: "
                                  f"write {key}={value or '...'}")
            raise ModulmError(f"{args.command}: unknown option {item}; see modulm {args.command} --help")
        if takes_overrides and "=" in item:
            placed.append(item)
        elif takes_overrides:
            raise ModulmError(f"{args.command}: unexpected argument {item!r}; recipe overrides are KEY=VALUE, "
                              "e.g. optimizer.lr=1e-3")
        else:
            raise ModulmError(f"{args.command}: unexpected argument {item!r}; see modulm {args.command} --help")
        i += 1
    if placed:
        args.overrides = list(args.overrides) + placed
