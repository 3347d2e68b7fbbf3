"""``modulm run RECIPE [overrides]``: validate, assemble and train; print a sample at the end.

``--nproc N`` trains with N data-parallel processes on this machine: it runs
``python -m torch.distributed.run --standalone --nproc_per_node N -m modulm run ...`` (the same as
calling torchrun yourself) and returns its exit status.
"""

from __future__ import annotations

import subprocess
import sys

from modulm.cli._common import add_recipe_arguments, plugin_manager
from modulm.errors import ModulmError


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="train a model from a recipe")
    add_recipe_arguments(p)
    p.add_argument("--overwrite", action="store_true", help="start afresh in an existing run directory (checkpointing.overwrite=true)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="resume from this checkpoint (checkpointing.resume_from)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N data-parallel processes on this machine (launches torch.distributed.run)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.nproc < 1:
        raise ModulmError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1:
        return launch(args)
    from modulm import distributed
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
    try:
        with distributed.report_lost_ranks():
            Trainer(assemble(recipe, pm.registry)).run()
    finally:
        distributed.teardown()
    return 0


def launch(args) -> int:
    """Run this command again in ``args.nproc`` processes under torch.distributed.run."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ModulmError("--nproc: this process was already launched by torchrun; drop --nproc")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "modulm"]
    command += ["--debug"] if args.debug else []
    for plugin in args.plugins:
        command += ["-p", plugin]
    command += ["run", args.recipe, *args.overrides]
    command += ["--overwrite"] if args.overwrite else []
    command += ["--resume", args.resume] if args.resume else []
    process = subprocess.Popen(command)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:  # Ctrl-C reaches torchrun and the workers too; wait for their checkpoint
            continue
