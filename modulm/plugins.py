"""Building the plugin manager and the registry it fills.

Nothing here runs at import time: :func:`load` builds a fresh manager and registry each call, so
tests and notebooks can make isolated ones. Discovery works as in pytest:

* entry points in group ``modulm`` (modulm's built-ins are declared there too);
* ``-p NAME`` imports module ``NAME`` and registers it; ``-p no:NAME`` blocks plugin ``NAME``
  (an entry-point name or a module name);
* env ``MODULM_PLUGINS`` (comma-separated modules, like ``-p``) and
  ``MODULM_DISABLE_PLUGIN_AUTOLOAD`` (any non-empty value: skip entry points; built-ins included).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Iterable, Sequence

import pluggy

from modulm import hookspecs
from modulm.errors import ModulmError
from modulm.registry import Registry

ENTRY_POINT_GROUP = "modulm"
ENV_PLUGINS = "MODULM_PLUGINS"
ENV_NO_AUTOLOAD = "MODULM_DISABLE_PLUGIN_AUTOLOAD"


class PluginError(ModulmError):
    """A plugin could not be found, imported or validated."""


class PluginManager(pluggy.PluginManager):
    """A pluggy manager that owns a :class:`Registry` and attributes components to plugins."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self._registering: list[str] = []
        self._dists: dict[str, tuple[str, str]] = {}
        self.registry = Registry(current_plugin=self._current_plugin_name)
        # Fire the historic hook first: every plugin registered from now on is called on
        # registration, while _registering names it.
        self.hook.modulm_register_components.call_historic(kwargs={"registry": self.registry})

    def _current_plugin_name(self) -> str:
        return self._registering[-1] if self._registering else "<python>"

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        name = name or self.get_canonical_name(plugin)
        if self.is_blocked(name):
            return None
        self._registering.append(name)
        try:
            registered = super().register(plugin, name)
            if registered is not None:
                self.check_pending()  # a misspelt hook name fails here, naming the plugin
            return registered
        except pluggy.PluginValidationError as exc:
            self._unregister_quietly(plugin, name)
            raise PluginError(f"plugin {name!r}: {exc}") from exc
        except ModulmError:
            self._unregister_quietly(plugin, name)
            raise
        finally:
            self._registering.pop()

    def _unregister_quietly(self, plugin: Any, name: str) -> None:
        if self.has_plugin(name):
            super().unregister(plugin, name)
        self.registry.remove_plugin(name)

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        name = name or self.get_name(plugin)
        result = super().unregister(plugin, name)
        if name:
            self.registry.remove_plugin(name)
        return result

    def dist_of(self, plugin_name: str) -> tuple[str, str] | None:
        """(distribution name, version) for a plugin loaded from an entry point."""
        return self._dists.get(plugin_name)


@dataclass(frozen=True)
class PluginOptions:
    """What to load: ``-p`` arguments (``NAME`` or ``no:NAME``) and whether to autoload."""

    plugins: tuple[str, ...] = ()
    autoload: bool = True

    @classmethod
    def from_env(cls, args: Sequence[str] = (), env: dict[str, str] | None = None) -> "PluginOptions":
        env = os.environ if env is None else env
        extra = tuple(p.strip() for p in env.get(ENV_PLUGINS, "").split(",") if p.strip())
        return cls(plugins=tuple(args) + extra, autoload=not env.get(ENV_NO_AUTOLOAD))


def load(plugins: Iterable[str] = (), *, autoload: bool | None = None, env: dict[str, str] | None = None) -> PluginManager:
    """Build a plugin manager with its registry filled.

    ``plugins`` are ``-p`` arguments; ``autoload`` overrides ``MODULM_DISABLE_PLUGIN_AUTOLOAD``.
    """
    options = PluginOptions.from_env(tuple(plugins), env)
    if autoload is not None:
        options = PluginOptions(options.plugins, autoload)
    pm = PluginManager()
    blocked = [p[3:] for p in options.plugins if p.startswith("no:")]
    wanted = [p for p in options.plugins if not p.startswith("no:")]
    for name in blocked:
        pm.set_blocked(name)
    if options.autoload:
        _load_entry_points(pm, blocked)
    for module_name in wanted:
        if pm.has_plugin(module_name) or pm.is_blocked(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise PluginError(f"-p {module_name}: cannot import plugin module: {exc}") from exc
        pm.register(module, module_name)
    return pm


def _load_entry_points(pm: PluginManager, blocked: Sequence[str]) -> None:
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or pm.get_plugin(ep.name) is not None:
                continue
            if pm.is_blocked(ep.name) or ep.module in blocked:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} from {dist.metadata['name']} {dist.version} failed to load: {exc}"
                ) from exc
            pm._dists[ep.name] = (dist.metadata["name"], dist.version)
            pm.register(plugin, name=ep.name)


def builtins_missing_message() -> str:
    return (
        "no components are registered: modulm's built-in plugins were not found. "
        "Install modulm as a package (pip install -e . from the repository) so its entry points "
        f"exist, and check that {ENV_NO_AUTOLOAD} is not set."
    )
