"""From validated recipe tables to live components. The CLI, Python users and tests share it.

* :func:`builder` turns one component table (or a bare name) into a :class:`ComponentBuilder`:
  its recipe parameters validated and defaults filled, nested components turned into builders,
  waiting only for the injected keyword-only arguments.
* :func:`create` does that and builds it at once.
* :func:`assemble` builds a whole recipe (see :mod:`modulm.recipe`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Mapping

from modulm.builders import ComponentBuilder, bind, resolved
from modulm.errors import RecipeError
from modulm.fileio import cache_dir
from modulm.recipe import Recipe, bind_component, load_recipe, recipe_from_dict, validate
from modulm.registry import Registry
from modulm.validate import settings_table

__all__ = ["Assembly", "ComponentBuilder", "assemble", "bind", "builder", "cache_dir", "create", "resolved_recipe"]


def builder(registry: Registry, kind: str, spec: str | Mapping[str, Any], *, source: str = "<python>", path: str = "",
            **injected: Any) -> ComponentBuilder:
    """Validate ``spec`` (a name or a table with ``component``) against the registry and bind it.

    ``injected`` are injected values bound now (see :meth:`ComponentBuilder.bind`), e.g.
    ``builder(reg, "position", "rope", theta=500000.0)``: the attention that builds it later passes
    only ``d_k`` and ``context_length``. Raises :class:`RecipeError` listing every problem found
    at any depth.
    """
    problems: list[str] = []
    bound = bind_component(registry, kind, spec, source=source, path=path or kind, problems=problems)
    if problems:
        raise RecipeError(problems)
    assert bound is not None
    return bound.bind(**injected) if injected else bound


def create(registry: Registry, kind: str, spec: str | Mapping[str, Any], **injected: Any) -> Any:
    """Build one component: ``create(reg, "ffn", {"component": "swiglu"}, d_model=64, d_ff=None)``."""
    return builder(registry, kind, spec)(**injected)


def resolved_recipe(bound: Mapping[str, Any]) -> dict[str, Any]:
    """The bound top level of a recipe as plain data: every default filled in, ready for TOML."""
    import dataclasses

    out: dict[str, Any] = {}
    for key, value in bound.items():
        if dataclasses.is_dataclass(value) and not isinstance(value, ComponentBuilder):
            out[key] = settings_table(value)
        elif value is not None:
            out[key] = resolved(value)
    return out


@dataclass
class Assembly:
    """A validated recipe with its live components, ready for :class:`modulm.trainer.Trainer`.

    ``settings`` holds the settings tables (``training``, ``checkpointing``, ``logging``, ``system``,
    ``distributed``, ``generation``) as dataclass instances; loggers are built by the trainer once the
    run directory exists (``logger_builders``).
    """

    recipe: Any
    registry: Registry
    resolved: dict[str, Any]
    data: Any
    model: Any
    optimizer: Any
    schedule: Any
    logger_builders: list[ComponentBuilder]
    settings: dict[str, Any]

    def __getattr__(self, name: str) -> Any:  # assembly.training, assembly.system, ...
        settings = self.__dict__.get("settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(name)


def assemble(recipe: Any, registry: Registry | None = None, *, overrides: tuple[str, ...] | list[str] = (),
             plugins: tuple[str, ...] | list[str] = ()) -> Assembly:
    """Validate a recipe (a path, a dict or a :class:`~modulm.recipe.Recipe`) and build its parts.

    Order: the process group when launched by torchrun (:mod:`modulm.distributed`), seed, data
    source (``seed``, ``cache_dir``; rank 0 first), model (``vocab_size`` from the data; sharded
    here with ``distributed.strategy = "fsdp"``, see :mod:`modulm.strategy`), optimizer (the model's named parameters), schedule (the optimizer's peak lr, the run length).
    """
    from modulm import distributed
    from modulm import plugins as plugin_loading
    from modulm.runtime import seed_everything
    from modulm.strategy import strategy

    if registry is None:
        registry = plugin_loading.load(plugins).registry
    if isinstance(recipe, Recipe):
        if overrides:
            raise ValueError("pass overrides when loading the Recipe, not to assemble()")
    elif isinstance(recipe, Mapping):
        recipe = recipe_from_dict(recipe, overrides)
    else:
        recipe = load_recipe(recipe, overrides)
    bound = validate(recipe, registry)
    if os.environ.get("RANK", "0") == "0":  # once per job, not once per process
        for line in recipe.warnings:
            print(f"modulm: warning: {line}", file=sys.stderr)
    settings = {key: bound[key] for key in ("training", "checkpointing", "logging", "system", "distributed", "generation")}
    # Under torchrun: join the process group now, so that rank 0 alone builds any data cache first.
    ranks = distributed.setup(settings["distributed"], settings["system"].device)
    seed_everything(settings["system"].seed)
    with distributed.main_first(ranks):
        data = bound["data"](seed=settings["system"].seed, cache_dir=cache_dir())
    model = bound["model"](vocab_size=data.vocab_size)
    # fsdp shards the model in place here: its optimizer must be built on the sharded parameters
    model = strategy(settings["distributed"], settings["system"]).prepare(model)
    optimizer = bound["optimizer"](params=list(model.named_parameters()))
    base_lr = optimizer.defaults.get("lr", optimizer.param_groups[0]["lr"])
    schedule = bound["schedule"](base_lr=base_lr, max_iterations=settings["training"].max_iterations)
    return Assembly(recipe, registry, resolved_recipe(bound), data, model, optimizer, schedule,
                    list(bound["loggers"]), settings)
