"""``modulm run RECIPE [overrides]``: validate, preflight, assemble and train; print a sample at the end.

Exit status: 0 when the run finished (or was already complete: then nothing is done), 2 for a user
mistake or a failing disk (one line; nothing written when preflight found it), 130 / 143 when
SIGINT / SIGTERM stopped it (after saving a checkpoint that the same command resumes).

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
    from modulm import distributed
    from modulm.recipe import load_recipe, validate

    from modulm import preflight

    if args.nproc < 1:
        raise ModulmError(f"--nproc must be >= 1 (the number of processes), got {args.nproc}")
    overrides = list(args.overrides)
    if args.overwrite:
        overrides.append("checkpointing.overwrite=true")
    if args.resume:
        overrides.append(f"checkpointing.resume_from={args.resume!r}")
    pm = plugin_manager(args)
    recipe = load_recipe(args.recipe, overrides)
    # Before any data is prepared or the run directory touched: recipe, run directory, checkpoint, extras.
    checked = preflight.before_build(recipe, pm.registry, args.nproc)
    for warning in checked.warnings:
        print(f"modulm: warning: {warning}", file=sys.stderr)
    if checked.complete:
        max_iterations = validate(recipe, pm.registry)["training"].max_iterations
        print(preflight.complete_message(checked.plan.run_dir, checked.iteration, max_iterations, checked.plan.resume))
        return 0
    if args.nproc > 1:
        return launch(args)
    try:
        failure, result = _train(recipe, pm.registry, args.debug)
    finally:
        launched = distributed.current().enabled
        distributed.teardown()
    if failure is not None:
        raise failure
    if launched:
        _leave_now(exit_status(result))
    return exit_status(result)


def _leave_now(status: int) -> None:
    """End a torchrun worker that has finished and left its process group, without the interpreter's
    shutdown: there gloo's C++ objects can still be destroyed in an order that aborts the process
    ("terminate called without an active exception", SIGABRT) after a complete run. Everything the
    run writes is closed by now (checkpoints are written whole and renamed; nothing runs in threads)."""
    import logging
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def exit_status(result) -> int:
    """0, or 128 + the signal that stopped the run (130 for SIGINT, 143 for SIGTERM)."""
    import signal

    if result is None or not result.stop_signal:
        return 0
    return 128 + int(getattr(signal, result.stop_signal, signal.SIGTERM))


def _train(recipe, registry, debug: bool):
    """Train. Under torchrun a ModulmError is returned bare instead of raised: its traceback would
    keep the DDP model alive past the process group's teardown, which can abort the process at exit."""
    from modulm import distributed
    from modulm.assemble import assemble
    from modulm.trainer import Trainer

    try:
        with distributed.report_lost_ranks():
            result = Trainer(assemble(recipe, registry)).run()
    except ModulmError as exc:
        if debug or not distributed.current().enabled:
            raise
        exc.__traceback__ = exc.__cause__ = exc.__context__ = None
        return exc, None
    return None, result


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
    import signal

    process = subprocess.Popen(command)
    stopped_by: list[int] = []

    def forward_sigterm(signum, frame):  # the workers save a checkpoint; wait for them
        stopped_by.append(signum)
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward_sigterm)
    try:
        while True:
            try:
                code = process.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reaches torchrun and the workers too; wait for their checkpoint
                stopped_by.append(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 128 + int(stopped_by[0]) if stopped_by else code
