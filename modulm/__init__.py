"""modulm: a modular framework for training Transformer language models from scratch.

The public API, loaded lazily so that ``import modulm`` (and the CLI's start-up) stays light:

* ``modulm.load_plugins(...)`` -> a plugin manager whose ``.registry`` holds every component;
* ``modulm.create(registry, kind, spec, **injected)`` builds one component;
* ``modulm.checks(rule)``, ``modulm.problem``, ``modulm.warning``: cross-field rules of a component;
* ``modulm.assemble(recipe, registry=None, overrides=())`` builds a whole recipe (path or dict);
* ``modulm.Trainer(assembly).run()`` trains it;
* ``modulm.generate(model, tokenizer, prompt, ...)`` streams a completion.
"""

from modulm.assemble import assemble, create  # binds the functions over the submodule's name
from modulm.constraints import checks, problem, warning
from modulm.errors import ModulmError, RecipeError
from modulm.hookspecs import hookimpl
from modulm.kinds import KINDS, nested

__version__ = "0.1.0"

_LAZY = {
    "load_plugins": ("modulm.plugins", "load"),
    "Trainer": ("modulm.trainer", "Trainer"),
    "generate": ("modulm.sampling", "generate"),
    "save_checkpoint": ("modulm.checkpoint", "save_checkpoint"),
    "load_checkpoint": ("modulm.checkpoint", "load_checkpoint"),
}

__all__ = ["KINDS", "ModulmError", "RecipeError", "__version__", "assemble", "checks", "create", "hookimpl", "nested",
           "problem", "warning", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'modulm' has no attribute {name!r}")
