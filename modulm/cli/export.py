"""``modulm export CHECKPOINT OUT/ [--format NAME]``: hand a trained model to other tools.

The formats are ``exporter`` components of the installed plugins (``hf-llama`` and
``safetensors`` for the built-in transformer); ``--list-formats`` shows those for a checkpoint.
"""

from __future__ import annotations

from modulm.cli._common import plugin_manager


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to Hugging Face Llama, safetensors, or a plugin's format",
                              description="Write a checkpoint's model in another tool's format with an exporter "
                                          "component. The built-in transformer has hf-llama (a Hugging Face "
                                          "LlamaForCausalLM directory: config.json, model.safetensors, tokenizer "
                                          "files) and safetensors (weights plus the resolved recipe).")
    p.add_argument("checkpoint", help="a checkpoint written by modulm run")
    p.add_argument("out", nargs="?", help="output directory (created if missing)")
    p.add_argument("--format", default=None, metavar="NAME",
                   help="an exporter that accepts the checkpoint's model (default: the first by name, hf-llama "
                        "for the transformer)")
    p.add_argument("--list-formats", action="store_true", help="list the formats for this checkpoint's model and exit")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory to copy (default: tokenizer/ beside the checkpoint)")
    p.set_defaults(func=run)


def run(args) -> int:
    from modulm.errors import ModulmError
    from modulm.export import export, formats_for, model_name, read_run_checkpoint

    registry = plugin_manager(args).registry
    if args.list_formats:
        _, recipe, _ = read_run_checkpoint(args.checkpoint)
        model = model_name(recipe["model"])
        formats = formats_for(registry, model)
        print(f"formats for model {model!r}:" if formats else f"no installed exporter accepts model {model!r}")
        for name in formats:
            component = registry.get("exporter", name)
            print(f"  {name}  [{component.plugin}]  {component.doc}")
        return 0
    if args.out is None:
        raise ModulmError("export needs an output directory: modulm export CHECKPOINT OUT/ (or --list-formats)")
    fmt, written = export(registry, args.checkpoint, args.out, args.format, args.tokenizer)
    print(f"wrote {fmt} export to {args.out}: {', '.join(written)}")
    return 0
