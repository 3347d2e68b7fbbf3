"""``modulm info RECIPE|CHECKPOINT``: parameter counts, FLOPs and memory of a model, without training.

A checkpoint (``.pt``) is read with the one checkpoint reader and its stored recipe reported.

The model is built on PyTorch's meta device (no memory is allocated, so any size works). Models
that offer ``accounting_text(batch_size, dtype)`` (the built-in transformer does) report FLOPs per
part and memory; others report parameter counts. Every model gets a line of training-state memory
per process (parameters + gradients + optimizer state) for the recipe's ``distributed.strategy``
at ``--nproc`` processes (ddp holds all of it on each, fsdp about 1/N), the bytes of a
micro-batch's token ids, and the activations its forward pass keeps for the backward pass, sized
on fake tensors (:func:`modulm.preflight.activation_floor`).
"""

from __future__ import annotations

from pathlib import Path

from modulm.cli._common import add_recipe_arguments, plugin_manager
from modulm.errors import ModulmError


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="parameter counts, FLOPs and memory of a recipe's model")
    add_recipe_arguments(p)
    p.add_argument("--vocab-size", type=int, help="vocabulary size (default: read from the recipe's data table)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="processes to report the per-process memory for (default 1)")
    p.set_defaults(func=run)


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def _recipe_and_vocab(args):
    """The recipe to report on, and the vocabulary size a checkpoint stored (None for a TOML recipe)."""
    from modulm.recipe import load_recipe, recipe_from_dict

    from modulm import sharded_checkpoint

    sharded = sharded_checkpoint.is_complete(Path(args.recipe))
    if Path(args.recipe).suffix not in CHECKPOINT_SUFFIXES and not sharded:
        return load_recipe(args.recipe, args.overrides), None
    from modulm.checkpoint import read_checkpoint, run_model_spec

    state = (sharded_checkpoint.read_trainer_state(Path(args.recipe)) if sharded else
             read_checkpoint(args.recipe, mmap=True))
    resolved, vocab_size = run_model_spec(state, args.recipe)
    return recipe_from_dict(resolved, args.overrides), vocab_size


def run(args) -> int:
    import torch

    from modulm.assemble import resolved_recipe
    from modulm.preflight import activation_floor, recipe_vocab_size
    from modulm.recipe import validate
    from modulm.errors import human_bytes
    from modulm.strategy import micro_batch_token_bytes, training_state_memory

    if args.nproc < 1:
        raise ModulmError(f"--nproc must be >= 1, got {args.nproc}")

    pm = plugin_manager(args)
    recipe, stored_vocab = _recipe_and_vocab(args)
    bound = validate(recipe, pm.registry)
    vocab_size = args.vocab_size or stored_vocab or recipe_vocab_size(resolved_recipe(bound))
    if vocab_size is None:
        raise ModulmError(f"{args.recipe}: cannot tell the vocabulary size from the data table; pass --vocab-size N")
    with torch.device("meta"):
        model = bound["model"](vocab_size=vocab_size)
    training, (device, dtype) = bound["training"], _device_here(bound["system"])
    print(f"model: {bound['model'].name} (vocab_size {vocab_size}, batch_size {training.batch_size}, dtype {dtype})")
    report = getattr(model, "accounting_text", None)
    if report is not None:
        print(report(batch_size=training.batch_size, dtype=dtype))
    else:
        total = sum(p.numel() for p in model.parameters())
        print(f"parameters: {total:,}")
    name = bound["distributed"].strategy if args.nproc > 1 else "single process"
    memory = training_state_memory(model, bound["optimizer"], name == "fsdp", args.nproc)
    print(memory.line(name, args.nproc))
    micro_batch, ids = micro_batch_token_bytes(training, model.context_length)
    print(f"Token ids per micro-batch: {micro_batch} x {model.context_length} inputs and targets (int64) = "
          f"{human_bytes(ids)}")
    kept = activation_floor(bound, vocab_size, device, spent_model=model)  # its last use
    print(f"Activations per micro-batch: at least {human_bytes(kept)} kept for the backward pass ({dtype}; the "
          "step's temporaries come on top)" if kept is not None else
          "Activations per micro-batch: not sized (" + ("system.compile" if bound["system"].compile else
                                                         "the model or dtype does not run on fake tensors here") + ")")
    return 0


def _device_here(system):
    """The device a run of ``system`` would use on this machine (the CPU where it lacks the one
    named), and ``system.dtype`` as that run would resolve it (``auto`` included)."""
    import torch

    from modulm.runtime import resolve_device, resolve_precision

    try:
        device = resolve_device(system.device)
    except ModulmError:  # a device this machine lacks: account for the CPU's choice
        device = torch.device("cpu")
    if system.dtype != "auto":
        return device, system.dtype
    return device, resolve_precision(device, "auto").dtype
