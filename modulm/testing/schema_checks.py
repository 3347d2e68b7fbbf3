"""The check that a component's declared ranges are what validation enforces.

:func:`check_declared_ranges` needs no hypothesis; :func:`outside_values` and :func:`edge_values`
are the deterministic values it tries (the property tests draw more with
:func:`modulm.testing.strategies.out_of_range`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import annotated_types as at

from modulm.constraints import unenforced, violation
from modulm.errors import RecipeError
from modulm.testing._build import component_builder, describe


def _numeric(param: Any) -> str | None:
    types = param.types or ()
    if float in types:
        return "float"
    if int in types:
        return "int"
    return None


def _step(value: float, kind: str, direction: float) -> float:
    """The nearest value past ``value`` in ``direction`` (+1 or -1) for an int or float parameter."""
    if kind == "int":
        return int(value) + int(direction)
    return math.nextafter(float(value), direction * math.inf)


def outside_values(param: Any) -> list[Any]:
    """Values just outside each declared bound of ``param`` (and NaN and infinity for a float), of its own type."""
    kind = _numeric(param)
    values: list[Any] = []
    for c in param.constraints:
        if kind is not None:
            if isinstance(c, at.Ge):
                values.append(_step(c.ge, kind, -1))
            elif isinstance(c, at.Gt):
                values.append(int(math.floor(c.gt)) if kind == "int" else float(c.gt))
            elif isinstance(c, at.Le):
                values.append(_step(c.le, kind, +1))
            elif isinstance(c, at.Lt):
                values.append(int(math.ceil(c.lt)) if kind == "int" else float(c.lt))
        if isinstance(c, at.MinLen) and c.min_length >= 1:
            values.append([] if param.types and list in param.types and str not in param.types else "")
    if kind == "float" and any(isinstance(c, (at.Ge, at.Gt, at.Le, at.Lt)) for c in param.constraints):
        values += [math.nan, math.inf]
    return values


def edge_values(param: Any) -> list[Any]:
    """Values on (or just inside) each declared bound: all of them inside the range."""
    kind = _numeric(param)
    values: list[Any] = []
    for c in param.constraints:
        if kind is None:
            continue
        if isinstance(c, at.Ge):
            values.append(int(math.ceil(c.ge)) if kind == "int" else float(c.ge))
        elif isinstance(c, at.Gt):
            values.append(int(math.floor(c.gt)) + 1 if kind == "int" else _step(c.gt, kind, +1))
        elif isinstance(c, at.Le):
            values.append(int(math.floor(c.le)) if kind == "int" else float(c.le))
        elif isinstance(c, at.Lt):
            values.append(int(math.ceil(c.lt)) - 1 if kind == "int" else _step(c.lt, kind, -1))
    return [v for v in values if violation(v, param.constraints) is None]


def _problems(kind: str, component: Any, table: Mapping[str, Any], registry: Any) -> list[str]:
    try:
        component_builder(kind, component, table, registry)
    except RecipeError as exc:
        return exc.problems
    return []


def check_declared_ranges(kind: str, component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                          registry: Any = None) -> None:
    """Check that validation enforces exactly the ranges ``component`` declares.

    * the annotations resolve (``typing.get_type_hints``: a name imported only for type checkers
      would silently turn every check off);
    * every marker on a parameter is one validation enforces (``Gt``, ``Ge``, ``Lt``, ``Le``,
      ``Interval``, ``MultipleOf``, ``MinLen``, ``MaxLen``, ``Len``);
    * every default lies inside its own range, and ``config`` (required values; defaults for the
      rest) validates, cross-field rules included;
    * for each bound, a value just outside it is refused with a line naming the parameter, and a
      value on it (or just inside) is not refused for its range.
    """
    from modulm.schema import hint_error, schema_of

    label = describe(kind, component)
    if isinstance(component, str):
        from modulm.testing._build import registry_or_default

        factory = registry_or_default(registry).get(kind, component).factory
    else:
        factory = component
    unresolved = hint_error(factory)
    assert unresolved is None, f"{label}: its annotations cannot be resolved, so no type or range is checked ({unresolved})"
    schema = schema_of(factory)
    base = {k: v for k, v in dict(config or {}).items() if k != "component"}
    for param in schema.params:
        loose = unenforced(param.constraints)
        assert not loose, f"{label}: {param.name} declares {loose}, which modulm validate does not enforce"
        if param.constraints and not param.required and param.default is not None and not isinstance(param.default, type):
            wrong = violation(param.default, param.constraints)
            assert wrong is None, f"{label}: the default {param.name} = {param.default!r} is outside its own range ({wrong})"
    refused = _problems(kind, component, base, registry)
    assert not refused, f"{label}: its defaults (with {base}) do not validate: {refused}"
    for param in schema.params:
        path = f"{kind}.{param.name}: "
        for value in outside_values(param):
            lines = _problems(kind, component, {**base, param.name: value}, registry)
            assert any(path in line and "out of range" in line for line in lines), (
                f"{label}: {param.name} = {value!r} lies outside its declared range ({param.range_text()}) "
                f"but validation did not refuse it: {lines or 'no problem reported'}")
        for value in edge_values(param):
            lines = _problems(kind, component, {**base, param.name: value}, registry)
            wrongly = [line for line in lines if path in line and "out of range" in line]
            assert not wrongly, f"{label}: {param.name} = {value!r} is inside {param.range_text()} but was refused: {wrongly}"
