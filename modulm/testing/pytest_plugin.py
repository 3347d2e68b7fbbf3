"""pytest plugin of :mod:`modulm.testing` (entry point ``pytest11``: loaded in every pytest run).

Fixtures for testing components and plugins:

* ``modulm_pm`` -- a fresh plugin manager with entry-point autoload off and only modulm's
  built-in plugins registered; ``modulm_pm.registry`` holds their components.
* ``register_plugin(obj, name=None)`` -- registers a plugin (a module or an object with hook
  implementations) on ``modulm_pm`` for this test only; returns the name it was registered under.
* ``run_recipe(recipe, steps=2)`` -- runs a recipe dict for ``steps`` iterations on the CPU in
  ``tmp_path`` with the ``modulm_pm`` registry and returns the :class:`~modulm.trainer.RunResult`.
  Missing tables get tiny defaults: random tokens (vocabulary 64), a one-layer model of width 16.

Nothing heavy is imported until a fixture is used.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Iterator

import pytest

def builtin_plugins() -> dict[str, str]:
    """modulm's built-in plugin modules by entry-point name, read from modulm's own entry points."""
    from importlib import metadata

    from modulm.plugins import ENTRY_POINT_GROUP

    return {ep.name: ep.value for ep in metadata.distribution("modulm").entry_points if ep.group == ENTRY_POINT_GROUP}


def __getattr__(name: str) -> Any:
    if name == "BUILTIN_PLUGINS":  # read when asked: the pytest plugin itself loads in every pytest run
        return builtin_plugins()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def builtin_plugin_manager() -> Any:
    """A plugin manager holding exactly the built-in plugins (no other entry points, no env variables)."""
    import importlib

    from modulm import plugins

    pm = plugins.load(autoload=False, env={})
    for name, module in builtin_plugins().items():
        pm.register(importlib.import_module(module), name)
    if not pm.get_plugins():
        raise RuntimeError(plugins.builtins_missing_message())
    return pm


@pytest.fixture
def modulm_pm() -> Any:
    """An isolated plugin manager: autoload off, only modulm's built-in plugins."""
    return builtin_plugin_manager()


@contextlib.contextmanager
def registered_plugins(pm: Any) -> Iterator[Callable[..., str]]:
    """Yields ``register(obj, name=None)``; every plugin registered through it is unregistered on exit."""
    registered: list[tuple[Any, str]] = []

    def register(plugin: Any, name: str | None = None) -> str:
        name = pm.register(plugin, name)
        if name is None:
            raise ValueError(f"plugin {plugin!r} was not registered (blocked)")
        registered.append((plugin, name))
        return name

    try:
        yield register
    finally:
        for plugin, name in reversed(registered):
            if pm.has_plugin(name):
                pm.unregister(plugin, name)


@pytest.fixture
def register_plugin(modulm_pm: Any) -> Iterator[Callable[..., str]]:
    """``register_plugin(obj, name=None)`` registers ``obj`` on ``modulm_pm`` until the test ends."""
    with registered_plugins(modulm_pm) as register:
        yield register


def tiny_recipe(tmp_path: Any, steps: int = 2) -> dict[str, Any]:
    """The defaults ``run_recipe`` fills in: random tokens, a tiny model, CPU, no sample, no loggers."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split, size in (("train", 2048), ("val", 512)):
        np.save(tmp_path / f"{split}.npy", rng.integers(0, 64, size, dtype=np.uint16))
    return {
        "data": {"component": "memmap", "train": str(tmp_path / "train.npy"), "val": str(tmp_path / "val.npy"),
                 "vocab_size": 64},
        "model": {"component": "transformer", "context_length": 8, "d_model": 16, "num_layers": 1,
                  "num_heads": 2, "d_ff": 32},
        "optimizer": {"component": "adamw", "lr": 1e-3},
        "schedule": {"component": "constant"},
        "training": {"batch_size": 2, "max_iterations": steps},
        "checkpointing": {"checkpoint_dir": str(tmp_path / "run"), "checkpoint_interval": 0, "resume": False},
        "logging": {"log_interval": 1, "eval_interval": 0, "eval_iters": 1, "final_eval": "sampled"},
        "system": {"device": "cpu", "compile": False, "seed": 0},
        "generation": {"max_tokens": 0},
        "loggers": [],
    }


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` deep-merged into it (tables merge; a table replacing a different
    component, and any other value, replaces)."""
    out = copy.deepcopy(base)
    for key, value in changes.items():
        old = out.get(key)
        same_component = not isinstance(value, dict) or "component" not in value or (
            isinstance(old, dict) and old.get("component") == value.get("component"))
        if isinstance(value, dict) and isinstance(old, dict) and same_component:
            out[key] = merged(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def run_recipe(modulm_pm: Any, tmp_path: Any):
    """``run_recipe(recipe, steps=2)``: a tiny in-process CPU run in ``tmp_path``; returns the RunResult."""

    def run(recipe: dict[str, Any] | None = None, steps: int = 2) -> Any:
        from modulm.assemble import assemble
        from modulm.trainer import Trainer

        full = merged(tiny_recipe(tmp_path, steps), recipe or {})
        full["training"]["max_iterations"] = steps
        return Trainer(assemble(full, modulm_pm.registry)).run()

    return run
