"""Hook specifications: the whole surface a plugin can implement.

modulm has one hook on purpose. A new kind of component needs no new hook: it is a new
``kind`` string passed to :meth:`modulm.registry.Registry.add`.
"""

from __future__ import annotations

import pluggy

PROJECT = "modulm"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(historic=True)
def modulm_register_components(registry):
    """Register this plugin's components into ``registry``.

    Called once per plugin with the :class:`~modulm.registry.Registry` being filled. The hook is
    *historic*: a plugin registered after the registry was created (in a test, a notebook) is
    called as soon as it is registered, so late plugins contribute exactly like early ones.

    Use one method per kind, or ``registry.add(kind, name, factory)`` for any kind::

        from modulm import hookimpl

        @hookimpl
        def modulm_register_components(registry):
            registry.ffn("acme-geglu", GeGLU)
            registry.optimizer("acme-lion", Lion)

    A factory is any callable (a class or a function). Its positional-or-keyword parameters are
    the component's *recipe parameters*: they are set from the component's TOML table, checked
    against the signature before anything is built, and listed by ``modulm plugins``. Its
    keyword-only parameters are *injected* at build time by whoever builds the component (the
    assembler, or the parent component for nested ones) and may not be set in a recipe; each
    kind's interface in :mod:`modulm.kinds` says which names it injects.

    Names must be unique across plugins: registering a name another plugin already gave is an
    error naming both plugins. Third-party plugins should prefix their names (``acme-…``).
    """
