"""``modulm export CHECKPOINT --format hf-llama|safetensors OUT/``: hand a trained model to other tools."""

from __future__ import annotations

from modulm.export import FORMATS  # light: the heavy imports happen inside the export functions


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to Hugging Face Llama or safetensors",
                              description="Write a checkpoint's model as a Hugging Face LlamaForCausalLM directory "
                                          "(config.json, model.safetensors, tokenizer files) or as safetensors "
                                          "weights plus the resolved recipe.")
    p.add_argument("checkpoint", help="a checkpoint written by modulm run")
    p.add_argument("out", help="output directory (created if missing)")
    p.add_argument("--format", choices=FORMATS, default="hf-llama", help="hf-llama (default) or safetensors")
    p.add_argument("--tokenizer", help="tokenizer directory to copy (default: tokenizer/ beside the checkpoint)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modulm.export import export_hf_llama, export_safetensors

    if args.format == "hf-llama":
        written = export_hf_llama(args.checkpoint, args.out, args.tokenizer)
    else:
        written = export_safetensors(args.checkpoint, args.out)
    print(f"wrote {args.format} export to {args.out}: {', '.join(written)}")
    return 0
