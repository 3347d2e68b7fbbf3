"""Declared ranges of recipe parameters, and cross-field rules, checked by ``modulm validate``.

Ranges are ``annotated-types`` markers inside ``typing.Annotated``, written where a parameter is
declared (a factory's signature or a settings dataclass field)::

    from typing import Annotated
    from annotated_types import Ge, Gt, Interval

    def my_ffn(hidden_multiple: Annotated[int, Ge(1)] = 64, dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.0,
               *, d_model: int, d_ff: int | None = None): ...

Enforced markers: ``Gt``, ``Ge``, ``Lt``, ``Le`` (and ``Interval``, which groups them; a float
with any of them must also be finite), ``MultipleOf``, ``MinLen``, ``MaxLen`` (and ``Len``). Other markers are kept in the schema but not
enforced; ``modulm.testing.check_declared_ranges`` flags them.

Rules that need several values are functions attached with :func:`checks`: each receives the
table's bound values (defaults filled in; a nested component as a builder with ``.name`` and
``.params``) and returns messages: a plain string is an error about the whole table, and
:func:`problem` / :func:`warning` name the key they are about. They run only once every
parameter of the table (and its nested tables) is valid.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import annotated_types as at

ENFORCED = (at.Gt, at.Ge, at.Lt, at.Le, at.MultipleOf, at.MinLen, at.MaxLen)

Rule = Callable[[Mapping[str, Any]], "Iterable[str | Finding] | None"]


def constraints_of(annotation: Any) -> tuple[at.BaseMetadata, ...]:
    """Every annotated-types marker in ``annotation`` (inside ``Optional``/unions too), groups expanded."""
    found: list[at.BaseMetadata] = []
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        for extra in annotation.__metadata__:
            if isinstance(extra, at.GroupedMetadata):
                found.extend(m for m in extra if m is not None)
            elif isinstance(extra, at.BaseMetadata):
                found.append(extra)
        found.extend(constraints_of(typing.get_args(annotation)[0]))
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found.extend(constraints_of(arg))
    unique: list[at.BaseMetadata] = []
    for marker in found:  # markers need not be hashable
        if not any(marker == seen for seen in unique):
            unique.append(marker)
    return tuple(unique)


def unenforced(constraints: Iterable[at.BaseMetadata]) -> list[at.BaseMetadata]:
    """The markers that validation does not check."""
    return [c for c in constraints if not isinstance(c, ENFORCED)]


def _bound_text(c: at.BaseMetadata) -> str:
    if isinstance(c, at.Gt):
        return f"> {c.gt!r}"
    if isinstance(c, at.Ge):
        return f">= {c.ge!r}"
    if isinstance(c, at.Lt):
        return f"< {c.lt!r}"
    if isinstance(c, at.Le):
        return f"<= {c.le!r}"
    if isinstance(c, at.MultipleOf):
        return f"a multiple of {c.multiple_of!r}"
    if isinstance(c, at.MinLen):
        return "non-empty" if c.min_length == 1 else f"of length >= {c.min_length}"
    if isinstance(c, at.MaxLen):
        return f"of length <= {c.max_length}"
    return repr(c)


def describe(constraints: Iterable[at.BaseMetadata]) -> str:
    """``">= 1"``, ``"in (0, 1]"``, ``">= 0 and a multiple of 8"``: the rules as people write them."""
    items = list(constraints)
    lower = [c for c in items if isinstance(c, (at.Gt, at.Ge))]
    upper = [c for c in items if isinstance(c, (at.Lt, at.Le))]
    parts: list[str] = []
    if len(lower) == 1 and len(upper) == 1:
        lo, hi = lower[0], upper[0]
        left = f"({lo.gt!r}" if isinstance(lo, at.Gt) else f"[{lo.ge!r}"
        right = f"{hi.lt!r})" if isinstance(hi, at.Lt) else f"{hi.le!r}]"
        parts.append(f"in {left}, {right}")
        items = [c for c in items if c is not lo and c is not hi]
    parts.extend(_bound_text(c) for c in items)
    return " and ".join(parts)


def _holds(value: Any, c: at.BaseMetadata) -> bool:
    if isinstance(c, (at.MinLen, at.MaxLen)):
        if not hasattr(value, "__len__"):
            return True  # a type problem, reported by the type check
        return len(value) >= c.min_length if isinstance(c, at.MinLen) else len(value) <= c.max_length
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    if isinstance(value, float) and math.isnan(value):
        return False
    if isinstance(c, at.Gt):
        return value > c.gt
    if isinstance(c, at.Ge):
        return value >= c.ge
    if isinstance(c, at.Lt):
        return value < c.lt
    if isinstance(c, at.Le):
        return value <= c.le
    if isinstance(c, at.MultipleOf):
        return value % c.multiple_of == 0
    return True


_BOUNDS = (at.Gt, at.Ge, at.Lt, at.Le)


def violation(value: Any, constraints: Iterable[at.BaseMetadata]) -> str | None:
    """None when ``value`` keeps every enforced rule, else what it must be (``"must be >= 1"``).

    A float with a declared bound must also be finite: no range means infinity or NaN.
    """
    items = [c for c in constraints if isinstance(c, ENFORCED)]
    infinite = isinstance(value, float) and math.isinf(value) and any(isinstance(c, _BOUNDS) for c in items)
    if not infinite and all(_holds(value, c) for c in items):
        return None
    return f"must be {'finite and ' if infinite else ''}{describe(items)}"


# -- cross-field rules --------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One message of a cross-field rule: about ``key`` of the table (None: the table), error or warning."""

    message: str
    key: str | None = None
    is_warning: bool = False


def problem(message: str, key: str | None = None) -> Finding:
    """An error found by a cross-field rule; ``key`` names the parameter it is reported at."""
    return Finding(message, key, False)


def warning(message: str, key: str | None = None) -> Finding:
    """A warning: printed as ``modulm: warning: ...``; the recipe stays valid."""
    return Finding(message, key, True)


_ATTRIBUTE = "__modulm_checks__"


def checks(*rules: Rule) -> Callable:
    """Decorator attaching cross-field ``rules`` to a factory (function, class or settings dataclass)."""
    for rule in rules:
        if not callable(rule):
            raise TypeError(f"checks(): {rule!r} is not callable")

    def attach(factory):
        setattr(factory, _ATTRIBUTE, rules_of(factory) + tuple(rules))
        return factory

    return attach


def rules_of(factory: Any) -> tuple[Rule, ...]:
    """The rules attached to ``factory`` itself (a subclass does not inherit its base's)."""
    own = vars(factory) if isinstance(factory, type) else getattr(factory, "__dict__", {})
    return tuple(own.get(_ATTRIBUTE, ()))


def run_rules(rules: Iterable[Rule], params: Mapping[str, Any]) -> list[Finding]:
    """Every finding of ``rules`` on ``params``, plain strings turned into table-level errors."""
    found: list[Finding] = []
    for rule in rules:
        for item in rule(params) or ():
            found.append(item if isinstance(item, Finding) else Finding(str(item)))
    return found
