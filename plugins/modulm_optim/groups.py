"""Parameter groups formed by name, shared by the optimizer factories."""

from __future__ import annotations

import warnings
from fnmatch import fnmatchcase
from typing import Any, Iterable, Sequence

from torch import Tensor

from modulm.errors import ModulmError


def named(params: Iterable[Any]) -> list[tuple[str, Tensor]]:
    """``(name, parameter)`` pairs from pairs or bare tensors (named by position), each tensor once."""
    pairs: list[tuple[str, Tensor]] = []
    seen: set[int] = set()
    for index, item in enumerate(params):
        name, tensor = item if isinstance(item, tuple) else (str(index), item)
        if id(tensor) not in seen:  # tied weights appear once
            seen.add(id(tensor))
            pairs.append((name, tensor))
    return pairs


def decay_groups(component: str, params: Iterable[Any], no_decay: Sequence[str]) -> list[dict[str, Any]]:
    """Split ``params`` into a group with the optimizer's weight decay and one without.

    A parameter goes to the no-decay group (``weight_decay = 0``) when its name matches one of the
    ``no_decay`` glob patterns (``fnmatch``, case-sensitive: ``"*norm*"``, ``"token_embeddings.*"``).
    Empty groups are left out. A pattern that matches nothing is warned about: it is usually a typo,
    but a shared recipe may name parts an ablation removed.
    """
    if isinstance(no_decay, str) or not all(isinstance(p, str) for p in no_decay):
        raise ModulmError(f"{component}: no_decay must be a list of glob patterns (strings), got {no_decay!r}")
    pairs = named(params)
    decay = [t for name, t in pairs if not any(fnmatchcase(name, pat) for pat in no_decay)]
    exempt = [t for name, t in pairs if any(fnmatchcase(name, pat) for pat in no_decay)]
    for pattern in no_decay:
        if not any(fnmatchcase(name, pattern) for name, _ in pairs):
            warnings.warn(f"{component}: no_decay pattern {pattern!r} matches no parameter", stacklevel=3)
    groups: list[dict[str, Any]] = []
    if decay:
        groups.append({"params": decay})
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0})
    if not groups:
        raise ModulmError(f"{component}: the model has no parameters to optimize")
    return groups
