"""``modulm info RECIPE``: parameter counts, FLOPs and memory of the recipe's model, without training.

The model is built on PyTorch's meta device (no memory is allocated, so any size works). Models
that offer ``accounting_text(batch_size, dtype)`` (the built-in transformer does) report FLOPs per
part and memory; others report parameter counts.
"""

from __future__ import annotations

from modulm.cli._common import add_recipe_arguments, plugin_manager
from modulm.errors import ModulmError


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="parameter counts, FLOPs and memory of a recipe's model")
    add_recipe_arguments(p)
    p.add_argument("--vocab-size", type=int, help="vocabulary size (default: read from the recipe's data table)")
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

    pm = plugin_manager(args)
    bound = validate(load_recipe(args.recipe, args.overrides), pm.registry)
    vocab_size = args.vocab_size or recipe_vocab_size(resolved_recipe(bound))
    if vocab_size is None:
        raise ModulmError(f"{args.recipe}: cannot tell the vocabulary size from the data table; pass --vocab-size N")
    with torch.device("meta"):
        model = bound["model"](vocab_size=vocab_size)
    training, dtype = bound["training"], _dtype_here(bound["system"])
    print(f"model: {bound['model'].name} (vocab_size {vocab_size}, batch_size {training.batch_size}, dtype {dtype})")
    report = getattr(model, "accounting_text", None)
    if report is not None:
        print(report(batch_size=training.batch_size, dtype=dtype))
    else:
        total = sum(p.numel() for p in model.parameters())
        print(f"parameters: {total:,}")
    return 0


def _dtype_here(system) -> str:
    """``system.dtype`` as a run on this machine would resolve it (``auto`` included)."""
    from modulm.runtime import resolve_device, resolve_precision

    if system.dtype != "auto":
        return system.dtype
    try:
        device = resolve_device(system.device)
    except ModulmError:  # a device this machine lacks: account for the CPU's choice
        import torch

        device = torch.device("cpu")
    return resolve_precision(device, "auto").dtype
