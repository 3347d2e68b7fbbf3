"""The component registry: kind -> name -> factory, each with the plugin that gave it."""

from __future__ import annotations

import difflib
import functools
import importlib
import re
from typing import Any, Callable, Iterator

from modulm.errors import ModulmError
from modulm.kinds import KINDS
from modulm.schema import Schema, first_line, schema_of


class RegistryError(ModulmError):
    """A component could not be registered or found."""


_REFERENCE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class Component:
    """A registered factory with its provenance.

    A factory registered as ``"module:attribute"`` is imported the first time ``factory`` (or
    ``schema``, ``doc``) is read, so registering costs nothing until the component is used.
    """

    def __init__(self, kind: str, name: str, factory: Callable[..., Any] | str, plugin: str) -> None:
        self.kind, self.name, self.plugin = kind, name, plugin
        self._factory = factory

    @functools.cached_property
    def factory(self) -> Callable[..., Any]:
        if not isinstance(self._factory, str):
            return self._factory
        module_name, _, attribute = self._factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(f"{self.kind} {self.name!r} from plugin {self.plugin!r}: "
                                f"cannot import {self._factory!r}: {exc}") from None
        if not callable(factory):
            raise RegistryError(f"{self.kind} {self.name!r}: factory {self._factory!r} is not callable")
        return factory

    @functools.cached_property
    def schema(self) -> Schema:
        return schema_of(self.factory)

    @property
    def doc(self) -> str:
        return first_line(self.factory)

    def __call__(self, **kwargs: Any) -> Any:
        return self.factory(**kwargs)

    def __repr__(self) -> str:
        return f"Component(kind={self.kind!r}, name={self.name!r}, factory={self._factory!r}, plugin={self.plugin!r})"


class Registry:
    """Holds every component by kind and name.

    ``current_plugin`` is a callable naming the plugin whose hook is running; the plugin manager
    supplies it so components are attributed without the plugin having to say who it is.
    """

    def __init__(self, current_plugin: Callable[[], str] | None = None) -> None:
        self._by_kind: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self._current_plugin = current_plugin or (lambda: "<python>")

    # -- registration -------------------------------------------------------------------------
    def add(self, kind: str, name: str, factory: Callable[..., Any] | str, *, plugin: str | None = None) -> Component:
        """Register ``factory`` as component ``name`` of ``kind``; returns the record.

        ``factory`` is a callable, or ``"module:attribute"`` naming one: imported only when the
        component is first used (how the built-in plugins keep ``modulm``'s start-up light).
        """
        if not isinstance(name, str) or not name:
            raise RegistryError(f"component names must be non-empty strings, got {name!r}")
        if isinstance(factory, str) and not _REFERENCE.fullmatch(factory):
            raise RegistryError(f"{kind} {name!r}: factory {factory!r} is not of the form 'module:attribute'")
        if not isinstance(factory, str) and not callable(factory):
            raise RegistryError(f"{kind} {name!r}: factory {factory!r} is not callable")
        plugin = plugin or self._current_plugin()
        table = self._by_kind.setdefault(kind, {})
        if name in table:
            other = table[name].plugin
            raise RegistryError(
                f"{kind} {name!r} is registered twice: by plugin {other!r} and by plugin {plugin!r}"
                " (third-party plugins should prefix their names)"
            )
        component = Component(kind, name, factory, plugin)
        if not isinstance(factory, str):
            component.schema  # a callable's signature is checked now, naming the plugin
        table[name] = component
        return component

    def model(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("model", name, factory)

    def block(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("block", name, factory)

    def attention(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("attention", name, factory)

    def ffn(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("ffn", name, factory)

    def norm(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("norm", name, factory)

    def position(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("position", name, factory)

    def optimizer(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("optimizer", name, factory)

    def schedule(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("schedule", name, factory)

    def data(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("data", name, factory)

    def logger(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("logger", name, factory)

    def tokenizer(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("tokenizer", name, factory)

    def exporter(self, name: str, factory: Callable[..., Any] | str) -> Component:
        return self.add("exporter", name, factory)

    def remove_plugin(self, plugin: str) -> None:
        """Forget every component ``plugin`` gave (used when a plugin is unregistered)."""
        for table in self._by_kind.values():
            for name in [n for n, c in table.items() if c.plugin == plugin]:
                del table[name]

    # -- lookup -------------------------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        return list(self._by_kind)

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_kind.get(kind, {}))

    def components(self, kind: str | None = None) -> Iterator[Component]:
        kinds = [kind] if kind else list(self._by_kind)
        for k in kinds:
            for name in sorted(self._by_kind.get(k, {})):
                yield self._by_kind[k][name]

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, name = key
        return name in self._by_kind.get(kind, {})

    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``; a clear error listing the alternatives if absent."""
        if kind not in self._by_kind:
            raise RegistryError(f"unknown kind {kind!r}; known kinds: {', '.join(self._by_kind)}")
        try:
            return self._by_kind[kind][name]
        except KeyError:
            raise RegistryError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: Any) -> str:
        available = ", ".join(f"{c.name} ({c.plugin})" for c in self.components(kind)) or "none"
        close = difflib.get_close_matches(str(name), self.names(kind), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {kind} component {name!r}{hint}; available: {available}"

    def create(self, kind: str, name: str, **kwargs: Any) -> Any:
        """Call the factory of ``kind``/``name`` with ``kwargs`` (no recipe validation)."""
        return self.get(kind, name).factory(**kwargs)
