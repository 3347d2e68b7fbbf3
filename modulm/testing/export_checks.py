"""Conformance check for ``exporter`` components (contract: :class:`modulm.kinds.Exporter`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from modulm.kinds import INTERFACES
from modulm.testing._build import component_builder, describe, registry_or_default


def check_exporter(component: str | Callable[..., Any], config: Mapping[str, Any] | None = None, *,
                   model_config: Mapping[str, Any] | None = None, vocab_size: int = 32, registry: Any = None) -> None:
    """Check the ``exporter`` contract: the interface, ``models`` a non-empty sequence of names, and
    ``problems`` a list of strings for the default table of each of those models in ``registry``.

    With ``model_config`` (recipe parameters of a model in ``models``, e.g. a tiny size), that model
    is also built with random weights and exported into a temporary directory: every name
    ``export`` returns must be a non-empty file there, and nothing else may be written.
    """
    from modulm.assemble import builder

    label = describe("exporter", component)
    registry = registry_or_default(registry)
    exporter = component_builder("exporter", component, config, registry)()
    assert isinstance(exporter, INTERFACES["exporter"]), f"{label}: does not match the exporter interface"
    models = exporter.models
    assert isinstance(models, (tuple, list)) and models and all(isinstance(m, str) and m for m in models), (
        f"{label}: models is {models!r}, not a non-empty sequence of model component names")
    for model in (m for m in models if ("model", m) in registry):
        problems = exporter.problems(builder(registry, "model", model).to_table())
        assert isinstance(problems, list) and all(isinstance(p, str) for p in problems), (
            f"{label}: problems(default {model!r} table) gave {problems!r}, not a list of strings")
    if model_config is None:
        return
    _check_export(exporter, label, registry, dict(model_config), vocab_size)


def _check_export(exporter: Any, label: str, registry: Any, model_config: dict, vocab_size: int) -> None:
    from modulm.assemble import builder
    from modulm.export import ExportSource

    model_config.setdefault("component", exporter.models[0])
    bound = builder(registry, "model", model_config, path="model_config")
    table = bound.to_table()
    assert table["component"] in exporter.models, f"{label}: model_config builds {table['component']!r}, not one of {exporter.models}"
    problems = exporter.problems(table)
    assert problems == [], f"{label}: refuses the model_config table: {problems}"
    weights = bound(vocab_size=vocab_size).state_dict()
    with tempfile.TemporaryDirectory(prefix="modulm-check-exporter-") as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        source = ExportSource(Path(tmp) / "checkpoint.pt", weights, {"model": table}, vocab_size, None)
        written = exporter.export(source, out)
        assert isinstance(written, (list, tuple)) and written, f"{label}: export returned {written!r}, not the file names"
        for name in written:
            assert (out / name).is_file() and (out / name).stat().st_size > 0, f"{label}: export listed {name!r} but wrote no such file"
        extra = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and str(p.relative_to(out)) not in written)
        assert not extra, f"{label}: export wrote files it did not return: {extra}"
