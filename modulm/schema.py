"""What a factory accepts, read from its signature: recipe parameters, injected names, nested kinds."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from modulm.constraints import Rule, constraints_of, describe, rules_of
from modulm.kinds import NestedKind

REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One recipe parameter of a factory."""

    name: str
    default: Any = REQUIRED  # REQUIRED when the recipe must set it
    types: tuple[type, ...] | None = None  # accepted simple types; None = not checked
    nested: NestedKind | None = None  # set when the value is a nested component
    settings: type | None = None  # set when the value is a settings table (a dataclass)
    choices: tuple | None = None  # the allowed values of a Literal annotation
    open_types: tuple[type, ...] = ()  # types the union's other arms accept besides the choices (int | Literal["auto"])
    doc: str = ""
    constraints: tuple = ()  # annotated-types markers (Ge(1), Interval(gt=0, le=1), ...)
    items: tuple[type, ...] | None = None  # accepted simple types of an array's elements; None = not checked

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_name(self) -> str:
        if self.settings is not None:
            return "table"
        if self.nested is not None:
            return f"{self.nested.kind}[]" if self.nested.many else self.nested.kind
        if not self.types:
            return "any"
        shown = [t for t in self.types if not (t is int and float in self.types)]  # float accepts int
        return " | ".join("None" if t is type(None) else t.__name__ for t in shown)

    def range_text(self) -> str:
        """The declared range as people write it (``">= 1"``, ``"in (0, 1]"``), or ``""``."""
        return describe(self.constraints)


@dataclass(frozen=True)
class Schema:
    """Recipe parameters (in order) and injected keyword-only names of one factory."""

    params: tuple[Param, ...]
    injected: tuple[str, ...]
    accepts_any: bool = False  # **kwargs in the signature: unknown keys cannot be checked
    rules: tuple[Rule, ...] = ()  # cross-field rules (modulm.constraints.checks), run after the parameters

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]


_SIMPLE = (bool, int, float, str, list, dict, type(None))


def _simple_types(annotation: Any) -> tuple[type, ...] | None:
    """Map an annotation to the TOML-level types it accepts, or None when it cannot be checked."""
    if annotation is REQUIRED or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _simple_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[type] = []
        for arg in typing.get_args(annotation):
            sub = _simple_types(arg)
            if sub is None:
                return None
            out.extend(sub)
        return tuple(dict.fromkeys(out))
    if origin is typing.Literal:
        return tuple(dict.fromkeys(type(a) for a in typing.get_args(annotation)))
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return (list,)
    if origin is dict or annotation is dict:
        return (dict,)
    if annotation is float:
        return (float, int)
    if annotation in _SIMPLE:
        return (annotation,)
    return None


def _item_types(annotation: Any) -> tuple[type, ...] | None:
    """The simple types a ``list[X]`` annotation (possibly in a union or Annotated) allows its items."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _item_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _item_types(arg)
            if found is not None:
                return found
        return None
    if origin in (list, typing.Sequence) and len(typing.get_args(annotation)) == 1:
        return _simple_types(typing.get_args(annotation)[0])
    return None


def _nested_marker(annotation: Any) -> NestedKind | None:
    if typing.get_origin(annotation) is typing.Annotated:
        for extra in typing.get_args(annotation)[1:]:
            if isinstance(extra, NestedKind):
                return extra
    return None


def literal_choices(annotation: Any) -> tuple | None:
    """The allowed values of a ``Literal[...]`` annotation (possibly inside Optional), else None."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            choices = literal_choices(arg)
            if choices is not None:
                return choices + ((None,) if type(None) in typing.get_args(annotation) else ())
    return None


def _open_types(annotation: Any) -> tuple[type, ...]:
    """In a union holding a ``Literal``, the simple types its non-Literal, non-None arms accept."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType) or literal_choices(annotation) is None:
        return ()
    out: list[type] = []
    for arg in typing.get_args(annotation):
        if arg is type(None) or typing.get_origin(arg) is typing.Literal:
            continue
        out.extend(_simple_types(arg) or ())
    return tuple(dict.fromkeys(out))


def _hints(factory: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(_annotated(factory), include_extras=True)
    except Exception:  # unresolvable forward references: fall back to unchecked types
        return {}


def _annotated(factory: Callable) -> Callable:
    return factory.__init__ if inspect.isclass(factory) and not dataclasses.is_dataclass(factory) else factory


def hint_error(factory: Callable) -> str | None:
    """Why ``factory``'s annotations cannot be resolved (then no type or range is checked), or None."""
    try:
        typing.get_type_hints(_annotated(factory), include_extras=True)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def schema_of(factory: Callable) -> Schema:
    """Read the schema of ``factory`` (a class, dataclass or function)."""
    signature = inspect.signature(factory)
    hints = _hints(factory)
    params: list[Param] = []
    injected: list[str] = []
    accepts_any = False
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            accepts_any = True
            continue
        if p.kind is p.VAR_POSITIONAL:
            continue
        if p.kind is p.KEYWORD_ONLY:
            injected.append(p.name)
            continue
        annotation = hints.get(p.name, p.annotation)
        params.append(
            Param(
                name=p.name,
                default=p.default,
                types=_simple_types(annotation),
                nested=_nested_marker(annotation),
                choices=literal_choices(annotation),
                open_types=_open_types(annotation),
                settings=annotation if dataclasses.is_dataclass(annotation) and isinstance(annotation, type) else None,
                doc=_param_doc(factory, p.name),
                constraints=constraints_of(annotation),
                items=_item_types(annotation),
            )
        )
    return Schema(tuple(params), tuple(injected), accepts_any, rules_of(factory))


def _param_doc(factory: Callable, name: str) -> str:
    """The text after ``name:`` in the factory docstring's lines, if any (short, one line)."""
    doc = inspect.getdoc(factory) or ""
    for line in doc.splitlines():
        stripped = line.strip().lstrip("-* ").strip("`")
        for prefix in (f"{name}:", f"{name}`:", f"``{name}``:"):
            if stripped.startswith(prefix):
                return stripped[len(prefix):].strip()
    return ""


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
