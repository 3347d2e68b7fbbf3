"""Checking recipe tables against factory signatures, recursively, collecting every problem.

Each problem is one line: ``FILE: TOML.PATH: what is wrong [component NAME from plugin P]; hint``.
Per table: unknown keys, missing values, types, choices, declared ranges
(:mod:`modulm.constraints`); then, once the table and its nested tables are clean, the
cross-field rules its factory declares (errors, or warnings collected apart).
Binding returns the checked values ready to build: component tables become
:class:`~modulm.builders.ComponentBuilder` objects, settings tables dataclass instances.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import TYPE_CHECKING, Any, Callable, Mapping

from modulm.builders import ComponentBuilder
from modulm.constraints import run_rules, violation
from modulm.kinds import INJECTED
from modulm.schema import Param, Schema, schema_of

if TYPE_CHECKING:
    from modulm.recipe import Recipe
    from modulm.registry import Component, Registry

_MISSING = object()


class _Context:
    def __init__(self, recipe: "Recipe | None", source: str, problems: list[str],
                 warnings: list[str] | None = None, key_hint: Callable[[str], list[str]] | None = None) -> None:
        self.recipe, self.source, self.problems = recipe, source, problems
        self.warnings = warnings if warnings is not None else []
        self.key_hint = key_hint  # top-level unknown key -> the nested keys it probably means

    def _line(self, path: tuple, message: str, component: "Component | None") -> str:
        where = self.recipe.origin(path) if self.recipe is not None else self.source
        dotted = ".".join(str(p) for p in path) or "(top level)"
        owner = f" [{component.kind} {component.name!r} from plugin {component.plugin!r}]" if component else ""
        return f"{where}: {dotted}: {message}{owner}"

    def report(self, path: tuple, message: str, component: "Component | None" = None) -> None:
        self.problems.append(self._line(path, message, component))

    def warn(self, path: tuple, message: str, component: "Component | None" = None) -> None:
        self.warnings.append(self._line(path, message, component))


def _type_ok(value: Any, param: Param) -> bool:
    return param.types is None or _of_types(value, param.types)


def _of_types(value: Any, types: tuple[type, ...]) -> bool:
    """``isinstance`` where a boolean is not an integer (TOML keeps them apart)."""
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


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
        leaf = not isinstance(table[key], Mapping)  # a table written at the top is a misspelt table, not a leaf
        nested_keys = ctx.key_hint(key) if ctx.key_hint is not None and not path and leaf else []
        if nested_keys:
            hint = f"; did you mean {' or '.join(repr(k) for k in nested_keys[:3])}?"
        elif close:
            hint = f"; did you mean {close[0]!r}?"
        else:
            hint = f"; valid keys: {', '.join(schema.names)}" if schema.names else "; this component takes no keys"
        ctx.report(path + (key,), f"unknown key{hint}", component)


def _bind_params(ctx: _Context, registry: "Registry", schema: Schema, table: Mapping[str, Any], path: tuple, component) -> dict[str, Any]:
    before = len(ctx.problems)
    _check_keys(ctx, schema, table, path, component)
    bound: dict[str, Any] = {}
    for param in schema.params:
        value = table.get(param.name, _MISSING)
        here = path + (param.name,)
        if value is _MISSING:
            if param.required:
                injected = component is not None and param.name in INJECTED.get(getattr(component, "kind", ""), ())
                why = (f": {param.name} is passed in when the {component.kind} is built; make it keyword-only "
                       f"in the factory's signature (after *, as in def factory(..., *, {param.name}))") if injected else ""
                ctx.report(here, f"missing required value ({param.type_name()}){why}", component)
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
    if schema.rules and len(ctx.problems) == before:  # cross-field rules see only valid values
        for finding in run_rules(schema.rules, bound):
            where = path + tuple(finding.key.split(".")) if finding.key else path
            (ctx.warn if finding.is_warning else ctx.report)(where, finding.message, component)
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
    if param.items is not None and isinstance(value, list):
        item = Param(param.name, types=param.items)
        for i, element in enumerate(value):
            if not _type_ok(element, item):
                ctx.report(path + (i,), f"expected {item.type_name()}, got {_toml_type(element)} {element!r}", component)
    if param.choices is not None and value not in param.choices and not _of_types(value, param.open_types):
        allowed = ", ".join(repr(c) for c in param.choices)
        ctx.report(path, f"{value!r} is not one of {allowed}", component)
    if param.constraints and value is not None:
        wrong = violation(value, param.constraints)
        if wrong:
            ctx.report(path, f"{value!r} is out of range: {wrong}", component)
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


def bind_table(registry, factory: Callable, table: Mapping[str, Any], *, recipe=None, path: tuple = (), problems: list[str],
               what: str = "", warnings: list[str] | None = None, key_hint: Callable[[str], list[str]] | None = None) -> dict[str, Any]:
    """Validate ``table`` against the signature of ``factory``; return the bound parameters.

    Warnings of cross-field rules go to ``warnings``; ``key_hint`` maps an unknown top-level key
    to the nested key it probably means (``batch_size`` -> ``training.batch_size``).
    """
    ctx = _Context(recipe, recipe.source if recipe is not None else "<python>", problems, warnings, key_hint)
    return _bind_params(ctx, registry, schema_of(factory), table, path, None)


def settings_table(instance: Any) -> dict[str, Any]:
    """A settings dataclass as a plain table (None values left out: TOML has no null)."""
    return {k: v for k, v in dataclasses.asdict(instance).items() if v is not None}
