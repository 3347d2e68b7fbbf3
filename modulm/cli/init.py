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

SHIPPED_CORPUS = "data/tinystories/tinystories_v2_train_head2M.txt.xz"

STARTER = {
    "data": {"component": "text", "train": SHIPPED_CORPUS, "tokenizer": {"component": "bpe", "vocab_size": 4096}},
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


def _render_table(lines: list[str], header: str, table: dict[str, Any], schema, registry, comment: str = "") -> None:
    from modulm.tomlwrite import _key, _value

    lines.append("")
    lines.extend(_comment(comment))
    lines.append(header)
    if "component" in table:
        lines.append(f"component = {_value(table['component'])}")
    nested_tables = []
    for key in (schema.names if schema is not None else list(table)):
        if key == "component":
            continue
        param = schema.get(key) if schema is not None else None
        value = table.get(key)
        if isinstance(value, dict):
            nested_tables.append((key, value, param))
            continue
        lines.extend(_comment(param.doc if param else ""))
        if value is None:  # TOML has no null: show the key, commented out
            lines.append(f"# {_key(key)} =          (unset by default)")
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value, param in nested_tables:
        component = registry.get(param.nested.kind, value["component"]) if param and param.nested else None
        _render_table(lines, f"[{header.strip('[]')}.{key}]", value, component.schema if component else None,
                      registry, f"{key}: {component.doc}" if component else "")


def render(registry) -> str:
    """The starter recipe's text: every table, key and default, with the docs as comments."""
    from modulm.assemble import resolved_recipe
    from modulm.recipe import recipe_from_dict, validate
    from modulm.schema import schema_of
    from modulm.settings import recipe_schema

    resolved = resolved_recipe(validate(recipe_from_dict(STARTER), registry))
    top = schema_of(recipe_schema)
    lines: list[str] = [f"name = {resolved.get('name', '')!r}".replace("'", '"')]
    for param in top.params:
        value = resolved.get(param.name)
        if param.name == "loggers":
            lines += ["", "# loggers: any number of [[loggers]] tables; each receives every event"]
            for item in value:
                lines += ["[[loggers]]", f'component = "{item["component"]}"']
        elif param.settings is not None:
            doc = param.settings.__doc__.splitlines()[0]
            _render_table(lines, f"[{param.name}]", value, schema_of(param.settings), registry, doc)
        elif param.nested is not None:
            component = registry.get(param.nested.kind, value["component"])
            _render_table(lines, f"[{param.name}]", value, component.schema, registry,
                          f"{param.name}: {component.doc} (alternatives: {', '.join(registry.names(param.nested.kind))})")
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
