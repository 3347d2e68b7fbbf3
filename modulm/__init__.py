"""modulm: a modular framework for training Transformer language models from scratch."""

from modulm.errors import ModulmError, RecipeError
from modulm.hookspecs import hookimpl
from modulm.kinds import KINDS, nested

__version__ = "0.1.0"

__all__ = ["KINDS", "ModulmError", "RecipeError", "__version__", "hookimpl", "nested"]
