"""``modulm init [PATH]``: write a commented starter recipe with every setting at its default.

The text is generated from the registry and the settings dataclasses, so it always lists exactly
the parameters the installed components accept, each with its one-line doc.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from modulm.cli._common import plugin_manager
from modulm.errors import ModulmError

SHIPPED_CORPUS = "data/tinystories/TinyStoriesV2-GPT4-train-head2M.txt.xz"

STARTER = {
    "data": {"component": "text", "train": SHIPPED_CORPUS},
    "model": {"component": "transformer", "context_length": 256, "d_model": 128, "num_layers": 4, "num_heads": 4, "d_ff": 344},
    "training": {"batch_size": 16, "max_iterations": 1000},
    "checkpointing": {"checkpoint_dir": "runs/starter", "checkpoint_interval": 250},
    "logging": {"eval_interval": 250},
}

HEADER = """\
# modulm starter recipe, written by `modulm init`.
# Every setting is shown with its default; delete what you do not change.
# Run it with:  modulm run {path}      (paths are relative to where you run modulm)
# Override any value on the command line:  modulm run {path} optimizer.lr=1e-3 training.max_iterations=200
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("init", help="write a commented starter recipe")
    p.add_argument("path", nargs="?", default="recipe.toml", help="where to write it (default recipe.toml; - for stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=run)


def _comment(doc: str) -> list[str]:
    return [f"# {doc}"] if doc else []


def _render_table(lines: list[str], header: str, table: dict[str, Any], schema, registry) -> None:
    from modulm.tomlwrite import _key, _value

    lines.append("")
    lines.append(header)
    if "component" in table:
        lines.append(f"component = {_value(table['component'])}")
    nested_tables = []
    for key, value in table.items():
        if key == "component":
            continue
        param = schema.get(key) if schema is not None else None
        if isinstance(value, dict):
            nested_tables.append((key, value, param))
            continue
        lines.extend(_comment(param.doc if param else ""))
        lines.append(f"{_key(key)} = {_value(value)}")
    for key, value, param in nested_tables:
        sub = registry.get(param.nested.kind, value["component"]).schema if param and param.nested else None
        name = header.strip("[]")
        _render_table(lines, f"[{name}.{key}]", value, sub, registry)


def render(registry) -> str:
    from modulm.assemble import resolved_recipe
    from modulm.recipe import recipe_from_dict, validate
    from modulm.schema import schema_of
    from modulm.settings import recipe_schema

    resolved = resolved_recipe(validate(recipe_from_dict(STARTER), registry))
    top = schema_of(recipe_schema)
    lines: list[str] = []
    for key, value in resolved.items():
        param = top.get(key)
        if key == "loggers":
            for item in value:
                lines.append("")
                lines.append("[[loggers]]")
                lines.append(f'component = "{item["component"]}"')
            continue
        if not isinstance(value, dict):
            continue
        if param.settings is not None:
            schema = schema_of(param.settings)
            lines.append("")
            lines.append(f"# {param.settings.__doc__.splitlines()[0]}")
        else:
            schema = registry.get(param.nested.kind, value["component"]).schema
            lines.append("")
            lines.append(f"# {key}: {registry.get(param.nested.kind, value['component']).doc}")
        _render_table(lines, f"[{key}]", value, schema, registry)
    return "\n".join(lines).strip() + "\n"


def run(args) -> int:
    pm = plugin_manager(args)
    text = HEADER.format(path=args.path) + "\n" + render(pm.registry)
    if args.path == "-":
        sys.stdout.write(text)
        return 0
    path = Path(args.path)
    if path.exists() and not args.force:
        raise ModulmError(f"{path} already exists; pass --force to overwrite it")
    from modulm.fileio import atomic_write_text

    atomic_write_text(path, text)
    print(f"wrote {path}")
    return 0
