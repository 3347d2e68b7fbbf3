"""A component with its recipe parameters bound, waiting for its injected arguments.

The lowest layer of recipe handling: :mod:`modulm.validate` produces these, :mod:`modulm.assemble`
calls them. Imports flow one way: builders <- validate <- recipe <- assemble.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modulm.registry import Component


@dataclass
class ComponentBuilder:
    """A component with its recipe parameters bound; call it with the injected arguments."""

    component: Component
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.component.name

    @property
    def kind(self) -> str:
        return self.component.kind

    def __call__(self, **injected: Any) -> Any:
        schema = self.component.schema
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


def resolved(value: Any) -> Any:
    if isinstance(value, ComponentBuilder):
        return value.to_table()
    if isinstance(value, list):
        return [resolved(v) for v in value]
    return value
