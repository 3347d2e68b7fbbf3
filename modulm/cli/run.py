"""``modulm run RECIPE [overrides]``: validate, assemble and train; print a sample at the end."""

from __future__ import annotations

from modulm.cli._common import add_recipe_arguments, plugin_manager


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="train a model from a recipe")
    add_recipe_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="start afresh in an existing run directory (checkpointing.overwrite=true)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint (checkpointing.resume_from)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modulm.assemble import assemble
    from modulm.recipe import load_recipe
    from modulm.trainer import Trainer

    overrides = list(args.overrides)
    if args.overwrite:
        overrides.append("checkpointing.overwrite=true")
    if args.resume:
        overrides.append(f"checkpointing.resume_from={args.resume!r}")
    pm = plugin_manager(args)
    recipe = load_recipe(args.recipe, overrides)
    Trainer(assemble(recipe, pm.registry)).run()
    return 0
