"""``modulm generate CHECKPOINT --prompt TEXT``: stream a completion from a trained model."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from modulm.cli._common import plugin_manager
from modulm.errors import ModulmError


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from a checkpoint")
    p.add_argument("checkpoint", help="a checkpoint written by modulm run")
    p.add_argument("--prompt", default="", help="text to continue (default: start a new document)")
    p.add_argument("--max-tokens", type=int, default=256, help="new tokens at most (default 256)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 is greedy (default 1.0)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0: off)")
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    p.add_argument("--tokenizer", help="tokenizer directory (default: tokenizer/ beside the checkpoint)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default auto)")
    p.add_argument("--no-cache", action="store_true", help="recompute every position instead of using the KV cache")
    p.set_defaults(func=run)


def load_model_and_tokenizer(checkpoint: str | Path, registry, tokenizer_dir: str | Path | None = None):
    """Rebuild a run's model from the resolved recipe stored in its checkpoint, and its tokenizer."""
    from modulm.assemble import builder
    from modulm.checkpoint import check_model_state, read_checkpoint, run_model_spec

    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    recipe, vocab_size = run_model_spec(state, checkpoint)
    model = builder(registry, "model", recipe["model"], source=str(checkpoint))(vocab_size=vocab_size)
    check_model_state(state["model"], model, checkpoint)
    model.load_state_dict(state["model"])
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else checkpoint.parent / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise ModulmError(f"{tokenizer_dir}: tokenizer directory not found; pass --tokenizer DIR")
    data = recipe.get("data", {})
    spec = data.get("tokenizer") if isinstance(data.get("tokenizer"), dict) else {}
    component = registry.get("tokenizer", spec.get("component", "bpe"))
    loader = getattr(component.factory, "load", None)
    if loader is None:
        raise ModulmError(f"tokenizer {component.name!r} from plugin {component.plugin!r} cannot load a saved directory")
    return model, loader(tokenizer_dir)


def run(args) -> int:
    from modulm.sampling import generate
    from modulm.runtime import resolve_device

    if args.max_tokens < 0:
        raise ModulmError(f"--max-tokens must be >= 0, got {args.max_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ModulmError(f"--temperature must be finite and >= 0 (0 is greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ModulmError(f"--top-p must be in (0, 1] (1 is off), got {args.top_p}")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise ModulmError(f"--seed must be in [0, 2^63), got {args.seed}")
    pm = plugin_manager(args)
    model, tokenizer = load_model_and_tokenizer(args.checkpoint, pm.registry, args.tokenizer)
    model.to(resolve_device(args.device))
    sys.stdout.write(args.prompt)
    for piece in generate(model, tokenizer, args.prompt, args.max_tokens, temperature=args.temperature,
                          top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
