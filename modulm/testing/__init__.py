"""Conformance checks and hypothesis strategies for components, for modulm and plugin authors.

Each ``check_<kind>(component, config=None, **sizes)`` takes a registry name or a factory plus its
recipe parameters, builds small CPU instances with the injected arguments of its kind and raises
``AssertionError`` naming the component and the rule it broke. The rules are the contracts in
:mod:`modulm.kinds`::

    from modulm.testing import check_ffn
    check_ffn(MyFFN, {"hidden_multiple": 32})      # or check_ffn("my-ffn", registry=...)

``check_declared_ranges(kind, component, config=None)`` checks, for any kind, that validation
refuses values outside the ranges a component declares and accepts its defaults.

:mod:`modulm.testing.strategies` holds hypothesis strategies (needs the ``testing`` extra) and
:mod:`modulm.testing.pytest_plugin` the fixtures ``modulm_pm``, ``register_plugin`` and
``run_recipe``. The checks are imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

from modulm.lazy import lazy_attributes

_CHECKS = {
    "check_ffn": "model_checks",
    "check_norm": "model_checks",
    "check_position": "model_checks",
    "check_attention": "model_checks",
    "check_model_block": "model_checks",
    "check_model": "model_checks",
    "check_optimizer": "optim_checks",
    "check_orthogonalising_optimizer": "optim_checks",
    "check_schedule": "optim_checks",
    "check_data_source": "data_checks",
    "check_logger": "misc_checks",
    "check_tokenizer": "misc_checks",
    "check_exporter": "export_checks",
    "check_declared_ranges": "schema_checks",
}

#: The check for each kind, by kind name (``CHECK_FOR_KIND["ffn"] == "check_ffn"``).
CHECK_FOR_KIND = {
    "model": "check_model", "block": "check_model_block", "attention": "check_attention", "ffn": "check_ffn",
    "norm": "check_norm", "position": "check_position", "optimizer": "check_optimizer",
    "schedule": "check_schedule", "data": "check_data_source", "logger": "check_logger",
    "tokenizer": "check_tokenizer", "exporter": "check_exporter",
}

__all__ = sorted(_CHECKS) + ["CHECK_FOR_KIND", "check_component"]


__getattr__ = lazy_attributes(__name__, {name: f"modulm.testing.{home}" for name, home in _CHECKS.items()})


def check_component(kind: str, component: Any, config: Any = None, **options: Any) -> None:
    """Run the check of ``kind`` on ``component``: ``check_component("ffn", "swiglu")``."""
    if kind not in CHECK_FOR_KIND:
        raise ValueError(f"no check for kind {kind!r}; kinds: {', '.join(CHECK_FOR_KIND)}")
    __getattr__(CHECK_FOR_KIND[kind])(component, config, **options)
