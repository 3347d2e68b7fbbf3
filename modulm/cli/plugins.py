"""``modulm plugins``: every plugin with its distribution, and every component with its parameters."""

from __future__ import annotations

from modulm.cli._common import plugin_manager
from modulm.errors import ModulmError
from modulm.schema import REQUIRED, first_line, schema_of
from modulm.settings import recipe_schema


def register(subparsers) -> None:
    p = subparsers.add_parser("plugins", help="list plugins and the components they provide")
    p.add_argument("--kind", help="only components of this kind")
    p.set_defaults(func=run)


def _default(value) -> str:
    if value is REQUIRED:
        return "required"
    if isinstance(value, type):
        return "table"
    return repr(list(value) if isinstance(value, tuple) else value)


def run(args) -> int:
    pm = plugin_manager(args)
    registry = pm.registry
    if args.kind and args.kind not in registry.kinds:
        raise ModulmError(f"--kind {args.kind!r}: not a component kind; choose one of {', '.join(registry.kinds)}")
    print("plugins:")
    for plugin in sorted(pm.get_plugins(), key=lambda p: pm.get_name(p) or ""):
        name = pm.get_name(plugin)
        dist = pm.dist_of(name)
        origin = f"{dist[0]} {dist[1]}" if dist else "(registered with -p or from Python)"
        count = sum(1 for c in registry.components() if c.plugin == name)
        print(f"  {name:<14} {origin:<28} {count} component(s)")
    for kind in registry.kinds:
        if args.kind and kind != args.kind:
            continue
        print(f"\n{kind}:")
        components = list(registry.components(kind))
        if not components:
            print("  (none)")
        for component in components:
            print(f"  {component.name}  [{component.plugin}]  {component.doc}")
            _print_params(component.schema)
            if component.schema.injected:
                print(f"      (injected: {', '.join(component.schema.injected)})")
    if not args.kind:
        print("\nsettings tables:")
        top = schema_of(recipe_schema)
        for param in top.params:
            if param.settings is not None:
                print(f"  [{param.name}]")
                _print_params(schema_of(param.settings))
        print("  (across tables)")
        _print_params(type(top)((), (), rules=top.rules))
    return 0


def _print_params(schema) -> None:
    for param in schema.params:
        doc = f"  {param.doc}" if param.doc else ""
        shown = f" ({param.range_text()})" if param.constraints else ""
        print(f"      {param.name}: {param.type_name()}{shown} = {_default(param.default)}{doc}")
    for rule in schema.rules:
        print(f"      (rule: {first_line(rule) or getattr(rule, '__name__', repr(rule))})")
