"""Checking recipe tables against factory signatures, recursively, collecting every problem.

Each problem is one line: ``FILE: TOML.PATH: what is wrong [component NAME from plugin P]; hint``.
Binding returns the checked values ready to build: component tables become
:class:`~modulm.builders.ComponentBuilder` objects, settings tables dataclass instances.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import TYPE_CHECKING, Any, Callable, Mapping

from modulm.builders import ComponentBuilder
from modulm.schema import Param, Schema, schema_of

if TYPE_CHECKING:
    from modulm.recipe import Recipe
    from modulm.registry import Component, Registry

_MISSING = object()


class _Context:
    def __init__(self, recipe: "Recipe | None", source: str, problems: list[str]) -> None:
        self.recipe, self.source, self.problems = recipe, source, problems

    def report(self, path: tuple, message: str, component: "Component | None" = None) -> None:
        where = self.recipe.origin(path) if self.recipe is not None else self.source
        dotted = ".".join(str(p) for p in path) or "(top level)"
        owner = f" [{component.kind} {component.name!r} from plugin {component.plugin!r}]" if component else ""
        self.problems.append(f"{where}: {dotted}: {message}{owner}")


def _type_ok(value: Any, param: Param) -> bool:
    if param.types is None:
        return True
    if isinstance(value, bool):
        return bool in param.types
    return isinstance(value, param.types)


def _toml_type(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _check_keys(ctx: _Context, schema: Schema, table: Mapping[str, Any], path: tuple, component, ignore=("component",)) -> None:
    for key in table:
        if key in ignore or schema.get(key) is not None or schema.accepts_any:
            continue
        if key in schema.injected:
            ctx.report(path + (key,), "is set at run time (injected) and cannot be given in a recipe", component)
            continue
        close = difflib.get_close_matches(key, schema.names, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(schema.names) or 'none'}"
        ctx.report(path + (key,), f"unknown key{hint}", component)


def _bind_params(ctx: _Context, registry: "Registry", schema: Schema, table: Mapping[str, Any], path: tuple, component) -> dict[str, Any]:
    _check_keys(ctx, schema, table, path, component)
    bound: dict[str, Any] = {}
    for param in schema.params:
        value = table.get(param.name, _MISSING)
        here = path + (param.name,)
        if value is _MISSING:
            if param.required:
                ctx.report(here, f"missing required value ({param.type_name()})", component)
                continue
            value = param.default
            if param.settings is not None or param.nested is not None:
                bound[param.name] = _bind_value(ctx, registry, param, value, here, component, defaulted=True)
            else:
                bound[param.name] = copy_default(value)
            continue
        bound[param.name] = _bind_value(ctx, registry, param, value, here, component)
    if schema.accepts_any:
        bound.update({k: v for k, v in table.items() if k != "component" and schema.get(k) is None})
    return bound


def copy_default(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _bind_value(ctx, registry, param: Param, value: Any, path: tuple, component, defaulted: bool = False) -> Any:
    if param.settings is not None:
        if isinstance(value, type):  # the default: the settings class itself
            value = {}
        if not isinstance(value, Mapping):
            ctx.report(path, f"expected a table, got {_toml_type(value)} {value!r}", component)
            return None
        return _bind_settings(ctx, registry, param.settings, value, path)
    if param.nested is not None:
        kind = param.nested.kind
        if param.nested.many:
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                ctx.report(path, f"expected an array of {kind} tables ([[{'.'.join(map(str, path))}]])", component)
                return []
            return [_bind_component(ctx, registry, kind, item, path + (i,), None) for i, item in enumerate(value)]
        return _bind_component(ctx, registry, kind, value, path, param.default if isinstance(param.default, str) else None)
    if value is None and param.default is None:
        return None
    if not _type_ok(value, param):
        ctx.report(path, f"expected {param.type_name()}, got {_toml_type(value)} {value!r}", component)
        return value
    if param.choices is not None and value not in param.choices:
        allowed = ", ".join(repr(c) for c in param.choices)
        ctx.report(path, f"{value!r} is not one of {allowed}", component)
    return value


def _bind_settings(ctx, registry, cls: type, table: Mapping[str, Any], path: tuple) -> Any:
    params = _bind_params(ctx, registry, schema_of(cls), table, path, None)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        ctx.report(path, str(exc))
        return None


def _bind_component(ctx, registry: "Registry", kind: str, spec: Any, path: tuple, default_name: str | None) -> Any:
    if isinstance(spec, str):
        spec = {"component": spec}
    if not isinstance(spec, Mapping):
        ctx.report(path, f"expected a {kind} name or a table with 'component', got {_toml_type(spec)} {spec!r}")
        return None
    name = spec.get("component", default_name)
    if name is None:
        ctx.report(path, f"missing 'component' (the {kind} to use; available: {', '.join(registry.names(kind)) or 'none'})")
        return None
    if (kind, name) not in registry:
        ctx.report(path + ("component",) if "component" in spec else path, registry.unknown_message(kind, name))
        return None
    component = registry.get(kind, name)
    params = _bind_params(ctx, registry, component.schema, spec, path, component)
    return ComponentBuilder(component, params)


def bind_component(registry, kind: str, spec: Any, *, source: str = "<python>", path: str = "", problems: list[str], recipe=None):
    """Validate one component spec (a name or a table); append problems; return its builder."""
    ctx = _Context(recipe, source, problems)
    return _bind_component(ctx, registry, kind, spec, tuple(path.split(".")) if path else (kind,), None)


def bind_settings(registry, cls: type, table: Mapping[str, Any], *, source: str = "<python>", path: str = "", problems: list[str], recipe=None):
    """Validate a settings table against dataclass ``cls``; return the instance (or None)."""
    ctx = _Context(recipe, source, problems)
    return _bind_settings(ctx, registry, cls, table, tuple(path.split(".")) if path else ())


def bind_table(registry, factory: Callable, table: Mapping[str, Any], *, recipe=None, path: tuple = (), problems: list[str], what: str = "") -> dict[str, Any]:
    """Validate ``table`` against the signature of ``factory``; return the bound parameters."""
    ctx = _Context(recipe, recipe.source if recipe is not None else "<python>", problems)
    return _bind_params(ctx, registry, schema_of(factory), table, path, None)


def settings_table(instance: Any) -> dict[str, Any]:
    """A settings dataclass as a plain table (None values left out: TOML has no null)."""
    return {k: v for k, v in dataclasses.asdict(instance).items() if v is not None}
