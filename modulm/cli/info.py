"""``modulm info RECIPE``: parameter counts, FLOPs and memory of the recipe's model, without training.

The model is built on PyTorch's meta device (no memory is allocated, so any size works). Models
that offer ``accounting_text(batch_size, dtype)`` (the built-in transformer does) report FLOPs per
part and memory; others report parameter counts. Every model gets a line of training-state memory
per process (parameters + gradients + optimizer state) for the recipe's ``distributed.strategy``
at ``--nproc`` processes: ddp holds all of it on each, fsdp about 1/N.
"""

from __future__ import annotations

from modulm.cli._common import add_recipe_arguments, plugin_manager
from modulm.errors import ModulmError


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="parameter counts, FLOPs and memory of a recipe's model")
    add_recipe_arguments(p)
    p.add_argument("--vocab-size", type=int, help="vocabulary size (default: read from the recipe's data table)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="processes to report the per-process memory for (default 1)")
    p.set_defaults(func=run)


def recipe_vocab_size(resolved: dict) -> int | None:
    """The vocabulary size a recipe implies without building its data: data.vocab_size or data.tokenizer.vocab_size."""
    data = resolved.get("data", {})
    tokenizer = data.get("tokenizer")
    if isinstance(data.get("vocab_size"), int):
        return data["vocab_size"]
    if isinstance(tokenizer, dict) and isinstance(tokenizer.get("vocab_size"), int):
        return tokenizer["vocab_size"]
    return None


def run(args) -> int:
    import torch

    from modulm.assemble import resolved_recipe
    from modulm.recipe import load_recipe, validate
    from modulm.strategy import memory_per_process, optimizer_bytes_per_element

    if args.nproc < 1:
        raise ModulmError(f"--nproc must be >= 1, got {args.nproc}")

    pm = plugin_manager(args)
    bound = validate(load_recipe(args.recipe, args.overrides), pm.registry)
    vocab_size = args.vocab_size or recipe_vocab_size(resolved_recipe(bound))
    if vocab_size is None:
        raise ModulmError(f"{args.recipe}: cannot tell the vocabulary size from the data table; pass --vocab-size N")
    with torch.device("meta"):
        model = bound["model"](vocab_size=vocab_size)
    training, system = bound["training"], bound["system"]
    print(f"model: {bound['model'].name} (vocab_size {vocab_size}, batch_size {training.batch_size}, dtype {system.dtype})")
    report = getattr(model, "accounting_text", None)
    if report is not None:
        print(report(batch_size=training.batch_size, dtype=system.dtype))
    else:
        total = sum(p.numel() for p in model.parameters())
        print(f"parameters: {total:,}")
    with torch.device("meta"):
        optimizer = bound["optimizer"](params=list(model.named_parameters()))
    name = bound["distributed"].strategy if args.nproc > 1 else "single process"
    memory = memory_per_process(model, optimizer_bytes_per_element(optimizer), name == "fsdp", args.nproc)
    print(memory.line(name, args.nproc))
    return 0
