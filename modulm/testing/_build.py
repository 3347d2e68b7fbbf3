"""Turning what a check is given (a registry name or a factory, plus a config) into instances."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

CHECKED = "<checked>"  # the plugin name a checked factory is registered under


def registry_or_default(registry: Any = None) -> Any:
    """``registry`` itself, or one filled from the installed entry points (built once per process)."""
    if registry is not None:
        return registry
    return _default_registry()


@functools.lru_cache(maxsize=1)
def _default_registry() -> Any:
    from modulm import plugins

    return plugins.load(autoload=True, env={}).registry


def component_builder(kind: str, component: str | Callable[..., Any], config: Mapping[str, Any] | None = None,
                      registry: Any = None) -> Callable[..., Any]:
    """A builder for ``component`` with ``config`` validated exactly as a recipe table would be.

    ``component`` is a registry name (looked up in ``registry``, default: the installed plugins)
    or a factory (registered for the moment under a temporary name, so its signature is read and
    its config validated by the same rules as a built-in's).
    """
    from modulm.assemble import builder
    from modulm.registry import Registry

    table = {k: v for k, v in dict(config or {}).items() if k != "component"}
    if isinstance(component, str):
        return builder(registry_or_default(registry), kind, {"component": component, **table})
    if not callable(component):
        raise TypeError(f"expected a registry name or a factory for a {kind}, got {component!r}")
    from modulm.schema import schema_of

    needs_registry = any(p.nested is not None for p in schema_of(component).params)
    target = registry_or_default(registry) if needs_registry else Registry()
    name = f"{CHECKED}-{getattr(component, '__name__', 'factory')}"
    target.add(kind, name, component, plugin=CHECKED)
    try:
        return builder(target, kind, {"component": name, **table})
    finally:
        target.remove_plugin(CHECKED)


def describe(kind: str, component: Any) -> str:
    """How a failure message names the component: ``ffn 'swiglu'`` or ``ffn MyFFN``."""
    if isinstance(component, str):
        return f"{kind} {component!r}"
    return f"{kind} {getattr(component, '__qualname__', repr(component))}"


def part_builders(parts: Mapping[str, Any] | None, registry: Any, theta: float = 10000.0) -> dict[str, Any]:
    """Builders for the nested parts a block or attention is injected with (CS336 defaults).

    ``parts`` maps a kind to a registry name, a table with ``component``, a factory or a builder.
    """
    chosen: dict[str, Any] = {"attention": "mha", "ffn": "swiglu", "norm": "rmsnorm", "position": "rope"}
    chosen.update(parts or {})
    out = {}
    for kind, spec in chosen.items():
        if hasattr(spec, "params") and callable(spec):
            out[kind] = spec  # already a builder
        elif isinstance(spec, Mapping):
            table = dict(spec)
            out[kind] = component_builder(kind, table.pop("component"), table, registry)
        else:
            out[kind] = component_builder(kind, spec, None, registry)
    out["position"] = functools.partial(out["position"], theta=theta)
    return out
