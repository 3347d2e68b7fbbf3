"""``modulm export``'s dispatch: read a run's checkpoint, pick the exporter for its model, run it.

The formats themselves are components of kind ``exporter`` (see :class:`modulm.kinds.Exporter`),
registered by the plugin that knows the model's layout: the transformer plugin gives ``hf-llama``
and ``safetensors``. The core knows no format and no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from modulm.errors import ModulmError


@dataclass(frozen=True)
class ExportSource:
    """What an exporter reads: one run checkpoint's model.

    ``weights`` is the model's state dict (``torch.compile`` / DDP prefixes removed), ``recipe`` the
    resolved recipe stored in the checkpoint (``recipe["model"]`` is the model's table),
    ``tokenizer_dir`` the run's saved tokenizer directory (None when there is none).
    """

    checkpoint: Path
    weights: dict[str, Any]
    recipe: dict[str, Any]
    vocab_size: int
    tokenizer_dir: Path | None = None

    @property
    def model_table(self) -> dict[str, Any]:
        return self.recipe["model"]


def model_name(model_table: Any) -> str:
    """The component name of a resolved ``[model]`` table (or of a bare name)."""
    return str(model_table.get("component", "")) if isinstance(model_table, Mapping) else str(model_table)


def read_run_checkpoint(checkpoint: str | Path) -> tuple[dict, dict, int]:
    """``(model state dict, resolved recipe, vocab_size)`` from a checkpoint written by a run."""
    from modulm.checkpoint import read_checkpoint, run_model_spec

    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)  # the one checkpoint reader: one-line errors for every bad file
    recipe, vocab_size = run_model_spec(state, checkpoint)
    weights = {_strip_wrappers(k): v for k, v in state["model"].items()}
    return weights, recipe, vocab_size


def _strip_wrappers(key: str) -> str:
    for prefix in ("_orig_mod.", "module."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def formats_for(registry, model: str) -> list[str]:
    """The exporter names whose ``models`` include model component ``model``, by name."""
    return [c.name for c in registry.components("exporter") if model in c.factory().models]


def export(registry, checkpoint: str | Path, out_dir: str | Path, format: str | None = None,
           tokenizer_dir: str | Path | None = None) -> tuple[str, list[str]]:
    """Export a run's checkpoint with exporter ``format`` (default: the first format for its model).

    Returns ``(format, files written)``. ``tokenizer_dir`` defaults to ``tokenizer/`` beside the
    checkpoint when that exists; a directory named explicitly must exist. Every refusal is a
    :class:`ModulmError` raised before anything is written.
    """
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise ModulmError(f"{tokenizer_dir}: tokenizer directory not found")
    weights, recipe, vocab_size = read_run_checkpoint(checkpoint)
    model = model_name(recipe["model"])
    formats = formats_for(registry, model)
    listed = ", ".join(formats) or "none (no installed plugin exports it)"
    if format is None:
        if not formats:
            raise ModulmError(f"{checkpoint}: no exporter accepts model {model!r}; formats for it: {listed}")
        format = formats[0]
    if ("exporter", format) not in registry:
        raise ModulmError(f"unknown export format {format!r}; formats for model {model!r}: {listed}")
    exporter = registry.get("exporter", format).factory()
    if model not in exporter.models:
        raise ModulmError(f"{checkpoint}: format {format!r} does not accept model {model!r}; formats for it: {listed}")
    problems = exporter.problems(recipe["model"])
    if problems:
        raise ModulmError(f"{checkpoint}: cannot export to {format}: " + "; ".join(problems))
    checkpoint = Path(checkpoint)
    default_tokenizer = checkpoint.parent / "tokenizer"
    tokenizer = Path(tokenizer_dir) if tokenizer_dir is not None else (default_tokenizer if default_tokenizer.is_dir() else None)
    source = ExportSource(checkpoint, weights, recipe, vocab_size, tokenizer)
    return format, list(exporter.export(source, prepare_out_dir(out_dir)))


def prepare_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` created if missing; an error if it is a file or a run directory (an export
    there would mix its files with the run's, and may replace some)."""
    from modulm.rundir import holds_a_run

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModulmError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and holds_a_run(out_dir):
        raise ModulmError(f"{out_dir}: is a run directory; export into a directory of its own, e.g. {out_dir / 'export'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir
