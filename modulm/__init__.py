"""modulm: a modular framework for training Transformer language models from scratch.

The public API (reference: docs/python-api.md), imported on first use so that ``import modulm``
(and the CLI's start-up) stays light:

* ``modulm.load_plugins(...)`` -> a plugin manager whose ``.registry`` holds every component;
* ``modulm.builder(registry, kind, spec)`` validates one component table and binds it;
  ``modulm.create(registry, kind, spec, **injected)`` builds it at once;
* ``modulm.checks(rule)``, ``modulm.problem``, ``modulm.warning``: cross-field rules of a component;
* ``modulm.assemble(recipe, registry=None, overrides=())`` builds a whole recipe (path or dict);
* ``modulm.Trainer(assembly).run()`` trains it;
* ``modulm.generate(model, tokenizer, prompt, ...)`` streams a completion;
* ``modulm.save_checkpoint`` / ``load_checkpoint`` / ``read_checkpoint``;
* the from-scratch primitives of :mod:`modulm.functional`: ``softmax``, ``silu``,
  ``scaled_dot_product_attention``, ``causal_mask``, ``cross_entropy``, ``linear_cross_entropy``,
  ``perplexity``, ``clip_gradients``.
"""

from modulm.assemble import assemble, builder, create  # binds the functions over the submodule's name
from modulm.constraints import checks, problem, warning
from modulm.errors import ModulmError, RecipeError
from modulm.hookspecs import hookimpl
from modulm.kinds import KINDS, nested
from modulm.lazy import lazy_attributes

__version__ = "0.1.0"

_LAZY = {
    "load_plugins": "modulm.plugins:load",
    "Trainer": "modulm.trainer",
    "generate": "modulm.sampling",
    "save_checkpoint": "modulm.checkpoint",
    "load_checkpoint": "modulm.checkpoint",
    "read_checkpoint": "modulm.checkpoint",
    **{name: "modulm.functional" for name in ("softmax", "silu", "scaled_dot_product_attention", "causal_mask",
                                              "cross_entropy", "linear_cross_entropy", "perplexity",
                                              "clip_gradients")},
}

__all__ = ["KINDS", "ModulmError", "RecipeError", "__version__", "assemble", "builder", "checks", "create",
           "hookimpl", "nested", "problem", "warning", *_LAZY]

__getattr__ = lazy_attributes(__name__, _LAZY)
