"""Names a package exports but imports only on first use (PEP 562 module ``__getattr__``).

``modulm`` and the built-in plugins use it so that importing them (which every ``modulm``
command does, to find its plugins) does not import torch::

    __getattr__ = lazy_attributes(__name__, {"TransformerLM": "modulm_transformer.model"})
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``homes[name]`` (a module path) and returns its ``name``.

    A home written ``"module:attribute"`` returns that attribute under a different name. The
    value is then stored in the package, so later look-ups (and tools that read the package's
    ``__dict__``, such as pdoc) see an ordinary attribute.
    """

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module_name, _, attribute = homes[name].partition(":")
        value = getattr(importlib.import_module(module_name), attribute or name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
