"""Hook specifications: the whole surface a plugin can implement.

modulm has two hooks on purpose: one for components and one for command-line subcommands. A new
kind of component needs no new hook: it is a new ``kind`` string passed to
:meth:`modulm.registry.Registry.add`.
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


@hookspec(historic=True)
def modulm_add_commands(subparsers, registry):
    """Add this plugin's subcommands to the ``modulm`` command line.

    ``subparsers`` is the :mod:`argparse` sub-parser action of ``modulm`` (call
    ``subparsers.add_parser(NAME, help=...)``); ``registry`` is the invocation's
    :class:`~modulm.registry.Registry`, already filled, for commands that need a component (look
    the tokenizer up by kind, never import another plugin). Set ``func`` on the new parser: it is
    called with the parsed :class:`argparse.Namespace` and returns the exit code. Raise
    :class:`~modulm.errors.ModulmError` for a user mistake: it prints as one ``modulm: error:``
    line and exits 2. A plugin blocked with ``-p no:NAME`` adds no commands::

        from modulm import hookimpl

        @hookimpl
        def modulm_add_commands(subparsers, registry):
            p = subparsers.add_parser("acme-count", help="count the tokens of a file")
            p.add_argument("file")
            p.set_defaults(func=lambda args: count(args.file, registry))

    Every ``modulm`` invocation builds its parser, so keep this hook cheap: import what the
    command needs inside ``func``, not at the top of the plugin module (``modulm data prepare``
    starts without importing torch). Command names must not collide with another plugin's or the
    core's; third-party plugins should prefix theirs (``acme-…``). *Historic* like the component
    hook: a plugin registered after the parser was built still adds its commands.
    """
