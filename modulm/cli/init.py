"""``modulm init [PATH]``: write a commented starter recipe listing every setting.

The text is generated from the registry and the settings dataclasses, so it always lists exactly
the parameters the installed components accept, each with its one-line doc and declared range.
Every value is the documented default except the few the starter sets for a quick first run,
which say so (``# starter value; default: ...``). The data path is the corpus shipped with the
repository, written so that it works from where the recipe is run (see :func:`corpus_path`).
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
# Every setting is shown with its default, except the values marked "starter value", which are set
# small for a first run of a few minutes; delete what you do not change.
# Run it with:  modulm run {path}      (paths are relative to where you run modulm)
# Override any value on the command line:  modulm run {path} optimizer.lr=1e-3 training.max_iterations=200
"""

MISSING_CORPUS = "# not found from here: point data.train at your own text file (plain or .xz)"


def corpus_path(cwd: Path | None = None) -> tuple[str, bool]:
    """The shipped corpus as a path that works from ``cwd``, and whether it exists.

    Relative when ``cwd`` holds it (a run from the repository), absolute when this modulm comes
    from a checkout elsewhere, and the relative path (reported as missing) otherwise.
    """
    cwd = cwd or Path.cwd()
    if (cwd / SHIPPED_CORPUS).is_file():
        return SHIPPED_CORPUS, True
    checkout = Path(__file__).resolve().parents[2] / SHIPPED_CORPUS
    if checkout.is_file():
        return str(checkout), True
    return SHIPPED_CORPUS, False


def register(subparsers) -> None:
    p = subparsers.add_parser("init", help="write a commented starter recipe")
    p.add_argument("path", nargs="?", default="recipe.toml", help="where to write it (default recipe.toml; - for stdout)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=run)


def _comment(doc: str) -> list[str]:
    return [f"# {doc}"] if doc else []


def _param_comment(param) -> list[str]:
    if param is None:
        return []
    shown = f" ({param.range_text()})" if param.constraints else ""
    return _comment(param.doc + shown if param.doc else shown.strip(" ()"))


def _not_default(param, value: Any) -> str:
    """`` # starter value; default: X`` when ``value`` differs from the parameter's default."""
    from modulm.schema import REQUIRED
    from modulm.tomlwrite import _value
    from modulm.validate import copy_default

    if param is None or param.default is REQUIRED or isinstance(param.default, type) or value == copy_default(param.default):
        return ""
    default = "unset" if param.default is None else _value(copy_default(param.default))
    return f"  # starter value; default: {default}"


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
        lines.extend(_param_comment(param))
        if value is None:  # TOML has no null: show the key, commented out
            lines.append(f"# {_key(key)} =          (unset by default)")
        else:
            lines.append(f"{_key(key)} = {_value(value)}{_not_default(param, value)}")
            if param is not None and param.name == "train" and value == SHIPPED_CORPUS and not corpus_path()[1]:
                lines.append(MISSING_CORPUS)
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

    starter = {**STARTER, "data": {**STARTER["data"], "train": corpus_path()[0]}}
    resolved = resolved_recipe(validate(recipe_from_dict(starter), registry))
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
    if not corpus_path()[1]:
        print(f"modulm: warning: {path}: data.train names the corpus shipped in modulm's repository ({SHIPPED_CORPUS}), "
              "which is not here; point it at your own text file", file=sys.stderr)
    return 0
