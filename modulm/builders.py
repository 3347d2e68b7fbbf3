"""A component with its recipe parameters bound, waiting for its injected arguments.

The lowest layer of recipe handling: :mod:`modulm.validate` produces these, :mod:`modulm.assemble`
calls them. Imports flow one way: builders <- validate <- recipe <- assemble.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from modulm.registry import Component


@dataclass
class ComponentBuilder:
    """A component with its recipe parameters bound; call it with the injected arguments.

    ``bound`` holds injected values fixed in advance (:meth:`bind`): whoever calls the builder
    later (a block, an attention, a third-party model) need not know them, so a value the model
    injects, such as the position part's ``theta`` (``rope_theta``), reaches the part however
    deeply it is built. A keyword given at call time replaces a bound one, as with
    :func:`functools.partial`.
    """

    component: Component
    params: dict[str, Any] = field(default_factory=dict)
    bound: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def kind(self) -> str:
        return self.component.kind

    def bind(self, **injected: Any) -> "ComponentBuilder":
        """A copy with these injected values bound (names the factory does not inject are an error)."""
        from modulm.errors import RecipeError

        schema = self.component.schema
        unknown = sorted(set(injected) - set(schema.injected)) if not schema.accepts_any else []
        if unknown:
            raise RecipeError([f"{self.kind} {self.name!r} from plugin {self.component.plugin!r}: cannot bind "
                               f"{', '.join(unknown)}; its injected arguments are: {', '.join(schema.injected) or 'none'}"])
        return ComponentBuilder(self.component, self.params, {**self.bound, **injected})

    def __call__(self, **injected: Any) -> Any:
        schema = self.component.schema
        injected = {**self.bound, **injected}
        if not schema.accepts_any:
            injected = {k: v for k, v in injected.items() if k in schema.injected}
        return self.component.factory(**self.params, **injected)

    def to_table(self) -> dict[str, Any]:
        """The resolved recipe table: ``component`` plus every parameter (nested ones as tables)."""
        table: dict[str, Any] = {"component": self.name}
        for key, value in self.params.items():
            table[key] = resolved(value)
        return table

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name!r} from {self.component.plugin!r} {self.params}>"


def bind(part: Callable[..., Any], **injected: Any) -> Callable[..., Any]:
    """``part`` with injected values bound: :meth:`ComponentBuilder.bind` for a builder, else a partial.

    What a model uses to hand its own values (``theta=rope_theta``) to a part it passes down.
    """
    if isinstance(part, ComponentBuilder):
        return part.bind(**injected)
    return functools.partial(part, **injected)


def resolved(value: Any) -> Any:
    if isinstance(value, ComponentBuilder):
        return value.to_table()
    if isinstance(value, list):
        return [resolved(v) for v in value]
    return value
