"""``modulm validate RECIPE [overrides]``: check a recipe against the registry without building it."""

from __future__ import annotations

import sys

from modulm.cli._common import add_recipe_arguments, plugin_manager


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="check a recipe; report every problem at once")
    add_recipe_arguments(p)
    p.add_argument("--print", dest="print_resolved", action="store_true", help="print the resolved recipe as TOML")
    p.set_defaults(func=run)


def run(args) -> int:
    from modulm.assemble import resolved_recipe
    from modulm.recipe import load_recipe, validate
    from modulm.tomlwrite import dumps

    pm = plugin_manager(args)
    recipe = load_recipe(args.recipe, args.overrides)
    bound = validate(recipe, pm.registry)
    for line in recipe.warnings:
        print(f"modulm: warning: {line}", file=sys.stderr)
    if args.print_resolved:
        sys.stdout.write(dumps(resolved_recipe(bound)))
    else:
        print(f"{args.recipe}: ok")
    return 0
